//! A fast hasher for the key table. Keys come from the caller, but the table is private to one
//! store and a key's slot is found once per call, so a multiply-rotate hash (FxHash's) is safe
//! enough here and several times cheaper than SipHash for the many small keys of a large call.

use std::hash::{BuildHasherDefault, Hasher};

/// FxHash: one multiply and rotate per word.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_i64(&mut self, n: i64) {
        self.add(n as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

/// The key table's hasher builder.
pub(crate) type BuildKeyHasher = BuildHasherDefault<KeyHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use kvstore_spec::Key;
    use std::collections::HashMap;

    #[test]
    fn keys_of_both_kinds_find_their_entries() {
        let mut table: HashMap<Key, usize, BuildKeyHasher> = HashMap::default();
        for i in 0..1000 {
            table.insert(Key::Int(i - 500), i as usize);
            table.insert(Key::Str(format!("k{i}")), i as usize);
        }
        assert_eq!(table.len(), 2000);
        assert_eq!(table.get(&Key::Int(-500)), Some(&0));
        assert_eq!(table.get(&Key::Str("k999".into())), Some(&999));
        assert_eq!(table.get(&Key::Str("k1000".into())), None);
    }
}
