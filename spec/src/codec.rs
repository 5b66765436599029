//! The byte-exact gradient compression codec (SPEC rules R37-R41; semantics §7.3 and §7.4).
//!
//! - R38: 2bit quantisation with error feedback (semantics §7.3).
//! - R39: 2bit packing, 16 elements per little-endian u32 word (semantics §7.3).
//! - R40: 1bit quantisation with error feedback (semantics §7.4).
//! - R41: 1bit packing, 32 elements per little-endian u32 word (semantics §7.4).
//! - R37: parameter validation (semantics §7.1, with the kvstore decision that a threshold must be
//!   finite).
//!
//! All arithmetic is `f32`, exactly as MXNet performs it, because backends are compared with this
//! module bit for bit: a residual computed in `f64` and rounded afterwards could differ in its last
//! bit and change a later threshold decision.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which quantiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompressionType {
    /// 1 bit per element; every element is sent as ±1 (R40, R41).
    OneBit,
    /// 2 bits per element; an element is sent as +t, -t or 0 (R38, R39).
    TwoBit,
}

/// Validated compression parameters (R37).
///
/// Build it with [`Compression::new`] or [`Compression::from_params`]; the fields are public only
/// so that callers can read them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Compression {
    /// Which quantiser.
    pub kind: CompressionType,
    /// The decision threshold; for 2bit also the magnitude that is sent.
    pub threshold: f32,
}

/// MXNet's default threshold when the parameters do not name one.
const DEFAULT_THRESHOLD: f32 = 0.5;

/// Elements per packed word.
const TWO_BIT_PER_WORD: usize = 16;
const ONE_BIT_PER_WORD: usize = 32;

/// 2bit codes (R38); `01` is never produced and decodes to 0.
const CODE_POS: u32 = 0b11;
const CODE_NEG: u32 = 0b10;
const CODE_ZERO: u32 = 0b00;

fn invalid(reason: String) -> Error {
    Error::InvalidCompression { reason }
}

impl Compression {
    /// Validates the parameters (R37).
    ///
    /// A non-finite threshold is rejected for both types (kvstore decision): MXNet would accept
    /// it, but then every comparison is meaningless. 2bit needs `threshold > 0` because the
    /// threshold is also the magnitude it sends; 1bit accepts zero and negative thresholds.
    pub fn new(kind: CompressionType, threshold: f32) -> Result<Compression> {
        if !threshold.is_finite() {
            return Err(invalid(format!("threshold {threshold} must be finite")));
        }
        if kind == CompressionType::TwoBit && threshold <= 0.0 {
            return Err(invalid(format!(
                "threshold {threshold} must be greater than 0 for two bit compression"
            )));
        }
        Ok(Compression { kind, threshold })
    }

    /// Parses string parameters as `set_gradient_compression` receives them (R37).
    ///
    /// Unknown keys are ignored because MXNet ignores them; a repeated key keeps its last value,
    /// as a Python dict would.
    pub fn from_params<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Compression> {
        let mut kind_text = None;
        let mut threshold_text = None;
        for (key, value) in params {
            match key {
                "type" => kind_text = Some(value),
                "threshold" => threshold_text = Some(value),
                _ => {}
            }
        }
        let kind_text = kind_text.ok_or_else(|| {
            invalid("Required parameter type of string is not presented".to_string())
        })?;
        let kind = parse_kind(kind_text)?;
        let threshold = threshold_text.map_or(Ok(DEFAULT_THRESHOLD), parse_threshold)?;
        Compression::new(kind, threshold)
    }

    /// Number of u32 words of a compressed buffer for `n` elements (R39, R41).
    pub fn compressed_words(&self, n: usize) -> usize {
        n.div_ceil(self.per_word())
    }

    /// Quantises `grad` with error feedback (R38, R40) and packs the codes (R39, R41).
    ///
    /// `residual` is updated in place; it must have one slot per gradient element.
    pub fn quantize(&self, grad: &[f32], residual: &mut [f32]) -> Result<Vec<u32>> {
        if grad.len() != residual.len() {
            return Err(invalid(format!(
                "gradient has {} elements but the residual has {}",
                grad.len(),
                residual.len()
            )));
        }
        let mut words = vec![0u32; self.compressed_words(grad.len())];
        for (i, (&g, r)) in grad.iter().zip(residual.iter_mut()).enumerate() {
            let (word, shift) = self.position(i);
            words[word] |= self.code(r, g) << shift;
        }
        Ok(words)
    }

