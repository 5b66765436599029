//! The 2-bit and 1-bit gradient codecs (R38-R41), and the fused quantise-decode-sum of a
//! compressed push (R42).
//!
//! Per element, 2-bit does `r += g`, then `r >= t` sends `+t` (`r -= t`), else `r <= -t` sends
//! `-t` (`r += t`), else sends 0; 1-bit does `r += g`, then `r > t` sends `+1` (`r -= 1`), else
//! `-1` (`r += 1`). The kernels compute both candidate residuals and select one, so the loops
//! have no branches and vectorise; the selected value is the very `f32` operation the
//! specification performs.

use kvstore_spec::codec::{Compression, CompressionType};
use rayon::prelude::*;

use crate::par::{self, BLOCK_ELEMENTS};
use crate::{check_len, quiet, KernelError};

/// A codec and its threshold; build it from a validated
/// [`Compression`] with `Codec::from`.
///
/// The kernels do not validate the threshold; for one that [`Compression::new`] would refuse
/// (not finite, or not positive for 2-bit) they still compute what the specification's
/// functions compute on such a value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Codec {
    /// 2 bits per element, 16 elements per word; sends `+t`, `-t` or 0 (R38, R39).
    TwoBit {
        /// The decision threshold, also the magnitude sent.
        threshold: f32,
    },
    /// 1 bit per element, 32 elements per word; sends `+1` or `-1` (R40, R41).
    OneBit {
        /// The decision threshold.
        threshold: f32,
    },
}

impl From<Compression> for Codec {
    fn from(c: Compression) -> Self {
        match c.kind {
            CompressionType::TwoBit => Codec::TwoBit {
                threshold: c.threshold,
            },
            CompressionType::OneBit => Codec::OneBit {
                threshold: c.threshold,
            },
        }
    }
}

impl Codec {
    /// Elements per packed `u32` word: 16 for 2-bit, 32 for 1-bit.
    pub fn per_word(self) -> usize {
        match self {
            Codec::TwoBit { .. } => TWO_BIT_PER_WORD,
            Codec::OneBit { .. } => ONE_BIT_PER_WORD,
        }
    }

    /// Number of `u32` words of a compressed buffer for `n` elements, as
    /// [`Compression::compressed_words`].
    pub fn compressed_words(self, n: usize) -> usize {
        n.div_ceil(self.per_word())
    }

    /// The threshold.
    pub fn threshold(self) -> f32 {
        match self {
            Codec::TwoBit { threshold } | Codec::OneBit { threshold } => threshold,
        }
    }
}

const TWO_BIT_PER_WORD: usize = 16;
const ONE_BIT_PER_WORD: usize = 32;

/// R39: element `j` of a word sits at bit `8 * (j / 4) + 6 - 2 * (j % 4)`; its code `11` is
/// this mask of the word.
const TWO_BIT_MASKS: [u32; TWO_BIT_PER_WORD] = {
    let mut s = [0u32; TWO_BIT_PER_WORD];
    let mut j = 0;
    while j < TWO_BIT_PER_WORD {
        s[j] = 0b11 << (8 * (j as u32 / 4) + 6 - 2 * (j as u32 % 4));
        j += 1;
    }
    s
};

/// Element `j`'s code `10` (the high bit of its mask).
const TWO_BIT_NEG: [u32; TWO_BIT_PER_WORD] = {
    let mut s = [0u32; TWO_BIT_PER_WORD];
    let mut j = 0;
    while j < TWO_BIT_PER_WORD {
        s[j] = TWO_BIT_MASKS[j] & (TWO_BIT_MASKS[j] << 1);
        j += 1;
    }
    s
};

/// R41: element `j` of a word is the bit `8 * (j / 8) + 7 - j % 8`.
const ONE_BIT_MASKS: [u32; ONE_BIT_PER_WORD] = {
    let mut s = [0u32; ONE_BIT_PER_WORD];
    let mut j = 0;
    while j < ONE_BIT_PER_WORD {
        s[j] = 1 << (8 * (j as u32 / 8) + 7 - (j as u32 % 8));
        j += 1;
    }
    s
};

/// One 2-bit step (R38): the new residual, the all-ones masks "sends `+t`" and "sends `-t`",
/// and the decoded value `d`.
///
/// With `s = r + g`, the specification's branches leave `s - t`, `s + t` or `s`; this is
/// `s - d` for `d` = `t`, `-t` or `+0.0`, bit for bit (`s - (-t)` *is* `s + t` in IEEE
/// arithmetic, and `s - 0.0` is `s`, `-0.0` and NaNs included). `d` is picked by masking bits,
/// so the loops have no branches and vectorise.
#[inline(always)]
fn two_bit_step(r: f32, g: f32, t: f32) -> (f32, u32, u32, f32) {
    let s = r + g;
    let pos = s >= t;
    let neg = !pos & (s <= -t);
    let pos_m = 0u32.wrapping_sub(u32::from(pos));
    let neg_m = 0u32.wrapping_sub(u32::from(neg));
    let d = f32::from_bits((t.to_bits() & pos_m) | ((-t).to_bits() & neg_m));
    (s - d, pos_m, neg_m, d)
}

