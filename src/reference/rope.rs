//! RoPE with rotate_half pairing. x [B, T, H, D]; angles [P, R/2] (from kernels::rope::angles_from)
//! where R ≤ D dims rotate (partial rotary) and the rest pass through.

/// Rotates by +angle (forward) or −angle (`inverse`, which is also the backward, since a
/// rotation's transpose is its inverse). `positions[b*T + t]` gives each token's position.
pub fn apply(
    x: &[f64],
    dims: (usize, usize, usize, usize),
    angles: &[f64],
    positions: &[usize],
    inverse: bool,
) -> Vec<f64> {
    apply_partial(x, dims, dims.3, angles, 1.0, positions, inverse)
}

/// The first `rot_dim` dims of each head rotate, scaled by `factor` (the cos and sin tables'
/// attention factor); dims `rot_dim..D` pass through. The backward (`inverse`) is the transpose:
/// the same factor, the angle negated, the pass-through copied.
pub fn apply_partial(
    x: &[f64],
    (b, t, h, d): (usize, usize, usize, usize),
    rot_dim: usize,
    angles: &[f64],
    factor: f64,
    positions: &[usize],
    inverse: bool,
) -> Vec<f64> {
    let half = rot_dim / 2;
    let mut out = x.to_vec();
    for bi in 0..b {
        for ti in 0..t {
            let pos = positions[bi * t + ti];
            for hi in 0..h {
                let row = ((bi * t + ti) * h + hi) * d;
                for i in 0..half {
                    let a = angles[pos * half + i];
                    let (c, s) = (factor * a.cos(), factor * if inverse { -a.sin() } else { a.sin() });
                    out[row + i] = x[row + i] * c - x[row + i + half] * s;
                    out[row + i + half] = x[row + i + half] * c + x[row + i] * s;
                }
            }
        }
    }
    out
}
