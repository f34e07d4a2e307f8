//! EfficientNet-Lite (lite0 .. lite4): the EfficientNet without squeeze-excitation, with ReLU6
//! and an unscaled stem and head, with the names of lukemelas' `efficientnet_pytorch` as the
//! `efficientnet-lite-pytorch` package uses them: `_conv_stem`, `_bn0`,
//! `_blocks.{i}._expand_conv|_bn0|_depthwise_conv|_bn1|_project_conv|_bn2`, `_conv_head`,
//! `_bn1`, `_fc`. Mirrors that package's `model.py` and `utils.py` (`efficientnet_lite`,
//! `round_filters`, `round_repeats`).
//!
//! Convolutions use TensorFlow's "SAME" padding computed from the input's size (the package
//! computes it once for its image size, 224 for lite0: the same at that size). Stochastic
//! depth (the package's drop-connect while training) is not applied; dropout before `_fc` is.
//!
//! # Shapes
//! images `[N, 3, H, W]` → stem `[N, 32, H/2, W/2]` → 16 MBConv blocks (lite0) →
//! head `[N, 1280, H/32, W/32]` → pooled `[N, 1280]` → logits `[N, classes]`.

use std::path::Path;

use super::conv_bn::ConvBn;
use crate::autograd::{self, Loss, Module, Param, Tape, Var, WeightLayout};
use crate::error::{Error, Result};
use crate::formats::safetensors::WeightSource;
use crate::gpu::Gpu;
use crate::kernels::elementwise::Activation;
use crate::nn::{BnMode, Conv2dConfig, Linear, Rng};
use crate::tensor::Tensor;

/// One stage of the base network before scaling: (repeats, kernel, stride, expand ratio,
/// input filters, output filters), `efficientnet_lite`'s block strings `r1_k3_s11_e1_i32_o16` ...
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// The scaling of one family member, `efficientnet_params` and `efficientnet_lite`'s globals.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
pub struct EfficientNetLiteConfig {
    pub width_coefficient: f64,
    pub depth_coefficient: f64,
    /// Keep the stem (32) and head (1280) widths and the first and last stages' repeats
    /// unscaled (true for every lite model).
    #[serde(default = "yes")]
    pub fix_head_stem: bool,
    #[serde(default = "thousand")]
    pub num_classes: usize,
    #[serde(default = "dropout")]
    pub dropout_rate: f32,
}

fn yes() -> bool {
    true
}
fn thousand() -> usize {
    1000
}
fn dropout() -> f32 {
    0.2
}

impl EfficientNetLiteConfig {
    /// `efficientnet-lite0` .. `lite4`.
    pub fn lite(n: usize) -> Result<Self> {
        let (w, d, p) = match n {
            0 => (1.0, 1.0, 0.2),
            1 => (1.0, 1.1, 0.2),
            2 => (1.1, 1.2, 0.3),
            3 => (1.2, 1.4, 0.3),
            4 => (1.4, 1.8, 0.3),
            _ => return Err(Error::invalid("efficientnet-lite", format!("lite{n}: kiln knows lite0 .. lite4"))),
        };
        Ok(EfficientNetLiteConfig {
            width_coefficient: w,
            depth_coefficient: d,
            fix_head_stem: true,
            num_classes: 1000,
            dropout_rate: p,
        })
    }

    /// `round_filters`: scale by the width, round to a multiple of 8, never more than 10% down.
    fn filters(&self, f: usize, skip: bool) -> usize {
        if skip {
            return f;
        }
        let scaled = f as f64 * self.width_coefficient;
        let mut new = (8usize).max(((scaled + 4.0) as usize) / 8 * 8);
        if (new as f64) < 0.9 * scaled {
            new += 8;
        }
        new
    }

    /// `round_repeats`.
    fn repeats(&self, r: usize) -> usize {
        (self.depth_coefficient * r as f64).ceil() as usize
    }

    pub fn stem_width(&self) -> usize {
        self.filters(32, self.fix_head_stem)
    }

    pub fn head_width(&self) -> usize {
        self.filters(1280, self.fix_head_stem)
    }

