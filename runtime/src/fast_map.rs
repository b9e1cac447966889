//! A hash map for small integer keys (atom indices, lattice shifts) on the hot path of
//! building a system: the standard library's SipHash resists crafted keys, which these are
//! not, and took a tenth of a small model's neighbour-list time.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// `HashMap` with [`IntHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// A multiply-rotate hash (the scheme of rustc's FxHasher): one multiply per word.
#[derive(Default, Clone, Copy)]
pub struct IntHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl IntHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(SEED);
    }
}

impl Hasher for IntHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }

    #[inline]
    fn write_i64(&mut self, v: i64) {
        self.add(v as u64);
    }

    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.add(v as u64);
    }

    #[inline]
    fn write_i32(&mut self, v: i32) {
        self.add(v as u32 as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_differ_in_one_component_hash_apart() {
        let mut m: FastMap<(usize, [i64; 3]), i32> = FastMap::default();
        let mut n = 0;
        for j in 0..50usize {
            for a in -2..=2i64 {
                for b in -2..=2i64 {
                    m.insert((j, [a, b, -a]), n);
                    n += 1;
                }
            }
        }
        assert_eq!(m.len(), 50 * 25);
        // Inserted as number j * 25 + (a + 2) * 5 + (b + 2).
        assert_eq!(m[&(7, [1, -2, -1])], 190);
    }
}