/// One 1-bit step (R40): the new residual, whether `+1` is sent, and the decoded value `d`.
///
/// The specification's `s - 1` or `s + 1` (with `s = r + g`) is `s - d` for `d = ±1`, bit for
/// bit.
#[inline(always)]
fn one_bit_step(r: f32, g: f32, t: f32) -> (f32, bool, f32) {
    let s = r + g;
    let pos = s > t;
    let d = if pos { 1.0 } else { -1.0 };
    (s - d, pos, d)
}

/// Quantises `grad` with error feedback into `words`, updating `residual`.
///
/// Bit-exact with [`Compression::quantize`]: `words` receives exactly the words it returns
/// (every word is overwritten; the bits past the last element are 0) and `residual` ends up
/// with the same bits.
///
/// `residual` must have `grad.len()` elements and `words` exactly
/// [`Codec::compressed_words`]`(grad.len())`; otherwise [`KernelError::LengthMismatch`].
pub fn quantize(
    codec: Codec,
    grad: &[f32],
    residual: &mut [f32],
    words: &mut [u32],
) -> Result<(), KernelError> {
    check_len("residual", grad.len(), residual.len())?;
    check_len("words", codec.compressed_words(grad.len()), words.len())?;
    match par::chunk_len(grad.len(), codec.per_word()) {
        None => quantize_serial(codec, grad, residual, words),
        Some(c) => grad
            .par_chunks(c)
            .zip(residual.par_chunks_mut(c))
            .zip(words.par_chunks_mut(c / codec.per_word()))
            .for_each(|((g, r), w)| quantize_serial(codec, g, r, w)),
    }
    Ok(())
}

fn quantize_serial(codec: Codec, grad: &[f32], residual: &mut [f32], words: &mut [u32]) {
    match codec {
        Codec::TwoBit { threshold: t } => pack(TWO_BIT_PER_WORD, grad, residual, words, |g, r| {
            let mut w = 0u32;
            for (((&g, r), &mask), &neg_bits) in g
                .iter()
                .zip(r.iter_mut())
                .zip(&TWO_BIT_MASKS)
                .zip(&TWO_BIT_NEG)
            {
                let (new_r, pos_m, neg_m, _) = two_bit_step(*r, g, t);
                *r = new_r;
                w |= (mask & pos_m) | (neg_bits & neg_m);
            }
            w
        }),
        Codec::OneBit { threshold: t } => pack(ONE_BIT_PER_WORD, grad, residual, words, |g, r| {
            let mut w = 0u32;
            for ((&g, r), &bit) in g.iter().zip(r.iter_mut()).zip(&ONE_BIT_MASKS) {
                let (new_r, pos, _) = one_bit_step(*r, g, t);
                *r = new_r;
                w |= if pos { bit } else { 0 };
            }
            w
        }),
    }
}

/// Packs whole words of `n` elements (`word` packs one), then the partial last word.
#[inline(always)]
fn pack(
    n: usize,
    grad: &[f32],
    residual: &mut [f32],
    words: &mut [u32],
    word: impl Fn(&[f32], &mut [f32]) -> u32,
) {
    let mut g = grad.chunks_exact(n);
    let mut r = residual.chunks_exact_mut(n);
    let mut words = words.iter_mut();
    for ((g, r), w) in (&mut g).zip(&mut r).zip(&mut words) {
        *w = word(g, r);
    }
    let (g, r) = (g.remainder(), r.into_remainder());
    if let Some(w) = words.next() {
        *w = word(g, r);
    }
}

/// Decodes `out.len()` elements from `words`: `out[i] = decoded` (`accumulate == false`) or
/// `out[i] = out[i] + decoded` (`accumulate == true`, an `f32` addition with `out[i]` on the
/// left).
///
/// Bit-exact with [`Compression::dequantize`] (and, when accumulating, with adding its result
/// to `out`). `words` needs at least [`Codec::compressed_words`]`(out.len())` words, as the
/// specification requires (extra words are ignored); otherwise
/// [`KernelError::LengthMismatch`].
pub fn dequantize(
    codec: Codec,
    words: &[u32],
    out: &mut [f32],
    accumulate: bool,
) -> Result<(), KernelError> {
    let needed = codec.compressed_words(out.len());
    if words.len() < needed {
        return Err(KernelError::LengthMismatch {
            what: "words",
            expected: needed,
            found: words.len(),
        });
    }
    let words = &words[..needed];
    match par::chunk_len(out.len(), codec.per_word()) {
        None => dequantize_serial(codec, words, out, accumulate),
        Some(c) => out
            .par_chunks_mut(c)
            .zip(words.par_chunks(c / codec.per_word()))
            .for_each(|(o, w)| dequantize_serial(codec, w, o, accumulate)),
    }
    Ok(())
}