    /// Every block's (kernel, stride, expand ratio, input, output), in order.
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let mut out = Vec::new();
        for (i, &(r, k, s, e, cin, cout)) in STAGES.iter().enumerate() {
            let mut c_in = self.filters(cin, false);
            let c_out = self.filters(cout, false);
            let edge = self.fix_head_stem && (i == 0 || i == STAGES.len() - 1);
            let repeats = if edge { r } else { self.repeats(r) };
            if self.fix_head_stem && i == 0 {
                c_in = 32;
            }
            for j in 0..repeats {
                let (c_in, stride) = if j == 0 { (c_in, s) } else { (c_out, 1) };
                out.push(BlockSpec { kernel: k, stride, expand: e, c_in, c_out, residual: j > 0 });
            }
        }
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    pub kernel: usize,
    pub stride: usize,
    pub expand: usize,
    pub c_in: usize,
    pub c_out: usize,
    /// Whether the input is added to the output. The package (after lukemelas') tests
    /// `stride == 1` on the first block of a stage, where stride is still the list `[1]`, so
    /// only a stage's repeated blocks add their input; TensorFlow's would also add it on a
    /// first block with stride 1 and equal widths, which no lite model has (only scaled-down
    /// variants like the test fixture do).
    pub residual: bool,
}

/// A conv → BN unit with TensorFlow's BN settings, as the package sets them: momentum
/// 1 − 0.99, eps 1e-3.
fn tf_conv_bn(gpu: &Gpu, src: &mut dyn WeightSource, conv: &str, bn: &str, cfg: Conv2dConfig) -> Result<ConvBn> {
    let mut unit = ConvBn::load(gpu, src, conv, bn, cfg)?;
    unit.bn.eps = 1e-3;
    unit.bn.momentum = 0.01;
    Ok(unit)
}

/// conv → BN (→ ReLU6).
fn conv_bn_relu6(unit: &ConvBn, tape: &Tape, x: &Var, bn: BnMode, relu6: bool) -> Result<Var> {
    let y = unit.forward(tape, x, bn)?;
    if relu6 { autograd::activation(tape, Activation::Relu6, &y) } else { Ok(y) }
}

/// Mobile inverted bottleneck: 1×1 expand (when the ratio is not 1), k×k depthwise, 1×1
/// project, and the identity added when the shape is kept.
pub struct MbConv {
    pub spec: BlockSpec,
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
}

impl MbConv {
    fn load(gpu: &Gpu, src: &mut dyn WeightSource, path: &str, spec: BlockSpec) -> Result<MbConv> {
        let hidden = spec.c_in * spec.expand;
        let expand = if spec.expand != 1 {
            let cfg = Conv2dConfig::same(spec.c_in, hidden, 1, 1);
            Some(tf_conv_bn(gpu, src, &format!("{path}._expand_conv"), &format!("{path}._bn0"), cfg)?)
        } else {
            None
        };
        let cfg = Conv2dConfig::same(hidden, hidden, spec.kernel, spec.stride).groups(hidden);
        let depthwise = tf_conv_bn(gpu, src, &format!("{path}._depthwise_conv"), &format!("{path}._bn1"), cfg)?;
        let cfg = Conv2dConfig::same(hidden, spec.c_out, 1, 1);
        let project = tf_conv_bn(gpu, src, &format!("{path}._project_conv"), &format!("{path}._bn2"), cfg)?;
        Ok(MbConv { spec, expand, depthwise, project })
    }

    pub fn forward(&self, tape: &Tape, x: &Var, bn: BnMode) -> Result<Var> {
        let h = match &self.expand {
            Some(e) => conv_bn_relu6(e, tape, x, bn, true)?,
            None => x.clone(),
        };
        let h = conv_bn_relu6(&self.depthwise, tape, &h, bn, true)?;
        let h = conv_bn_relu6(&self.project, tape, &h, bn, false)?;
        if self.spec.residual { autograd::add(tape, &h, x) } else { Ok(h) }
    }

    fn units(&self) -> impl Iterator<Item = &ConvBn> {
        self.expand.iter().chain([&self.depthwise, &self.project])
    }

    fn visit(&self, f: &mut dyn FnMut(&Param)) {
        self.expand.iter().chain([&self.depthwise, &self.project]).for_each(|c| c.visit_params(f));
    }

    fn visit_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        if let Some(e) = &mut self.expand {
            e.visit_params_mut(f);
        }
        self.depthwise.visit_params_mut(f);
        self.project.visit_params_mut(f);
    }
}

