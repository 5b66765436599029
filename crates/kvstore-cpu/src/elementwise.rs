//! The driver the optimizer kernels other than SGD share: argument checks, then a per-element
//! rule run over the weight, its state buffers and the gradient, split across the rayon pool
//! above the parallel threshold (see [`par`](crate::par)).
//!
//! A rule updates each element from that element's weight, gradient and state alone, so the
//! way the buffers are cut never changes a result.

use crate::par;
use crate::{check_in_range, check_increasing, check_len, rows_len, table_rows, KernelError};

/// One optimizer's per-element update over `K` state buffers, all element-aligned.
pub(crate) trait Rule<const K: usize>: Sync {
    /// Elements whose gradient is given: `g` holds one gradient element per weight element.
    fn present(&self, w: &mut [f32], g: &[f32], s: [&mut [f32]; K]);

    /// Elements of rows a row_sparse gradient does not list, for the rules that update every
    /// element (the specification's dense gradient holds `+0.0` there).
    fn absent(&self, w: &mut [f32], s: [&mut [f32]; K]);
}

/// The gradient a kernel is given.
#[derive(Clone, Copy)]
pub(crate) enum Grad<'a> {
    /// One element per weight element.
    Dense(&'a [f32]),
    /// The listed rows of a row_sparse gradient (strictly increasing `ids`), in `ids` order.
    Rows {
        row_len: usize,
        ids: &'a [i64],
        rows: &'a [f32],
        /// Only the listed rows are updated; otherwise the others are too, through
        /// [`Rule::absent`].
        lazy: bool,
    },
}

