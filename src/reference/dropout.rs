//! Dropout with the kernel's counter-based mask, bit for bit. x, out [n].

fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// Whether element `i` survives: hash(seed, step, i) ≥ threshold (= p·2³²).
pub fn keep(seed: u32, step: u32, i: u32, threshold: u32) -> bool {
    pcg(i ^ pcg(seed ^ pcg(step))) >= threshold
}

/// x·mask/(1−p). The same call on dy is the backward.
pub fn apply(x: &[f64], p: f64, seed: u32, step: u32) -> Vec<f64> {
    let threshold = (p * 4294967296.0).round().min(u32::MAX as f64) as u32;
    x.iter()
        .enumerate()
        .map(|(i, &v)| if keep(seed, step, i as u32, threshold) { v / (1.0 - p) } else { 0.0 })
        .collect()
}
