//! RoPE with rotate_half pairing. x [B, T, H, D]; angles [P, D/2] (from kernels::rope::angles).

/// Rotates by +angle (forward) or −angle (`inverse`, which is also the backward, since a
/// rotation's transpose is its inverse). `positions[b*T + t]` gives each token's position.
pub fn apply(
    x: &[f64],
    (b, t, h, d): (usize, usize, usize, usize),
    angles: &[f64],
    positions: &[usize],
    inverse: bool,
) -> Vec<f64> {
    let half = d / 2;
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for ti in 0..t {
            let pos = positions[bi * t + ti];
            for hi in 0..h {
                let row = ((bi * t + ti) * h + hi) * d;
                for i in 0..half {
                    let a = angles[pos * half + i];
                    let (c, s) = (a.cos(), if inverse { -a.sin() } else { a.sin() });
                    out[row + i] = x[row + i] * c - x[row + i + half] * s;
                    out[row + i + half] = x[row + i + half] * c + x[row + i] * s;
                }
            }
        }
    }
    out
}