    /// Decodes `n` elements from packed words (R38-R41).
    pub fn dequantize(&self, words: &[u32], n: usize) -> Result<Vec<f32>> {
        let needed = self.compressed_words(n);
        if words.len() < needed {
            return Err(invalid(format!(
                "{n} elements need {needed} compressed words but {} were given",
                words.len()
            )));
        }
        let value = |i| {
            let (word, shift) = self.position(i);
            self.decode(words[word] >> shift)
        };
        Ok((0..n).map(value).collect())
    }

    fn per_word(&self) -> usize {
        match self.kind {
            CompressionType::TwoBit => TWO_BIT_PER_WORD,
            CompressionType::OneBit => ONE_BIT_PER_WORD,
        }
    }

    /// Word index and bit shift of element `i`.
    fn position(&self, i: usize) -> (usize, u32) {
        match self.kind {
            CompressionType::TwoBit => (i / TWO_BIT_PER_WORD, two_bit_shift(i)),
            CompressionType::OneBit => (i / ONE_BIT_PER_WORD, one_bit_shift(i)),
        }
    }

    fn code(&self, r: &mut f32, g: f32) -> u32 {
        match self.kind {
            CompressionType::TwoBit => two_bit_code(r, g, self.threshold),
            CompressionType::OneBit => one_bit_code(r, g, self.threshold),
        }
    }

    /// Decodes the code found in the low bits of `bits` (higher bits belong to other elements).
    fn decode(&self, bits: u32) -> f32 {
        match self.kind {
            CompressionType::TwoBit => two_bit_value(bits & 0b11, self.threshold),
            CompressionType::OneBit => one_bit_value(bits & 0b1),
        }
    }
}

fn parse_kind(text: &str) -> Result<CompressionType> {
    match text {
        "1bit" => Ok(CompressionType::OneBit),
        "2bit" => Ok(CompressionType::TwoBit),
        _ => Err(invalid(format!(
            "Unknown type for gradient compression {text}"
        ))),
    }
}

fn parse_threshold(text: &str) -> Result<f32> {
    text.parse::<f32>().map_err(|_| {
        invalid(format!(
            "Invalid Parameter format for threshold expect float but value='{text}'"
        ))
    })
}

/// R38: one 2bit step. Inclusive comparisons, at most one threshold step per push, so the
/// residual keeps whatever is not sent (it can grow without bound).
fn two_bit_code(r: &mut f32, g: f32, t: f32) -> u32 {
    *r += g;
    if *r >= t {
        *r -= t;
        CODE_POS
    } else if *r <= -t {
        *r += t;
        CODE_NEG
    } else {
        CODE_ZERO
    }
}

/// R38: `01` never comes out of the quantiser, but MXNet decodes it (and `00`) as 0.
fn two_bit_value(code: u32, t: f32) -> f32 {
    match code {
        CODE_POS => t,
        CODE_NEG => -t,
        _ => 0.0,
    }
}

/// R39: element `i % 16` of its word; the first element of each byte takes that byte's two most
/// significant bits, and byte `k` of the word is bits `8k..8k+8` because words are little-endian.
fn two_bit_shift(i: usize) -> u32 {
    let j = (i % TWO_BIT_PER_WORD) as u32;
    8 * (j / 4) + 6 - 2 * (j % 4)
}

/// R40: one 1bit step. Strict `>`; the threshold only decides the sign, the magnitude is always
/// 1, so every element is sent and a zero gradient alternates -1, +1.
fn one_bit_code(r: &mut f32, g: f32, t: f32) -> u32 {
    *r += g;
    if *r > t {
        *r -= 1.0;
        1
    } else {
        *r += 1.0;
        0
    }
}

fn one_bit_value(bit: u32) -> f32 {
    if bit == 1 {
        1.0
    } else {
        -1.0
    }
}

/// R41: element `i % 32` of its word, most significant bit of its byte first.
fn one_bit_shift(i: usize) -> u32 {
    let j = (i % ONE_BIT_PER_WORD) as u32;
    8 * (j / 8) + 7 - (j % 8)
}

