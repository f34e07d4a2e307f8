//! 2-D convolution, NCHW, with stride, padding, dilation and groups (PyTorch's `nn.Conv2d`).
//!
//! # Shapes
//! N batch, C input channels, H×W input size, O output channels, G groups, KH×KW kernel,
//! OH×OW output size. x `[N, C, H, W]`, w `[O, C/G, KH, KW]`, bias `[O]`, y `[N, O, OH, OW]`.
//! Output channel o of group g = o / (O/G) reads input channels g·C/G .. (g+1)·C/G.
//! y[n, o, i, j] = bias[o] + Σ_{c, a, b} w[o, c, a, b] · x[n, g·C/G + c, i·s − p + a·d, j·s − p + b·d]
//! (reads outside the image are zero).

use std::fmt;

/// The sizes of one convolution: everything the kernels and the reference need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    /// Vertical and horizontal stride.
    pub stride: (usize, usize),
    /// Zero rows above and columns left of the image (what index arithmetic needs).
    pub pad_begin: (usize, usize),
    /// Zero rows below and columns right of it; equal to `pad_begin` for PyTorch's `padding`,
    /// one more for TensorFlow's "same" padding at an even size and stride 2.
    pub pad_end: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Conv2dGeometry {
    /// A square-kernel convolution with PyTorch's symmetric `padding`, no dilation, 1 group.
    pub fn new(n: usize, c_in: usize, hw: (usize, usize), c_out: usize, k: usize, stride: usize, pad: usize) -> Self {
        Conv2dGeometry {
            n,
            c_in,
            h: hw.0,
            w: hw.1,
            c_out,
            kh: k,
            kw: k,
            stride: (stride, stride),
            pad_begin: (pad, pad),
            pad_end: (pad, pad),
            dilation: (1, 1),
            groups: 1,
        }
    }

    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = (d, d);
        self
    }

    /// Output height and width; 0 when the (dilated) kernel does not fit the padded image.
    pub fn out_hw(&self) -> (usize, usize) {
        let size = |len: usize, pb: usize, pe: usize, d: usize, k: usize, s: usize| {
            let span = d * (k - 1) + 1;
            let padded = len + pb + pe;
            if k == 0 || s == 0 || padded < span { 0 } else { (padded - span) / s + 1 }
        };
        (
            size(self.h, self.pad_begin.0, self.pad_end.0, self.dilation.0, self.kh, self.stride.0),
            size(self.w, self.pad_begin.1, self.pad_end.1, self.dilation.1, self.kw, self.stride.1),
        )
    }

    pub fn x_shape(&self) -> [usize; 4] {
        [self.n, self.c_in, self.h, self.w]
    }

    pub fn w_shape(&self) -> [usize; 4] {
        [self.c_out, self.c_in / self.groups.max(1), self.kh, self.kw]
    }

    pub fn y_shape(&self) -> [usize; 4] {
        let (oh, ow) = self.out_hw();
        [self.n, self.c_out, oh, ow]
    }

    /// Depthwise: one filter per channel (groups = C = O), the direct kernel's case.
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.c_in && self.groups == self.c_out
    }

    /// Multiply-adds × 2 of the forward pass (each backward does the same amount).
    pub fn flops(&self) -> f64 {
        let (oh, ow) = self.out_hw();
        2.0 * (self.n * self.c_out * oh * ow * (self.c_in / self.groups.max(1)) * self.kh * self.kw) as f64
    }

    /// What is wrong with these sizes, if anything (for a clear error before any kernel runs).
    pub fn problem(&self) -> Option<String> {
        let (oh, ow) = self.out_hw();
        if self.groups == 0 || !self.c_in.is_multiple_of(self.groups) || !self.c_out.is_multiple_of(self.groups) {
            return Some(format!(
                "{} groups do not divide {} input and {} output channels",
                self.groups, self.c_in, self.c_out
            ));
        }
        if [self.stride.0, self.stride.1, self.dilation.0, self.dilation.1, self.kh, self.kw].contains(&0) {
            return Some("kernel size, stride and dilation must be at least 1".into());
        }
        if oh == 0 || ow == 0 {
            return Some(format!(
                "a {}x{} kernel does not fit a {}x{} input with this padding",
                self.kh, self.kw, self.h, self.w
            ));
        }
        None
    }
}

impl fmt::Display for Conv2dGeometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{}x{}x{} k{}x{} s{} -> {}",
            self.n, self.c_in, self.h, self.w, self.kh, self.kw, self.stride.0, self.c_out
        )?;
        if self.groups > 1 {
            write!(f, " g{}", self.groups)?;
        }
        Ok(())
    }
}

/// The input position that output position `o` reads with kernel tap `k`, if inside the image.
fn input_pos(o: usize, k: usize, stride: usize, pad: usize, dil: usize, len: usize) -> Option<usize> {
    let p = (o * stride + k * dil) as isize - pad as isize;
    (p >= 0 && (p as usize) < len).then_some(p as usize)
}

/// Calls `f(x index, w index)` for every product in the sum for output `[n, o, i, j]`, in the
/// order channel, kernel row, kernel column (taps outside the image are skipped).
fn for_each_tap(g: &Conv2dGeometry, (n, o, i, j): (usize, usize, usize, usize), mut f: impl FnMut(usize, usize)) {
    let (cg, og) = (g.c_in / g.groups, g.c_out / g.groups);
    let grp = o / og;
    for c in 0..cg {
        let ci = grp * cg + c;
        for a in 0..g.kh {
            let Some(hi) = input_pos(i, a, g.stride.0, g.pad_begin.0, g.dilation.0, g.h) else {
                continue;
            };
            for b in 0..g.kw {
                let Some(wi) = input_pos(j, b, g.stride.1, g.pad_begin.1, g.dilation.1, g.w) else {
                    continue;
                };
                f(((n * g.c_in + ci) * g.h + hi) * g.w + wi, ((o * cg + c) * g.kh + a) * g.kw + b);
            }
        }
    }
}

/// y = conv(x, w) + bias. x `[N, C, H, W]`, w `[O, C/G, KH, KW]`, bias `[O]` → y `[N, O, OH, OW]`.
pub fn forward(g: &Conv2dGeometry, x: &[f64], w: &[f64], bias: Option<&[f64]>) -> Vec<f64> {
    let (oh, ow) = g.out_hw();
    let mut y = vec![0.0; g.n * g.c_out * oh * ow];
    for n in 0..g.n {
        for o in 0..g.c_out {
            for i in 0..oh {
                for j in 0..ow {
                    let mut s = bias.map_or(0.0, |b| b[o]);
                    for_each_tap(g, (n, o, i, j), |xi, wk| s += w[wk] * x[xi]);
                    y[((n * g.c_out + o) * oh + i) * ow + j] = s;
                }
            }
        }
    }
    y
}

/// Gradients for upstream dy `[N, O, OH, OW]`: (dx `[N, C, H, W]`, dw `[O, C/G, KH, KW]`,
/// dbias `[O]`). Every product of the forward sum is visited once and its two partials added.
pub fn backward(g: &Conv2dGeometry, x: &[f64], w: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (oh, ow) = g.out_hw();
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let mut db = vec![0.0; g.c_out];
    for n in 0..g.n {
        for o in 0..g.c_out {
            for i in 0..oh {
                for j in 0..ow {
                    let d = dy[((n * g.c_out + o) * oh + i) * ow + j];
                    db[o] += d;
                    for_each_tap(g, (n, o, i, j), |xi, wk| {
                        dx[xi] += d * w[wk];
                        dw[wk] += d * x[xi];
                    });
                }
            }
        }
    }
    (dx, dw, db)
}
