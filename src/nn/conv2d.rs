//! A 2-D convolution layer (PyTorch's `nn.Conv2d`, square kernels and symmetric padding as
//! torchvision's models use them).
//!
//! # Shapes
//! x `[N, C, H, W]` → `[N, O, OH, OW]`; weight `[O, C/groups, k, k]`, bias `[O]`.

use crate::autograd::{self, Param, Tape, Var};
use crate::error::{Error, Result};
use crate::kernels::conv2d::Conv2dGeometry;
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
    /// TensorFlow's "SAME" padding instead of `padding`: the output is ⌈size/stride⌉ and the
    /// zeros needed for it are split with the odd one at the end (EfficientNet's
    /// `Conv2dDynamicSamePadding`; its static variant computes the same for its image size).
    pub same: bool,
}

impl Conv2dConfig {
    pub fn new(c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: usize) -> Self {
        Conv2dConfig { c_in, c_out, kernel, stride, padding, groups: 1, same: false }
    }

    /// A convolution with TensorFlow's "SAME" padding.
    pub fn same(c_in: usize, c_out: usize, kernel: usize, stride: usize) -> Self {
        Conv2dConfig { same: true, ..Conv2dConfig::new(c_in, c_out, kernel, stride, 0) }
    }

    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    pub fn weight_shape(&self) -> [usize; 4] {
        [self.c_out, self.c_in / self.groups.max(1), self.kernel, self.kernel]
    }
}

pub struct Conv2d {
    pub config: Conv2dConfig,
    pub weight: Param,
    pub bias: Option<Param>,
}

impl Conv2d {
    /// `path` is the module's name (`layer1.0.conv1`); parameters are `<path>.weight`, `.bias`.
    pub fn new(path: &str, config: Conv2dConfig, weight: Tensor, bias: Option<Tensor>) -> Conv2d {
        Conv2d {
            config,
            weight: Param::new(format!("{path}.weight"), weight),
            bias: bias.map(|b| Param::new(format!("{path}.bias"), b)),
        }
    }

    /// The geometry for an input of shape `[N, C, H, W]`.
    pub fn geometry(&self, x_shape: &[usize]) -> Result<Conv2dGeometry> {
        let c = &self.config;
        match *x_shape {
            [n, ch, h, w] if ch == c.c_in => {
                let mut g =
                    Conv2dGeometry::new(n, c.c_in, (h, w), c.c_out, c.kernel, c.stride, c.padding).groups(c.groups);
                if c.same {
                    let total = |len: usize| {
                        let out = len.div_ceil(c.stride.max(1)).max(1);
                        ((out - 1) * c.stride + c.kernel).saturating_sub(len)
                    };
                    let (ph, pw) = (total(h), total(w));
                    g.pad_begin = (ph / 2, pw / 2);
                    g.pad_end = (ph - ph / 2, pw - pw / 2);
                }
                Ok(g)
            }
            _ => Err(Error::Shape {
                op: "conv2d",
                tensor: "x",
                expected: format!("[N, {}, H, W] for {}", c.c_in, self.weight.name),
                found: x_shape.to_vec(),
            }),
        }
    }

    pub fn forward(&self, tape: &Tape, x: &Var) -> Result<Var> {
        let g = self.geometry(x.shape())?;
        let w = tape.param(&self.weight);
        let b = self.bias.as_ref().map(|b| tape.param(b));
        autograd::conv2d(tape, &g, x, &w, b.as_ref())
    }

    pub fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        std::iter::once(&self.weight).chain(&self.bias).for_each(f);
    }

    pub fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        std::iter::once(&mut self.weight).chain(&mut self.bias).for_each(f);
    }
}