/// Little-endian byte image of the packed words (what goes on the wire, R39, R41).
pub fn words_to_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Inverse of [`words_to_bytes`]; a length that is not a whole number of words is rejected.
pub fn bytes_to_words(bytes: &[u8]) -> Result<Vec<u32>> {
    if bytes.len() % 4 != 0 {
        return Err(invalid(format!(
            "a compressed buffer of {} bytes is not a whole number of 4-byte words",
            bytes.len()
        )));
    }
    Ok(bytes.chunks_exact(4).map(word_from_le).collect())
}

/// The last byte is the most significant one in little-endian order.
fn word_from_le(chunk: &[u8]) -> u32 {
    chunk
        .iter()
        .rev()
        .fold(0, |word, &byte| (word << 8) | u32::from(byte))
}

/// A compression residual: what quantisation has not sent yet, per element.
///
/// Equality is bitwise, like every value's, so a NaN residual equals itself and state
/// comparisons (R7) stay exact.
#[derive(Debug, Clone, Default)]
pub struct Residual(pub Vec<f32>);

impl PartialEq for Residual {
    /// Bitwise, with any NaN equal to any NaN (R60).
    fn eq(&self, other: &Self) -> bool {
        crate::value::f32_slices_equal(&self.0, &other.0)
    }
}