/// Checks every length and id, then runs `rule`. On an error nothing has been written.
///
/// `names` names the state buffers in length errors.
pub(crate) fn run<R: Rule<K>, const K: usize>(
    rule: &R,
    weight: &mut [f32],
    grad: Grad<'_>,
    slots: [&mut [f32]; K],
    names: [&'static str; K],
) -> Result<(), KernelError> {
    let n = weight.len();
    match grad {
        Grad::Dense(g) => {
            check_len("grad", n, g.len())?;
            check_slots(n, &slots, names)?;
            let piece = Piece {
                w: weight,
                s: slots,
                g: PieceGrad::Dense(g),
            };
            match par::chunk_len(n, 1) {
                None => serial(rule, piece),
                Some(chunk) => split_dense(rule, piece, chunk),
            }
        }
        Grad::Rows {
            row_len,
            ids,
            rows,
            lazy,
        } => {
            let table = table_rows("weight", n, row_len)?;
            check_len(
                "grad_rows",
                rows_len("ids", ids.len(), row_len)?,
                rows.len(),
            )?;
            check_slots(n, &slots, names)?;
            check_increasing("ids", ids)?;
            check_in_range(ids, table)?;
            let Some(table) = table else {
                // `row_len == 0`: the weight is empty and there is nothing to update.
                return Ok(());
            };
            let work = if lazy { ids.len() } else { table };
            let rpc = par::rows_per_chunk(work, row_len).unwrap_or(usize::MAX);
            let piece = Piece {
                w: weight,
                s: slots,
                g: PieceGrad::Rows {
                    first: 0,
                    row_len,
                    ids,
                    rows,
                    lazy,
                },
            };
            split_rows(rule, piece, rpc);
        }
    }
    Ok(())
}

fn check_slots<const K: usize>(
    n: usize,
    slots: &[&mut [f32]; K],
    names: [&'static str; K],
) -> Result<(), KernelError> {
    for (s, name) in slots.iter().zip(names) {
        check_len(name, n, s.len())?;
    }
    Ok(())
}

/// A part of the weight, of every state buffer (aligned with it) and of the gradient.
struct Piece<'a, const K: usize> {
    w: &'a mut [f32],
    s: [&'a mut [f32]; K],
    g: PieceGrad<'a>,
}

enum PieceGrad<'a> {
    Dense(&'a [f32]),
    /// The piece's weight starts at row `first`; `ids` are the listed rows inside the piece.
    Rows {
        first: usize,
        row_len: usize,
        ids: &'a [i64],
        rows: &'a [f32],
        lazy: bool,
    },
}

/// Every buffer of `s` cut at `at` (at most the length of each).
fn split_slots<'a, const K: usize>(
    s: [&'a mut [f32]; K],
    at: usize,
) -> ([&'a mut [f32]; K], [&'a mut [f32]; K]) {
    let mut left: [&'a mut [f32]; K] = std::array::from_fn(|_| <&mut [f32]>::default());
    let mut right: [&'a mut [f32]; K] = std::array::from_fn(|_| <&mut [f32]>::default());
    for (i, x) in s.into_iter().enumerate() {
        let (l, r) = x.split_at_mut(at);
        left[i] = l;
        right[i] = r;
    }
    (left, right)
}

/// Halves a dense piece on chunk boundaries until each part has at most `chunk` elements.
fn split_dense<R: Rule<K>, const K: usize>(rule: &R, piece: Piece<'_, K>, chunk: usize) {
    let n = piece.w.len();
    let PieceGrad::Dense(g) = piece.g else {
        return serial(rule, piece);
    };
    if n <= chunk {
        return serial(rule, piece);
    }
    let at = n.div_ceil(chunk) / 2 * chunk;
    let (w_l, w_r) = piece.w.split_at_mut(at);
    let (s_l, s_r) = split_slots(piece.s, at);
    let (g_l, g_r) = g.split_at(at);
    let left = Piece {
        w: w_l,
        s: s_l,
        g: PieceGrad::Dense(g_l),
    };
    let right = Piece {
        w: w_r,
        s: s_r,
        g: PieceGrad::Dense(g_r),
    };
    rayon::join(
        || split_dense(rule, left, chunk),
        || split_dense(rule, right, chunk),
    );
}

/// Halves a row piece between rows until it has at most `rpc` rows of work: listed rows for a
/// lazy update, every row otherwise.
fn split_rows<R: Rule<K>, const K: usize>(rule: &R, piece: Piece<'_, K>, rpc: usize) {
    let PieceGrad::Rows {
        first,
        row_len,
        ids,
        rows,
        lazy,
    } = piece.g
    else {
        return serial(rule, piece);
    };
    let table = piece.w.len() / row_len.max(1);
    let work = if lazy { ids.len() } else { table };
    if work <= rpc || table < 2 {
        return serial(rule, piece);
    }
    // The first row of the right half: a listed row (lazy) or the middle row.
    let cut = if lazy {
        ids[ids.len() / 2] as usize
    } else {
        first + table / 2
    };
    let k = ids.partition_point(|&id| (id as usize) < cut);
    let at = (cut - first) * row_len;
    let (w_l, w_r) = piece.w.split_at_mut(at);
    let (s_l, s_r) = split_slots(piece.s, at);
    let (ids_l, ids_r) = ids.split_at(k);
    let (g_l, g_r) = rows.split_at(k * row_len);
    let left = Piece {
        w: w_l,
        s: s_l,
        g: PieceGrad::Rows {
            first,
            row_len,
            ids: ids_l,
            rows: g_l,
            lazy,
        },
    };
    let right = Piece {
        w: w_r,
        s: s_r,
        g: PieceGrad::Rows {
            first: cut,
            row_len,
            ids: ids_r,
            rows: g_r,
            lazy,
        },
    };
    rayon::join(
        || split_rows(rule, left, rpc),
        || split_rows(rule, right, rpc),
    );
}

/// Runs `rule` over a piece on the calling thread.
fn serial<R: Rule<K>, const K: usize>(rule: &R, piece: Piece<'_, K>) {
    let Piece { w, mut s, g } = piece;
    match g {
        PieceGrad::Dense(g) => rule.present(w, g, s),
        PieceGrad::Rows {
            first,
            row_len,
            ids,
            rows,
            lazy,
        } => {
            // Elements before `done` are updated (or, lazily, skipped).
            let mut done = 0;
            for (&id, g) in ids.iter().zip(rows.chunks_exact(row_len)) {
                let start = (id as usize - first) * row_len;
                let end = start + row_len;
                if !lazy && start > done {
                    rule.absent(&mut w[done..start], sub(&mut s, done, start));
                }
                rule.present(&mut w[start..end], g, sub(&mut s, start, end));
                done = end;
            }
            if !lazy && done < w.len() {
                let n = w.len();
                rule.absent(&mut w[done..], sub(&mut s, done, n));
            }
        }
    }
}

/// Elements `start..end` of every state buffer.
fn sub<'b, const K: usize>(
    s: &'b mut [&mut [f32]; K],
    start: usize,
    end: usize,
) -> [&'b mut [f32]; K] {
    s.each_mut().map(|x| &mut x[start..end])
}

/// `x` clipped to `[-c, c]` as MXNet's `clip::Map` (and the specification) does it: `c` above,
/// `-c` below, anything else (a NaN too) kept. `c = +inf` keeps every value: that is how a
/// kernel without clipping runs the same code.
#[inline(always)]
pub(crate) fn clip(x: f32, c: f32) -> f32 {
    if x > c {
        c
    } else if x < -c {
        -c
    } else {
        x
    }
}

/// The clip bound of an optional clip: `+inf` (no clipping) for `None`.
pub(crate) fn bound(c: Option<f32>) -> f32 {
    c.unwrap_or(f32::INFINITY)
}
