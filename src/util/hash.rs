//! A stable 64-bit hash for cache keys and fingerprints.

/// A 64-bit hash over words, each folded in with SplitMix64's finaliser: stable across Rust
/// versions and platforms (std's hasher is promised neither), used for cache keys and the
/// fingerprint of a tuning study's search space.
pub struct Hash64(pub u64);

impl Default for Hash64 {
    fn default() -> Self {
        Hash64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hash64 {
    pub fn u64(&mut self, x: u64) {
        let mut z = (self.0 ^ x).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        self.0 = z ^ (z >> 31);
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        for &x in b {
            self.u64(x as u64);
        }
    }
}
