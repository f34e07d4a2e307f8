//! Spatial pooling of NCHW tensors: max-pool (PyTorch's `nn.MaxPool2d`, padding counts as −∞)
//! and global average pooling (`nn.AdaptiveAvgPool2d(1)` + flatten).
//!
//! # Shapes
//! P = N·C planes of H×W. max-pool: x `[P, H, W]` → y and argmax `[P, OH, OW]`, where argmax is
//! the index within the plane (h·W + w) of the value taken. global average: x `[P, H·W]` → `[P]`.

/// The sizes of a max-pool: a k×k window moved by `stride`, `pad` rows/columns of −∞ around.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeometry {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl PoolGeometry {
    /// Output size (PyTorch's floor mode).
    pub fn out_hw(&self) -> (usize, usize) {
        let size = |len: usize| {
            let padded = len + 2 * self.pad;
            if self.k == 0 || self.stride == 0 || padded < self.k { 0 } else { (padded - self.k) / self.stride + 1 }
        };
        (size(self.h), size(self.w))
    }

    /// What is wrong with these sizes, if anything.
    pub fn problem(&self) -> Option<String> {
        let (oh, ow) = self.out_hw();
        if self.k == 0 || self.stride == 0 {
            return Some("kernel size and stride must be at least 1".into());
        }
        // PyTorch's rule: a window must never lie wholly in the padding.
        if 2 * self.pad > self.k {
            return Some(format!("padding {} is more than half the kernel size {}", self.pad, self.k));
        }
        if oh == 0 || ow == 0 {
            return Some(format!("a {0}x{0} window does not fit a {1}x{2} input", self.k, self.h, self.w));
        }
        None
    }
}

/// Returns (y, argmax). Ties keep the first index in row-major window order, as PyTorch does.
pub fn max_pool(g: &PoolGeometry, x: &[f64]) -> (Vec<f64>, Vec<u32>) {
    let (oh, ow) = g.out_hw();
    let mut y = vec![0.0; g.planes * oh * ow];
    let mut arg = vec![0u32; y.len()];
    for p in 0..g.planes {
        for i in 0..oh {
            for j in 0..ow {
                let (mut best, mut at) = (f64::NEG_INFINITY, 0);
                for a in 0..g.k {
                    let hi = (i * g.stride + a) as isize - g.pad as isize;
                    for b in 0..g.k {
                        let wi = (j * g.stride + b) as isize - g.pad as isize;
                        if hi < 0 || wi < 0 || hi as usize >= g.h || wi as usize >= g.w {
                            continue;
                        }
                        let idx = hi as usize * g.w + wi as usize;
                        if x[p * g.h * g.w + idx] > best {
                            (best, at) = (x[p * g.h * g.w + idx], idx);
                        }
                    }
                }
                y[(p * oh + i) * ow + j] = best;
                arg[(p * oh + i) * ow + j] = at as u32;
            }
        }
    }
    (y, arg)
}

/// dx: each output's gradient goes to the input it took (added where windows overlap).
pub fn max_pool_backward(g: &PoolGeometry, argmax: &[u32], dy: &[f64]) -> Vec<f64> {
    let (oh, ow) = g.out_hw();
    let mut dx = vec![0.0; g.planes * g.h * g.w];
    for (o, &d) in dy.iter().enumerate() {
        let p = o / (oh * ow);
        dx[p * g.h * g.w + argmax[o] as usize] += d;
    }
    dx
}

/// Mean over each plane: x `[P, S]` → `[P]`.
pub fn global_avg_pool(x: &[f64], s: usize) -> Vec<f64> {
    x.chunks(s).map(|plane| plane.iter().sum::<f64>() / s as f64).collect()
}

/// dx = dy/S spread over the plane: dy `[P]` → dx `[P, S]`.
pub fn global_avg_pool_backward(dy: &[f64], s: usize) -> Vec<f64> {
    dy.iter().flat_map(|&d| std::iter::repeat_n(d / s as f64, s)).collect()
}
