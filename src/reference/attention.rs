//! Attention, materialising the T×T probabilities (the reference can afford it).
//!
//! Shapes: q, out, dout, dq [B, T, Hq, D]; k, v, dk, dv [B, T, Hkv, D]; key_mask [B, T]
//! (true = attend); lse [B, Hq, T]. Query head h uses key/value head h / (Hq/Hkv).
//! A sliding window W (causal only) lets query i see keys i−W+1 ..= i. With `segments` [B, T]
//! (sequence packing: each token's example, 0 = padding) a query of segment s ≠ 0 sees only keys
//! of segment s; a padding query (0) sees every allowed key.

pub struct Dims {
    pub b: usize,
    pub t: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub causal: bool,
    pub scale: f64,
    pub window: Option<usize>,
    pub segments: Option<Vec<u32>>,
}

impl Dims {
    fn qi(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.t + t) * self.hq + h) * self.d
    }
    fn ki(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.t + t) * self.hkv + h) * self.d
    }
    fn allowed(&self, mask: Option<&[bool]>, b: usize, i: usize, j: usize) -> bool {
        let in_window = !self.causal || self.window.is_none_or(|w| j + w > i);
        let same_example =
            self.segments.as_ref().is_none_or(|s| s[b * self.t + i] == 0 || s[b * self.t + j] == s[b * self.t + i]);
        !(self.causal && j > i) && in_window && same_example && mask.is_none_or(|m| m[b * self.t + j])
    }
    /// Probabilities of row (b, h, i) over keys j; all zero if no key is allowed.
    fn probs(&self, q: &[f64], k: &[f64], mask: Option<&[bool]>, b: usize, h: usize, i: usize) -> (Vec<f64>, f64) {
        let hk = h / (self.hq / self.hkv);
        let s: Vec<Option<f64>> = (0..self.t)
            .map(|j| {
                self.allowed(mask, b, i, j).then(|| {
                    (0..self.d).map(|d| q[self.qi(b, i, h) + d] * k[self.ki(b, j, hk) + d]).sum::<f64>() * self.scale
                })
            })
            .collect();
        let m = s.iter().flatten().cloned().fold(f64::NEG_INFINITY, f64::max);
        if m == f64::NEG_INFINITY {
            return (vec![0.0; self.t], 0.0);
        }
        let sum: f64 = s.iter().flatten().map(|x| (x - m).exp()).sum();
        let probs = s.iter().map(|x| x.map_or(0.0, |x| (x - m).exp() / sum)).collect();
        (probs, m + sum.ln())
    }
}

/// Returns (out, lse).
pub fn forward(dm: &Dims, q: &[f64], k: &[f64], v: &[f64], mask: Option<&[bool]>) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; q.len()];
    let mut lse = vec![0.0; dm.b * dm.hq * dm.t];
    for b in 0..dm.b {
        for h in 0..dm.hq {
            let hk = h / (dm.hq / dm.hkv);
            for i in 0..dm.t {
                let (p, l) = dm.probs(q, k, mask, b, h, i);
                lse[(b * dm.hq + h) * dm.t + i] = l;
                for (j, pj) in p.iter().enumerate() {
                    for d in 0..dm.d {
                        out[dm.qi(b, i, h) + d] += pj * v[dm.ki(b, j, hk) + d];
                    }
                }
            }
        }
    }
    (out, lse)
}

/// Returns (dq, dk, dv). With P the probabilities, dP = dout·vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)):
/// dq = scale·dS·k, dk = scale·dSᵀ·q, dv = Pᵀ·dout.
pub fn backward(
    dm: &Dims,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: Option<&[bool]>,
    dout: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    for b in 0..dm.b {
        for h in 0..dm.hq {
            let hk = h / (dm.hq / dm.hkv);
            for i in 0..dm.t {
                let (p, _) = dm.probs(q, k, mask, b, h, i);
                let dp: Vec<f64> = (0..dm.t)
                    .map(|j| (0..dm.d).map(|d| dout[dm.qi(b, i, h) + d] * v[dm.ki(b, j, hk) + d]).sum())
                    .collect();
                let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for j in 0..dm.t {
                    let ds = p[j] * (dp[j] - delta);
                    for d in 0..dm.d {
                        dq[dm.qi(b, i, h) + d] += dm.scale * ds * k[dm.ki(b, j, hk) + d];
                        dk[dm.ki(b, j, hk) + d] += dm.scale * ds * q[dm.qi(b, i, h) + d];
                        dv[dm.ki(b, j, hk) + d] += p[j] * dout[dm.qi(b, i, h) + d];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}