impl PartialEq<Vec<f32>> for Residual {
    fn eq(&self, other: &Vec<f32>) -> bool {
        *self == Residual(other.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn two_bit(t: f32) -> Compression {
        Compression::new(CompressionType::TwoBit, t).unwrap()
    }

    fn one_bit(t: f32) -> Compression {
        Compression::new(CompressionType::OneBit, t).unwrap()
    }

    /// Bit-exact comparison, so that a last-bit or sign-of-zero difference is caught.
    fn assert_bits_eq(actual: &[f32], expected: &[f32]) {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(actual), bits(expected), "{actual:?} != {expected:?}");
    }

    /// The doc lists decimal approximations; the exact f32 expectations must round to them.
    fn assert_near_doc(actual: &[f32], doc: &[f32]) {
        assert_eq!(actual.len(), doc.len());
        for (a, d) in actual.iter().zip(doc) {
            assert!((a - d).abs() < 1e-6, "{actual:?} is not close to {doc:?}");
        }
    }

    /// Pushes `grad` from the given residual; checks words, dequantised values and residual.
    fn check_push(
        c: Compression,
        grad: &[f32],
        residual: &mut [f32],
        words: &[u32],
        deq: &[f32],
        new_residual: &[f32],
    ) {
        let got = c.quantize(grad, residual).unwrap();
        assert_eq!(got, words, "words {got:x?} != {words:x?}");
        assert_bits_eq(&c.dequantize(&got, grad.len()).unwrap(), deq);
        assert_bits_eq(residual, new_residual);
    }

    fn invalid_reason(result: Result<Compression>) -> String {
        match result {
            Err(Error::InvalidCompression { reason }) => reason,
            other => panic!("expected InvalidCompression, got {other:?}"),
        }
    }

    // ---- R38: 2bit quantisation ----

    #[test]
    fn r38_example_mixed_signs_then_push_0_2_everywhere() {
        let c = two_bit(0.5);
        let mut r = [0.0f32; 8];
        check_push(
            c,
            &[1.0, -1.0, 0.3, -0.6, 0.5, -0.5, 0.0, 0.49],
            &mut r,
            &[0x0000_E0E2],
            &[0.5, -0.5, 0.0, -0.5, 0.5, -0.5, 0.0, 0.0],
            &[
                1.0f32 - 0.5,
                -1.0f32 + 0.5,
                0.3,
                -0.6f32 + 0.5,
                0.5f32 - 0.5,
                -0.5f32 + 0.5,
                0.0,
                0.49,
            ],
        );
        assert_near_doc(&r, &[0.5, -0.5, 0.3, -0.1, 0.0, 0.0, 0.0, 0.49]);
        check_push(
            c,
            &[0.2; 8],
            &mut r,
            &[0x0000_03CC],
            &[0.5, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5],
            &[
                (0.5f32 + 0.2) - 0.5,
                -0.5f32 + 0.2,
                (0.3f32 + 0.2) - 0.5,
                (-0.6f32 + 0.5) + 0.2,
                0.0f32 + 0.2,
                0.0f32 + 0.2,
                0.0f32 + 0.2,
                (0.49f32 + 0.2) - 0.5,
            ],
        );
        assert_near_doc(&r, &[0.2, -0.3, 0.0, 0.1, 0.2, 0.2, 0.2, 0.19]);
    }

    #[test]
    fn r38_example_sixteen_ones() {
        let mut r = [0.0f32; 16];
        check_push(
            two_bit(0.5),
            &[1.0; 16],
            &mut r,
            &[0xFFFF_FFFF],
            &[0.5; 16],
            &[0.5; 16],
        );
    }

    #[test]
    fn r38_example_sixteen_minus_ones() {
        let mut r = [0.0f32; 16];
        check_push(
            two_bit(0.5),
            &[-1.0; 16],
            &mut r,
            &[0xAAAA_AAAA],
            &[-0.5; 16],
            &[-0.5; 16],
        );
    }

    #[test]
    fn r38_example_ramp_minus_one_to_0_9() {
        let grad: Vec<f32> = (0..20).map(|i| (i as f32 - 10.0) / 10.0).collect();
        let literal = [
            -1.0f32, -0.9, -0.8, -0.7, -0.6, -0.5, -0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4,
            0.5, 0.6, 0.7, 0.8, 0.9,
        ];
        assert_bits_eq(&grad, &literal);
        let mut deq = vec![-0.5f32; 6];
        deq.extend([0.0f32; 9]);
        deq.extend([0.5f32; 5]);
        let mut r = [0.0f32; 20];
        check_push(
            two_bit(0.5),
            &grad,
            &mut r,
            &[0x0300_A0AA, 0x0000_00FF],
            &deq,
            &[
                -1.0f32 + 0.5,
                -0.9f32 + 0.5,
                -0.8f32 + 0.5,
                -0.7f32 + 0.5,
                -0.6f32 + 0.5,
                -0.5f32 + 0.5,
                -0.4,
                -0.3,
                -0.2,
                -0.1,
                0.0,
                0.1,
                0.2,
                0.3,
                0.4,
                0.5f32 - 0.5,
                0.6f32 - 0.5,
                0.7f32 - 0.5,
                0.8f32 - 0.5,
                0.9f32 - 0.5,
            ],
        );
        assert_near_doc(
            &r,
            &[
                -0.5, -0.4, -0.3, -0.2, -0.1, 0.0, -0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4,
                0.0, 0.1, 0.2, 0.3, 0.4,
            ],
        );
    }

    #[test]
    fn r38_example_residual_grows_one_step_per_push() {
        let mut r = [0.0f32];
        check_push(
            two_bit(0.5),
            &[1.2],
            &mut r,
            &[0xC0],
            &[0.5],
            &[1.2f32 - 0.5],
        );
        assert_near_doc(&r, &[0.7]);
    }

    #[test]
    fn r38_threshold_itself_is_sent() {
        let mut r = [0.0f32; 2];
        check_push(
            two_bit(0.25),
            &[0.25, -0.25],
            &mut r,
            &[0xE0],
            &[0.25, -0.25],
            &[0.0, 0.0],
        );
    }

    #[test]
    fn r38_code_01_decodes_to_zero() {
        let c = two_bit(0.5);
        assert_bits_eq(&c.dequantize(&[0x40], 1).unwrap(), &[0.0]);
        // One byte holding 11, 10, 01, 00 in element order.
        assert_bits_eq(&c.dequantize(&[0xE4], 4).unwrap(), &[0.5, -0.5, 0.0, 0.0]);
    }

    #[test]
    fn r38_quantize_rejects_residual_of_other_length() {
        let mut r = [0.0f32; 3];
        let err = two_bit(0.5).quantize(&[1.0; 4], &mut r).unwrap_err();
        assert!(matches!(err, Error::InvalidCompression { .. }));
        assert_bits_eq(&r, &[0.0; 3]);
    }

    // ---- R39: 2bit packing ----

    #[test]
    fn r39_example_seventeen_ones() {
        let mut r = [0.0f32; 17];
        check_push(
            two_bit(0.5),
            &[1.0; 17],
            &mut r,
            &[0xFFFF_FFFF, 0x0000_00C0],
            &[0.5; 17],
            &[0.5; 17],
        );
    }

    #[test]
    fn r39_example_first_element_in_top_bits() {
        let mut r = [0.0f32; 4];
        let deq = [0.5, 0.0, 0.0, 0.0];
        check_push(
            two_bit(0.5),
            &[1.0, 0.0, 0.0, 0.0],
            &mut r,
            &[0xC0],
            &deq,
            &[0.5, 0.0, 0.0, 0.0],
        );
    }

    #[test]
    fn r39_example_fourth_element_in_low_bits() {
        let mut r = [0.0f32; 4];
        let deq = [0.0, 0.0, 0.0, 0.5];
        check_push(
            two_bit(0.5),
            &[0.0, 0.0, 0.0, 1.0],
            &mut r,
            &[0x03],
            &deq,
            &[0.0, 0.0, 0.0, 0.5],
        );
    }

    #[test]
    fn r39_example_fifth_element_in_second_byte() {
        let mut r = [0.0f32; 5];
        check_push(
            two_bit(0.5),
            &[0.0, 0.0, 0.0, 0.0, -1.0],
            &mut r,
            &[0x8000],
            &[0.0, 0.0, 0.0, 0.0, -0.5],
            &[0.0, 0.0, 0.0, 0.0, -0.5],
        );
    }

    #[test]
    fn r39_shift_formula() {
        assert_eq!(two_bit_shift(0), 6);
        assert_eq!(two_bit_shift(3), 0);
        assert_eq!(two_bit_shift(4), 14);
        assert_eq!(two_bit_shift(15), 24);
        assert_eq!(two_bit_shift(16), 6);
    }

    #[test]
    fn r39_tail_bits_are_zero() {
        let mut r = [0.0f32; 5];
        let words = two_bit(0.5).quantize(&[1.0; 5], &mut r).unwrap();
        assert_eq!(words, [0x0000_C0FF]);
    }

    #[test]
    fn r39_compressed_words_is_ceil_n_over_16() {
        let c = two_bit(0.5);
        let counts: Vec<usize> = [0, 1, 16, 17, 32, 33]
            .map(|n| c.compressed_words(n))
            .to_vec();
        assert_eq!(counts, [0, 1, 1, 2, 2, 3]);
    }

    #[test]
    fn r39_words_to_bytes_puts_first_element_in_top_bits_of_byte_0() {
        assert_eq!(words_to_bytes(&[0xC0]), [0xC0, 0, 0, 0]);
        assert_eq!(
            words_to_bytes(&[0x0000_E0E2, 0x0000_00FF]),
            [0xE2, 0xE0, 0, 0, 0xFF, 0, 0, 0]
        );
        assert_eq!(bytes_to_words(&[0xE2, 0xE0, 0, 0]).unwrap(), [0x0000_E0E2]);
    }

    #[test]
    fn r39_bytes_to_words_rejects_partial_word() {
        let err = bytes_to_words(&[1, 2, 3, 4, 5]).unwrap_err();
        assert!(matches!(err, Error::InvalidCompression { .. }));
        assert_eq!(bytes_to_words(&[]).unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn r39_dequantize_rejects_short_buffer() {
        let err = two_bit(0.5).dequantize(&[0], 17).unwrap_err();
        assert!(matches!(err, Error::InvalidCompression { .. }));
        assert_eq!(two_bit(0.5).dequantize(&[], 0).unwrap(), Vec::<f32>::new());
    }

    // ---- R40: 1bit quantisation ----

    #[test]
    fn r40_example_threshold_half() {
        let mut r = [0.0f32; 9];
        check_push(
            one_bit(0.5),
            &[1.0, -1.0, 0.6, 0.4, 0.5, 0.51, -3.0, 2.0, 1.0],
            &mut r,
            &[0x0000_80A5],
            &[1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0, 1.0],
            &[
                1.0f32 - 1.0,
                -1.0f32 + 1.0,
                0.6f32 - 1.0,
                0.4f32 + 1.0,
                0.5f32 + 1.0,
                0.51f32 - 1.0,
                -3.0f32 + 1.0,
                2.0f32 - 1.0,
                1.0f32 - 1.0,
            ],
        );
        assert_near_doc(&r, &[0.0, 0.0, -0.4, 1.4, 1.5, -0.49, -2.0, 1.0, 0.0]);
    }

    #[test]
    fn r40_example_threshold_zero_sequence_on_one_slot() {
        let c = one_bit(0.0);
        let mut r = [0.0f32];
        // (gradient, word, dequantised, residual after the push)
        let steps = [
            (1.0f32, 0x80, 1.0f32, 0.0f32),
            (-1.0, 0x00, -1.0, 0.0),
            (2.0, 0x80, 1.0, 1.0),
            (0.0, 0x80, 1.0, 0.0),
            (-2.0, 0x00, -1.0, -1.0),
        ];
        for (g, word, deq, residual) in steps {
            check_push(c, &[g], &mut r, &[word], &[deq], &[residual]);
        }
    }

    #[test]
    fn r40_zero_gradient_alternates() {
        let c = one_bit(0.5);
        let mut r = [0.0f32];
        for (deq, residual) in [(-1.0, 1.0), (1.0, 0.0), (-1.0, 1.0), (1.0, 0.0)] {
            let word = if deq > 0.0 { 0x80 } else { 0x00 };
            check_push(c, &[0.0], &mut r, &[word], &[deq], &[residual]);
        }
    }

    #[test]
    fn r40_threshold_itself_is_not_sent_as_plus_one() {
        let mut r = [0.0f32];
        check_push(
            one_bit(-0.5),
            &[-0.5],
            &mut r,
            &[0x00],
            &[-1.0],
            &[-0.5f32 + 1.0],
        );
    }

    // ---- R41: 1bit packing ----

    #[test]
    fn r41_first_element_is_msb_of_byte_0() {
        let mut grad = [-1.0f32; 32];
        grad[0] = 1.0;
        grad[8] = 1.0;
        grad[31] = 1.0;
        let words = one_bit(0.0).quantize(&grad, &mut [0.0; 32]).unwrap();
        assert_eq!(words, [0x0100_8080]);
        assert_eq!(words_to_bytes(&words), [0x80, 0x80, 0x00, 0x01]);
    }

    #[test]
    fn r41_shift_formula() {
        assert_eq!(one_bit_shift(0), 7);
        assert_eq!(one_bit_shift(7), 0);
        assert_eq!(one_bit_shift(8), 15);
        assert_eq!(one_bit_shift(31), 24);
        assert_eq!(one_bit_shift(32), 7);
    }

    #[test]
    fn r41_tail_bits_are_zero() {
        let words = one_bit(0.0).quantize(&[1.0; 33], &mut [0.0; 33]).unwrap();
        assert_eq!(words, [0xFFFF_FFFF, 0x0000_0080]);
    }

    #[test]
    fn r41_compressed_words_is_ceil_n_over_32() {
        let c = one_bit(0.5);
        let counts: Vec<usize> = [0, 1, 32, 33, 64, 65]
            .map(|n| c.compressed_words(n))
            .to_vec();
        assert_eq!(counts, [0, 1, 1, 2, 2, 3]);
    }

    // ---- R37: parameter validation ----

    #[test]
    fn r37_two_bit_threshold_must_be_positive() {
        for t in [0.0f32, -0.0, -0.5] {
            let reason = invalid_reason(Compression::new(CompressionType::TwoBit, t));
            assert!(reason.contains("threshold"), "{reason}");
        }
        assert_eq!(two_bit(1e-6).threshold, 1e-6);
    }

    #[test]
    fn r37_one_bit_accepts_zero_and_negative_thresholds() {
        assert_eq!(one_bit(0.0).threshold, 0.0);
        assert_eq!(one_bit(-0.5).threshold, -0.5);
    }

    #[test]
    fn r37_non_finite_threshold_rejected_for_both_types() {
        for kind in [CompressionType::OneBit, CompressionType::TwoBit] {
            for t in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let reason = invalid_reason(Compression::new(kind, t));
                assert!(reason.contains("threshold"), "{reason}");
            }
        }
    }

    #[test]
    fn r37_from_params_reads_type_and_threshold() {
        let c = Compression::from_params([("type", "2bit"), ("threshold", "0.25")]).unwrap();
        assert_eq!(c, two_bit(0.25));
        let c = Compression::from_params([("type", "1bit"), ("threshold", "-1")]).unwrap();
        assert_eq!(c, one_bit(-1.0));
    }

    #[test]
    fn r37_from_params_default_threshold_is_half() {
        assert_eq!(
            Compression::from_params([("type", "2bit")]).unwrap(),
            two_bit(0.5)
        );
        assert_eq!(
            Compression::from_params([("type", "1bit")]).unwrap(),
            one_bit(0.5)
        );
    }

    #[test]
    fn r37_from_params_ignores_unknown_keys() {
        let params = [("foo", "bar"), ("type", "2bit"), ("compression", "x")];
        assert_eq!(Compression::from_params(params).unwrap(), two_bit(0.5));
    }

    #[test]
    fn r37_from_params_rejects_unknown_type() {
        let reason = invalid_reason(Compression::from_params([("type", "3bit")]));
        assert!(reason.contains("3bit"), "{reason}");
    }

    #[test]
    fn r37_from_params_requires_type() {
        let reason = invalid_reason(Compression::from_params([("threshold", "0.5")]));
        assert!(reason.contains("type"), "{reason}");
    }

    #[test]
    fn r37_from_params_rejects_unparsable_threshold() {
        let reason = invalid_reason(Compression::from_params([
            ("type", "2bit"),
            ("threshold", "abc"),
        ]));
        assert!(reason.contains("'abc'"), "{reason}");
    }

    #[test]
    fn r37_from_params_rejects_bad_threshold_values() {
        for text in ["0", "-0.5", "nan", "inf"] {
            let reason = invalid_reason(Compression::from_params([
                ("type", "2bit"),
                ("threshold", text),
            ]));
            assert!(reason.contains("threshold"), "{reason}");
        }
        for text in ["nan", "-inf"] {
            let reason = invalid_reason(Compression::from_params([
                ("type", "1bit"),
                ("threshold", text),
            ]));
            assert!(reason.contains("threshold"), "{reason}");
        }
    }

    // ---- properties ----

    /// Finite values, with a share of quarter multiples so that `r == ±t` ties occur.
    fn value() -> impl Strategy<Value = f32> {
        use proptest::num::f32::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
        prop_oneof![
            -2.0f32..2.0,
            (-8i32..=8).prop_map(|k| k as f32 * 0.25),
            POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO,
        ]
    }

    /// Gradient and old residual of the same length, 0..100.
    fn grad_and_residual() -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
        (0usize..100).prop_flat_map(|n| {
            (
                proptest::collection::vec(value(), n),
                proptest::collection::vec(value(), n),
            )
        })
    }

    fn two_bit_threshold() -> impl Strategy<Value = f32> {
        prop_oneof![Just(0.5f32), 1e-3f32..10.0]
    }

    fn one_bit_threshold() -> impl Strategy<Value = f32> {
        prop_oneof![Just(0.0f32), Just(0.5f32), Just(-0.5f32), -10.0f32..10.0]
    }

    /// Pushes once; returns (old residual + grad in f32, words, dequantised, new residual).
    fn push(c: Compression, grad: &[f32], old: &[f32]) -> (Vec<f32>, Vec<u32>, Vec<f32>, Vec<f32>) {
        let sum: Vec<f32> = old.iter().zip(grad).map(|(r, g)| r + g).collect();
        let mut residual = old.to_vec();
        let words = c.quantize(grad, &mut residual).unwrap();
        let deq = c.dequantize(&words, grad.len()).unwrap();
        (sum, words, deq, residual)
    }

    /// What the rule subtracts from `r + g` is exactly the dequantised value, in f32.
    fn assert_error_feedback(sum: &[f32], deq: &[f32], residual: &[f32]) {
        let expected: Vec<f32> = sum.iter().zip(deq).map(|(s, d)| s - d).collect();
        assert_bits_eq(residual, &expected);
    }

    /// The reference packer of MXNet master's tests: a bit string in element order, each 32-bit
    /// chunk read as a big-endian number and then byte-reversed into a little-endian word.
    fn reference_pack(mut bits: Vec<bool>) -> Vec<u32> {
        while bits.len() % 32 != 0 {
            bits.push(false);
        }
        bits.chunks(32)
            .map(|chunk| chunk.iter().fold(0u32, |acc, &b| (acc << 1) | u32::from(b)))
            .map(u32::swap_bytes)
            .collect()
    }

    fn reference_bits(c: Compression, sum: &[f32]) -> Vec<bool> {
        let t = c.threshold;
        let element_bits = |&s: &f32| match c.kind {
            CompressionType::TwoBit if s >= t => vec![true, true],
            CompressionType::TwoBit if s <= -t => vec![true, false],
            CompressionType::TwoBit => vec![false, false],
            CompressionType::OneBit => vec![s > t],
        };
        sum.iter().flat_map(element_bits).collect()
    }

    /// `compressed_words(n)` words, and every bit past the last element's code is 0.
    fn check_word_count_and_zero_tail(
        c: Compression,
        grad: &[f32],
        old: &[f32],
    ) -> std::result::Result<(), TestCaseError> {
        let (_, words, _, _) = push(c, grad, old);
        prop_assert_eq!(words.len(), c.compressed_words(grad.len()));
        let bits_per_element = match c.kind {
            CompressionType::TwoBit => 2,
            CompressionType::OneBit => 1,
        };
        let used_bits = bits_per_element * grad.len();
        let bytes = words_to_bytes(&words);
        for (k, byte) in bytes.iter().enumerate() {
            // Codes fill each byte from its MSB, so the unused bits of a byte are its low ones.
            let unused = (8 * (k + 1)).saturating_sub(used_bits).min(8);
            let mask = ((1u32 << unused) - 1) as u8;
            prop_assert_eq!(byte & mask, 0, "byte {} of {:x?}", k, bytes);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn r38_prop_two_bit_error_feedback(
            (grad, old) in grad_and_residual(),
            t in two_bit_threshold(),
        ) {
            let (sum, _, deq, residual) = push(two_bit(t), &grad, &old);
            assert_error_feedback(&sum, &deq, &residual);
            for (s, d) in sum.iter().zip(&deq) {
                prop_assert!(*d == 0.0 || d.abs() == t);
                prop_assert_eq!(*d == t, *s >= t);
                prop_assert_eq!(*d == -t, *s <= -t);
            }
        }

        #[test]
        fn r40_prop_one_bit_error_feedback(
            (grad, old) in grad_and_residual(),
            t in one_bit_threshold(),
        ) {
            let (sum, _, deq, residual) = push(one_bit(t), &grad, &old);
            assert_error_feedback(&sum, &deq, &residual);
            for (s, d) in sum.iter().zip(&deq) {
                prop_assert!(*d == 1.0 || *d == -1.0);
                prop_assert_eq!(*d == 1.0, *s > t);
            }
        }

        #[test]
        fn r39_prop_bytes_round_trip(words in proptest::collection::vec(any::<u32>(), 0..50)) {
            let bytes = words_to_bytes(&words);
            prop_assert_eq!(bytes.len(), 4 * words.len());
            prop_assert_eq!(bytes_to_words(&bytes).unwrap(), words);
        }

        #[test]
        fn r39_prop_two_bit_word_count_and_zero_tail(
            (grad, old) in grad_and_residual(),
            t in two_bit_threshold(),
        ) {
            check_word_count_and_zero_tail(two_bit(t), &grad, &old)?;
        }

        #[test]
        fn r41_prop_one_bit_word_count_and_zero_tail(
            (grad, old) in grad_and_residual(),
            t in one_bit_threshold(),
        ) {
            check_word_count_and_zero_tail(one_bit(t), &grad, &old)?;
        }

        #[test]
        fn r39_prop_two_bit_matches_reference_packer(
            (grad, old) in grad_and_residual(),
            t in two_bit_threshold(),
        ) {
            let (sum, words, _, _) = push(two_bit(t), &grad, &old);
            prop_assert_eq!(words, reference_pack(reference_bits(two_bit(t), &sum)));
        }

        #[test]
        fn r41_prop_one_bit_matches_reference_packer(
            (grad, old) in grad_and_residual(),
            t in one_bit_threshold(),
        ) {
            let (sum, words, _, _) = push(one_bit(t), &grad, &old);
            prop_assert_eq!(words, reference_pack(reference_bits(one_bit(t), &sum)));
        }
    }
}
