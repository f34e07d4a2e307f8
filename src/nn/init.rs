//! Seeded random numbers for weight initialisation (LoRA's A, sampling): the data module's
//! SplitMix64, with the float draws initialisation needs.

pub use crate::util::SplitMix64 as Rng;

impl Rng {
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [-bound, bound).
    pub fn uniform(&mut self, n: usize, bound: f32) -> Vec<f32> {
        (0..n).map(|_| ((self.next_f64() * 2.0 - 1.0) * bound as f64) as f32).collect()
    }

    /// Normal(0, std) by Box–Muller.
    pub fn normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1 = self.next_f64().max(1e-300);
                let u2 = self.next_f64();
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std as f64) as f32
            })
            .collect()
    }
}
