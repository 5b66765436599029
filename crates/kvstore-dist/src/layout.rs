//! Where a key's data lives (R63): small keys on one server, big dense arrays sliced into one
//! contiguous part per server.

use crate::faults::{Fault, Faults};
use kvstore_spec::{Error, Key, Result};
use std::ops::Range;

/// The default size from which a dense array is sliced across every server (MXNet's
/// `MXNET_KVSTORE_BIGARRAY_BOUND`).
pub const DEFAULT_BIG_ARRAY_BOUND: usize = 1_000_000;

/// One part of a key: the server that holds it and its flat element range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Part {
    /// The server index, in `0..servers`.
    pub server: usize,
    /// The part's elements, as a range of the key's flattened (row-major) elements.
    pub range: Range<usize>,
}

/// How keys map to servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    servers: usize,
    big_array_bound: usize,
    faults: Faults,
}

impl Layout {
    /// `servers` servers; dense arrays of at least `big_array_bound` elements are sliced.
    pub fn new(servers: usize, big_array_bound: usize) -> Result<Layout> {
        if servers == 0 || big_array_bound == 0 {
            return Err(Error::UnsupportedKind {
                kind: "dist".into(),
                reason: format!(
                    "a layout needs at least one server and a positive big-array bound, got \
                     {servers} servers and bound {big_array_bound}"
                ),
            });
        }
        Ok(Layout {
            servers,
            big_array_bound,
            faults: Faults::NONE,
        })
    }

    /// The same layout committing `faults` (model checking only).
    pub fn with_faults(mut self, faults: Faults) -> Layout {
        self.faults = faults;
        self
    }

    /// The number of servers.
    pub fn servers(&self) -> usize {
        self.servers
    }

    /// The server of a key that is not sliced: `(key * 9973) mod S` for int keys (as MXNet), a
    /// stable FNV-1a hash of the name for string keys, so every process agrees (R58).
    pub fn home(&self, key: &Key) -> usize {
        let servers = self.servers as u64;
        let hash = match key {
            Key::Int(k) => (*k as i128 * 9973).rem_euclid(servers as i128) as u64,
            Key::Str(name) => fnv1a(name.as_bytes()) % servers,
        };
        hash as usize
    }

    /// The parts of a key of `numel` elements: sliced when dense and at least the bound, one
    /// part on the key's home server otherwise. Empty slices are left out.
    pub fn parts(&self, key: &Key, numel: usize, dense: bool) -> Vec<Part> {
        if !dense || numel < self.big_array_bound || self.servers == 1 {
            return vec![Part {
                server: self.home(key),
                range: 0..numel,
            }];
        }
        let bound = |i: usize| slice_bound(numel, i, self.servers);
        let off_by_one = self.faults.has(Fault::SliceOffByOne);
        (0..self.servers)
            .map(|server| {
                let mut end = bound(server + 1);
                if off_by_one && server + 1 < self.servers {
                    end += 1;
                }
                Part {
                    server,
                    range: bound(server)..end,
                }
            })
            .filter(|part| !part.range.is_empty())
            .collect()
    }
}

/// `round(n * i / s)`, rounding halves up, in exact integer arithmetic.
fn slice_bound(n: usize, i: usize, s: usize) -> usize {
    let (n, i, s) = (n as u128, i as u128, s as u128);
    ((2 * n * i + s) / (2 * s)) as usize
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn r63_big_arrays_are_sliced_into_contiguous_parts_covering_every_element() {
        let layout = Layout::new(3, 10).unwrap();
        for n in 10..200 {
            let parts = layout.parts(&Key::Int(1), n, true);
            assert_eq!(parts.len(), 3);
            let mut next = 0;
            for (i, part) in parts.iter().enumerate() {
                assert_eq!(part.server, i);
                assert_eq!(part.range.start, next);
                next = part.range.end;
                let exact = n as f64 * (i + 1) as f64 / 3.0;
                assert_eq!(part.range.end, exact.round() as usize, "n={n} i={i}");
            }
            assert_eq!(next, n);
        }
    }

    #[test]
    fn r63_small_and_row_sparse_keys_live_on_their_home_server() {
        let layout = Layout::new(4, 10).unwrap();
        for k in -20..20 {
            let key = Key::Int(k);
            let parts = layout.parts(&key, 9, true);
            assert_eq!(
                parts,
                vec![Part {
                    server: layout.home(&key),
                    range: 0..9
                }]
            );
            assert_eq!(layout.parts(&key, 100, false).len(), 1);
            assert_eq!(layout.home(&key), ((k * 9973).rem_euclid(4)) as usize);
        }
        let name = Key::Str("weight".into());
        assert_eq!(layout.home(&name), layout.home(&Key::Str("weight".into())));
        assert!(Layout::new(0, 1).is_err());
    }
}