pub struct EfficientNetLite {
    pub config: EfficientNetLiteConfig,
    pub stem: ConvBn,
    pub blocks: Vec<MbConv>,
    pub head: ConvBn,
    pub fc: Linear,
    pub bn: BnMode,
    pub head_from_checkpoint: bool,
}

impl EfficientNetLite {
    /// Loads a safetensors checkpoint (a folder's `model.safetensors` or one file) of the
    /// architecture `config`; `num_classes` other than the checkpoint's gives a new `_fc`.
    pub fn load(
        gpu: &Gpu,
        path: &Path,
        mut config: EfficientNetLiteConfig,
        num_classes: Option<usize>,
        bn: BnMode,
        seed: u64,
    ) -> Result<EfficientNetLite> {
        let mut src = crate::formats::weights::open(path)?;
        let stem_cfg = Conv2dConfig::same(3, config.stem_width(), 3, 2);
        let stem = tf_conv_bn(gpu, &mut src, "_conv_stem", "_bn0", stem_cfg)?;
        let specs = config.blocks();
        let mut blocks = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            blocks.push(MbConv::load(gpu, &mut src, &format!("_blocks.{i}"), *spec)?);
        }
        let last = specs.last().map_or(config.stem_width(), |s| s.c_out);
        let features = config.head_width();
        let head = tf_conv_bn(gpu, &mut src, "_conv_head", "_bn1", Conv2dConfig::same(last, features, 1, 1))?;
        let stored = src.shape_of("_fc.weight").map(|s| s.to_vec());
        let k = num_classes.or(stored.as_ref().map(|s| s[0])).unwrap_or(config.num_classes);
        let reuse = stored.as_deref() == Some(&[k, features][..]);
        let fc = if reuse {
            let w = src.tensor(gpu, "_fc.weight", &[k, features])?;
            let b = src.tensor(gpu, "_fc.bias", &[k])?;
            Linear::new("_fc", w, Some(b), WeightLayout::OutIn)
        } else {
            let mut rng = Rng::new(seed ^ 0xEF_F1C1E);
            let bound = 1.0 / (features as f32).sqrt();
            let w = Tensor::from_f32(gpu, &rng.uniform(k * features, bound), &[k, features])?;
            let b = Tensor::from_f32(gpu, &rng.uniform(k, bound), &[k])?;
            Linear::new("_fc", w, Some(b), WeightLayout::OutIn)
        };
        config.num_classes = k;
        src.finish(&|name| name.ends_with("num_batches_tracked") || (!reuse && name.starts_with("_fc.")))?;
        Ok(EfficientNetLite { config, stem, blocks, head, fc, bn, head_from_checkpoint: reuse })
    }

    /// Pooled features `[N, head width]`.
    pub fn features(&self, tape: &Tape, images: &Var) -> Result<Var> {
        let mut x = conv_bn_relu6(&self.stem, tape, images, self.bn, true)?;
        for block in &self.blocks {
            x = block.forward(tape, &x, self.bn)?;
        }
        let x = conv_bn_relu6(&self.head, tape, &x, self.bn, true)?;
        autograd::global_avg_pool(tape, &x)
    }

    pub fn forward(&self, tape: &Tape, images: &Var) -> Result<Var> {
        let pooled = self.features(tape, images)?;
        let pooled = autograd::dropout(tape, &pooled, self.config.dropout_rate)?;
        self.fc.forward(tape, &pooled)
    }

    pub fn loss(&self, tape: &Tape, images: &Var, targets: &[i32]) -> Result<Loss> {
        let logits = self.forward(tape, images)?;
        autograd::cross_entropy(tape, &logits, targets)
    }

    /// Every conv → BN unit, stem first (saving needs the BNs' running statistics).
    pub fn conv_bns(&self) -> Vec<&ConvBn> {
        let blocks = self.blocks.iter().flat_map(MbConv::units);
        std::iter::once(&self.stem).chain(blocks).chain([&self.head]).collect()
    }
}

impl Module for EfficientNetLite {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        self.stem.visit_params(f);
        self.blocks.iter().for_each(|b| b.visit(f));
        self.head.visit_params(f);
        self.fc.visit_params(f);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.stem.visit_params_mut(f);
        self.blocks.iter_mut().for_each(|b| b.visit_mut(f));
        self.head.visit_params_mut(f);
        self.fc.visit_params_mut(f);
    }
}