fn dequantize_serial(codec: Codec, words: &[u32], out: &mut [f32], accumulate: bool) {
    const TWO: usize = TWO_BIT_PER_WORD;
    const ONE: usize = ONE_BIT_PER_WORD;
    match (codec, accumulate) {
        (Codec::TwoBit { threshold: t }, false) => {
            unpack(TWO, words, out, |w, o| two_bit_word(w, o, t, |o, d| *o = d))
        }
        (Codec::TwoBit { threshold: t }, true) => unpack(TWO, words, out, |w, o| {
            two_bit_word(w, o, t, |o, d| *o += d)
        }),
        (Codec::OneBit { .. }, false) => {
            unpack(ONE, words, out, |w, o| one_bit_word(w, o, |o, d| *o = d))
        }
        (Codec::OneBit { .. }, true) => {
            unpack(ONE, words, out, |w, o| one_bit_word(w, o, |o, d| *o += d))
        }
    }
}

/// Decodes whole words of `n` elements (`word` decodes one), then the partial last word.
#[inline(always)]
fn unpack(n: usize, words: &[u32], out: &mut [f32], word: impl Fn(u32, &mut [f32])) {
    let mut o = out.chunks_exact_mut(n);
    let mut words = words.iter();
    for (o, &w) in (&mut o).zip(&mut words) {
        word(w, o);
    }
    let o = o.into_remainder();
    if let Some(&w) = words.next() {
        word(w, o);
    }
}

/// R38: in word `w`, code `11` decodes to `+t`, `10` to `-t`, `00` and `01` to 0; `put` stores
/// or adds each decoded value.
#[inline(always)]
fn two_bit_word(w: u32, out: &mut [f32], t: f32, put: impl Fn(&mut f32, f32)) {
    // Branch-free selection of the bits of `+t`, `-t` or `+0.0`, so that the word vectorises.
    let (pos_bits, neg_bits) = (t.to_bits(), (-t).to_bits());
    for ((o, &mask), &neg) in out.iter_mut().zip(&TWO_BIT_MASKS).zip(&TWO_BIT_NEG) {
        let code = w & mask;
        let pos_sel = 0u32.wrapping_sub(u32::from(code == mask));
        let neg_sel = 0u32.wrapping_sub(u32::from(code == neg));
        put(
            o,
            f32::from_bits((pos_bits & pos_sel) | (neg_bits & neg_sel)),
        );
    }
}

/// R40: in word `w`, bit 1 decodes to `+1`, bit 0 to `-1`; `put` stores or adds each value.
#[inline(always)]
fn one_bit_word(w: u32, out: &mut [f32], put: impl Fn(&mut f32, f32)) {
    for (o, &bit) in out.iter_mut().zip(&ONE_BIT_MASKS) {
        put(o, if w & bit != 0 { 1.0 } else { -1.0 });
    }
}

/// Fused compressed push: for each element `i` and each input `k` in list order,
/// `residuals[k][i] += grads[k][i]`, quantise, decode; then
/// `out[i] = decoded_0 + decoded_1 + ...` in list order (`f32` additions, the running sum on the
/// left; a single input gives `decoded_0`).
///
/// Equals [`quantize`] of each input with its residual, [`dequantize`] of each, then
/// [`sum_into`](crate::sum_into) — i.e. bit-exact with [`Compression::quantize`],
/// [`Compression::dequantize`] and [`kvstore_spec::reduce::sum`] (R42) — without materialising
/// any packed word.
///
/// There must be as many residuals as gradients, at least one, each of `out.len()` elements;
/// otherwise [`KernelError::LengthMismatch`].
pub fn quantize_sum_into(
    codec: Codec,
    out: &mut [f32],
    grads: &[&[f32]],
    residuals: &mut [&mut [f32]],
) -> Result<(), KernelError> {
    if grads.is_empty() {
        return Err(KernelError::LengthMismatch {
            what: "inputs",
            expected: 1,
            found: 0,
        });
    }
    check_len("residuals", grads.len(), residuals.len())?;
    for g in grads {
        check_len("gradient", out.len(), g.len())?;
    }
    for r in residuals.iter() {
        check_len("residual", out.len(), r.len())?;
    }
    match codec {
        Codec::TwoBit { threshold: t } => qsum(out, grads, residuals, move |r, g| {
            let (r, _, _, d) = two_bit_step(r, g, t);
            (r, d)
        }),
        Codec::OneBit { threshold: t } => qsum(out, grads, residuals, move |r, g| {
            let (r, _, d) = one_bit_step(r, g, t);
            (r, d)
        }),
    }
    Ok(())
}

