//! The chunk-size policy: when a kernel goes parallel, and how it cuts its input.
//!
//! Below [`PARALLEL_THRESHOLD`] elements a kernel runs serially on the calling thread (rayon's
//! fork-join costs more than the work). Above it, the input is cut into chunks of about
//! [`CHUNK_ELEMENTS`] elements that run on the current rayon pool (install a pool with
//! `rayon::ThreadPool::install` to bound the threads). Codec chunks are multiples of the packed
//! word size (16 elements for 2-bit, 32 for 1-bit), so each chunk owns whole words; row kernels
//! cut between rows.
//!
//! The cut never changes a result: every element goes through the same operations whichever
//! chunk it lands in.

/// Element count from which a kernel splits its work across threads.
pub const PARALLEL_THRESHOLD: usize = 1 << 16;

/// Target number of elements per parallel chunk.
pub const CHUNK_ELEMENTS: usize = 1 << 16;

/// Elements per serial block inside a chunk: small enough that a block of the output stays in
/// the L1 cache while every input is added to it.
pub(crate) const BLOCK_ELEMENTS: usize = 1 << 10;

/// The parallel chunk length for `n` elements whose chunks must be multiples of `align`
/// (a power of two or any positive number), or `None` when `n` is small enough to run
/// serially.
pub fn chunk_len(n: usize, align: usize) -> Option<usize> {
    if n < PARALLEL_THRESHOLD || n <= CHUNK_ELEMENTS {
        return None;
    }
    let align = align.max(1);
    Some((CHUNK_ELEMENTS / align).max(1) * align)
}

/// The number of rows per parallel chunk for `rows` rows of `row_len` elements, or `None` when
/// the rows are few or small enough to run serially.
pub fn rows_per_chunk(rows: usize, row_len: usize) -> Option<usize> {
    let n = rows.saturating_mul(row_len);
    if row_len == 0 || rows < 2 || n < PARALLEL_THRESHOLD || n <= CHUNK_ELEMENTS {
        return None;
    }
    Some((CHUNK_ELEMENTS / row_len).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_inputs_run_serially() {
        assert_eq!(chunk_len(0, 16), None);
        assert_eq!(chunk_len(PARALLEL_THRESHOLD - 1, 16), None);
        assert_eq!(rows_per_chunk(10, 10), None);
        assert_eq!(rows_per_chunk(1, 1 << 20), None);
        assert_eq!(rows_per_chunk(1 << 20, 0), None);
    }

    #[test]
    fn chunks_are_aligned_to_whole_words() {
        for align in [1, 16, 32, 48] {
            let c = chunk_len(1 << 20, align).unwrap_or(0);
            assert!(c > 0 && c % align == 0, "{c} {align}");
        }
    }

    #[test]
    fn row_chunks_hold_whole_rows() {
        assert_eq!(rows_per_chunk(1 << 20, 1), Some(CHUNK_ELEMENTS));
        assert_eq!(rows_per_chunk(1 << 10, 1 << 17), Some(1));
        assert_eq!(rows_per_chunk(1 << 12, 100), Some(CHUNK_ELEMENTS / 100));
    }
}
