//! Stable 64-bit hashes for curation: the same bytes give the same value on every run, machine
//! and Rust version, so content hashes can be stored and compared across runs. std's `RandomState`
//! is seeded per process and `DefaultHasher`'s algorithm may change between releases, so neither
//! is used here.

/// FNV-1a, 64-bit (Fowler, Noll, Vo). Simple and stable; its low bits mix poorly, which is why
/// values that feed MinHash go through [`mix64`] too.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |h, &b| (h ^ b as u64).wrapping_mul(PRIME))
}

/// The SplitMix64 finalizer: a bijection on u64 whose every output bit depends on every input
/// bit. Folding `h = mix64(h ^ x)` over a sequence gives an order-sensitive hash of it.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_published_vectors() {
        // Test vectors from the FNV reference (isthe.com/chongo/tech/comp/fnv).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn mix64_is_a_fixed_function() {
        // Pinned so a change to the constants (which would silently change every stored
        // signature) fails here.
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
        assert_ne!(mix64(2), mix64(3));
    }
}