/// The most inputs the parallel fused kernel splits at once (its split halves live in arrays
/// on the stack); more inputs run one parallel pass per input, with the same result.
const MAX_FUSED: usize = 16;

fn qsum<S>(out: &mut [f32], grads: &[&[f32]], residuals: &mut [&mut [f32]], step: S)
where
    S: Fn(f32, f32) -> (f32, f32) + Sync,
{
    let Some(c) = par::chunk_len(out.len(), 1) else {
        return qsum_serial(out, grads, 0, residuals, &step);
    };
    if residuals.len() <= MAX_FUSED {
        return qsum_split(out, grads, 0, residuals, c, &step);
    }
    // One parallel pass per input: each element still sees the inputs in list order.
    for (k, (g, r)) in grads.iter().zip(residuals.iter_mut()).enumerate() {
        out.par_chunks_mut(c)
            .zip(g.par_chunks(c))
            .zip(r.par_chunks_mut(c))
            .for_each(|((o, g), r)| {
                if k == 0 {
                    qsum_first(o, g, r, false, &step);
                } else {
                    qsum_add(o, g, r, &step);
                }
            });
    }
}

/// Halves `out` and every residual (at a multiple of `chunk`) and recurses in parallel until a
/// piece is one chunk. Gradients are shared and indexed from `offset`.
fn qsum_split<S>(
    out: &mut [f32],
    grads: &[&[f32]],
    offset: usize,
    residuals: &mut [&mut [f32]],
    chunk: usize,
    step: &S,
) where
    S: Fn(f32, f32) -> (f32, f32) + Sync,
{
    let chunks = out.len().div_ceil(chunk);
    if chunks <= 1 {
        return qsum_serial(out, grads, offset, residuals, step);
    }
    let mid = chunks / 2 * chunk;
    let (out_l, out_r) = out.split_at_mut(mid);
    let k = residuals.len();
    let mut left: [&mut [f32]; MAX_FUSED] = Default::default();
    let mut right: [&mut [f32]; MAX_FUSED] = Default::default();
    for ((r, l), rr) in residuals.iter_mut().zip(&mut left).zip(&mut right) {
        let (a, b) = r.split_at_mut(mid);
        *l = a;
        *rr = b;
    }
    let (left, right) = (&mut left[..k], &mut right[..k]);
    rayon::join(
        || qsum_split(out_l, grads, offset, left, chunk, step),
        || qsum_split(out_r, grads, offset + mid, right, chunk, step),
    );
}

/// The fused kernel on `out` (elements `offset..` of the gradients; `residuals` already cut to
/// `out`), block by block so that the block of `out` stays in cache across the inputs.
fn qsum_serial<S>(
    out: &mut [f32],
    grads: &[&[f32]],
    offset: usize,
    residuals: &mut [&mut [f32]],
    step: &S,
) where
    S: Fn(f32, f32) -> (f32, f32),
{
    let single = residuals.len() == 1;
    for (b, o) in out.chunks_mut(BLOCK_ELEMENTS).enumerate() {
        let local = b * BLOCK_ELEMENTS..b * BLOCK_ELEMENTS + o.len();
        let global = offset + local.start..offset + local.end;
        for (k, (g, r)) in grads.iter().zip(residuals.iter_mut()).enumerate() {
            let (g, r) = (&g[global.clone()], &mut r[local.clone()]);
            if k == 0 {
                qsum_first(o, g, r, single, step);
            } else {
                qsum_add(o, g, r, step);
            }
        }
    }
}

/// First input: `out = decoded` (quieted when it is the only input, as the specification's
/// one-value sum copies through `f64`).
#[inline(always)]
fn qsum_first<S>(out: &mut [f32], g: &[f32], r: &mut [f32], single: bool, step: &S)
where
    S: Fn(f32, f32) -> (f32, f32),
{
    for ((o, &g), r) in out.iter_mut().zip(g).zip(r.iter_mut()) {
        let (new_r, d) = step(*r, g);
        *r = new_r;
        *o = if single { quiet(d) } else { d };
    }
}

/// Later inputs: `out = out + decoded`.
#[inline(always)]
fn qsum_add<S>(out: &mut [f32], g: &[f32], r: &mut [f32], step: &S)
where
    S: Fn(f32, f32) -> (f32, f32),
{
    for ((o, &g), r) in out.iter_mut().zip(g).zip(r.iter_mut()) {
        let (new_r, d) = step(*r, g);
        *r = new_r;
        *o += d;
    }
}
