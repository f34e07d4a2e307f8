//! ResNet 18/34 (basic blocks) and 50/101/152 (bottlenecks) with torchvision's (and timm's)
//! tensor names: `conv1`, `bn1`, `layer{1..4}.{i}.conv1|bn1|conv2|bn2[|conv3|bn3]`,
//! `layer{s}.0.downsample.0` (1×1 conv) and `.1` (its BN), `fc`. Mirrors
//! `torchvision/models/resnet.py` (v1.5: a bottleneck strides in its 3×3 conv).
//!
//! The architecture is read off the checkpoint: the stem's width from `conv1.weight`
//! `[W, 3, 7, 7]`, the blocks per stage from the `layer{s}.{i}` names, bottleneck or basic from
//! `layer1.0.conv3`; a depth given by the user is checked against it. Every tensor's shape is
//! checked against that architecture. BN's `num_batches_tracked` counters are read by no one.
//!
//! # Shapes
//! images `[N, 3, H, W]` → stem `[N, W, H/4, W/4]` → stages of width W·{1, 2, 4, 8}·expansion,
//! each after the first halving the size → pooled `[N, 8·W·expansion]` → logits `[N, classes]`.

use std::path::Path;

use super::conv_bn::ConvBn;
use crate::autograd::{self, Loss, Module, Param, Tape, Var, WeightLayout};
use crate::error::{Error, Result};
use crate::formats::safetensors::{SafetensorsSource, WeightSource};
use crate::gpu::Gpu;
use crate::kernels::elementwise::Activation;
use crate::nn::{BnMode, Conv2dConfig, Linear, Rng};
use crate::tensor::Tensor;

/// The block kind: two 3×3 convs, or 1×1 → 3×3 → 1×1 with 4× expansion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

impl BlockKind {
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// What varies between ResNets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    pub block: BlockKind,
    /// Blocks in each of the four stages.
    pub layers: [usize; 4],
    /// Channels of the stem and of the first stage's 3×3 convs (torchvision: 64).
    pub width: usize,
    pub in_channels: usize,
    pub num_classes: usize,
}

impl ResNetConfig {
    /// torchvision's standard depths; `width` and `num_classes` as given (64 and 1000 there).
    pub fn from_depth(depth: usize, width: usize, num_classes: usize) -> Result<Self> {
        let (block, layers) = match depth {
            18 => (BlockKind::Basic, [2, 2, 2, 2]),
            34 => (BlockKind::Basic, [3, 4, 6, 3]),
            50 => (BlockKind::Bottleneck, [3, 4, 6, 3]),
            101 => (BlockKind::Bottleneck, [3, 4, 23, 3]),
            152 => (BlockKind::Bottleneck, [3, 8, 36, 3]),
            _ => {
                return Err(Error::invalid(
                    "resnet",
                    format!("depth {depth}: kiln knows ResNet 18, 34, 50, 101 and 152"),
                ));
            }
        };
        Ok(ResNetConfig { block, layers, width, in_channels: 3, num_classes })
    }

    /// The depth torchvision names this configuration by (convs + fc).
    pub fn depth(&self) -> usize {
        let per_block = match self.block {
            BlockKind::Basic => 2,
            BlockKind::Bottleneck => 3,
        };
        self.layers.iter().sum::<usize>() * per_block + 2
    }

    /// Channels entering the head.
    pub fn features(&self) -> usize {
        self.width * 8 * self.block.expansion()
    }

    /// Reads the architecture off a checkpoint's names and shapes.
    pub fn infer(source: &SafetensorsSource) -> Result<Self> {
        let origin = source.origin().to_path_buf();
        let parse = |message: String| Error::Parse { path: origin.clone(), message };
        let stem = source
            .shape_of("conv1.weight")
            .ok_or_else(|| parse("no `conv1.weight`: not a torchvision-style ResNet checkpoint".into()))?;
        let [width, in_channels, 7, 7] = *stem else {
            return Err(parse(format!("`conv1.weight` has shape {stem:?}, a ResNet stem is [W, C, 7, 7]")));
        };
        let block = if source.contains("layer1.0.conv3.weight") { BlockKind::Bottleneck } else { BlockKind::Basic };
        let mut layers = [0; 4];
        for (s, count) in layers.iter_mut().enumerate() {
            while source.contains(&format!("layer{}.{}.conv1.weight", s + 1, *count)) {
                *count += 1;
            }
            if *count == 0 {
                return Err(parse(format!("no `layer{}.0.conv1.weight`: a ResNet has four stages", s + 1)));
            }
        }
        let num_classes = source.shape_of("fc.weight").map_or(0, |s| s[0]);
        Ok(ResNetConfig { block, layers, width, in_channels, num_classes })
    }
}

/// One residual block: its convs (2 or 3) and the projection shortcut where the shape changes.
pub struct Block {
    pub convs: Vec<ConvBn>,
    pub downsample: Option<ConvBn>,
}

impl Block {
    fn load(
        gpu: &Gpu,
        src: &mut dyn WeightSource,
        path: &str,
        kind: BlockKind,
        c_in: usize,
        planes: usize,
        stride: usize,
    ) -> Result<Block> {
        let out = planes * kind.expansion();
        let specs: Vec<Conv2dConfig> = match kind {
            BlockKind::Basic => {
                vec![Conv2dConfig::new(c_in, planes, 3, stride, 1), Conv2dConfig::new(planes, planes, 3, 1, 1)]
            }
            BlockKind::Bottleneck => vec![
                Conv2dConfig::new(c_in, planes, 1, 1, 0),
                Conv2dConfig::new(planes, planes, 3, stride, 1),
                Conv2dConfig::new(planes, out, 1, 1, 0),
            ],
        };
        let mut convs = Vec::with_capacity(specs.len());
        for (i, cfg) in specs.into_iter().enumerate() {
            convs.push(ConvBn::load(gpu, src, &format!("{path}.conv{}", i + 1), &format!("{path}.bn{}", i + 1), cfg)?);
        }
        let downsample = if stride != 1 || c_in != out {
            let cfg = Conv2dConfig::new(c_in, out, 1, stride, 0);
            Some(ConvBn::load(gpu, src, &format!("{path}.downsample.0"), &format!("{path}.downsample.1"), cfg)?)
        } else {
            None
        };
        Ok(Block { convs, downsample })
    }

    /// relu(convs(x) + shortcut(x)), with ReLU between the convs.
    fn forward(&self, tape: &Tape, x: &Var, bn: BnMode) -> Result<Var> {
        let mut h = x.clone();
        for (i, cb) in self.convs.iter().enumerate() {
            h = cb.forward(tape, &h, bn)?;
            if i + 1 < self.convs.len() {
                h = autograd::activation(tape, Activation::Relu, &h)?;
            }
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward(tape, x, bn)?,
            None => x.clone(),
        };
        let sum = autograd::add(tape, &h, &shortcut)?;
        autograd::activation(tape, Activation::Relu, &sum)
    }

    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        self.convs.iter().chain(&self.downsample).for_each(|c| c.visit_params(f));
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.convs.iter_mut().chain(&mut self.downsample).for_each(|c| c.visit_params_mut(f));
    }
}

/// A ResNet with its classification head.
pub struct ResNet {
    pub config: ResNetConfig,
    pub stem: ConvBn,
    /// The four stages (`layer1` .. `layer4`).
    pub stages: [Vec<Block>; 4],
    pub fc: Linear,
    /// How BN layers behave in training passes.
    pub bn: BnMode,
    /// Whether `fc` came from the checkpoint (else it is new, for the user's classes).
    pub head_from_checkpoint: bool,
}

/// Options for [`ResNet::load`].
#[derive(Clone, Debug, Default)]
pub struct ResNetOptions {
    /// The depth the user asked for (checked against the checkpoint); None takes what it has.
    pub depth: Option<usize>,
    /// A new head with this many classes; None keeps the checkpoint's `fc`.
    pub num_classes: Option<usize>,
    pub bn: BnMode,
    /// Seeds a new head.
    pub seed: u64,
}

impl ResNet {
    /// Loads `model.safetensors` of `dir` (or a single .safetensors file).
    pub fn load(gpu: &Gpu, path: &Path, opts: &ResNetOptions) -> Result<ResNet> {
        let mut src = crate::formats::weights::open(path)?;
        let mut config = ResNetConfig::infer(&src)?;
        if let Some(depth) = opts.depth {
            let want = ResNetConfig::from_depth(depth, config.width, config.num_classes)?;
            if (want.block, want.layers) != (config.block, config.layers) {
                return Err(Error::Parse {
                    path: path.to_path_buf(),
                    message: format!(
                        "--depth {depth} wants {:?} blocks {:?}; the checkpoint has {:?} blocks {:?} (ResNet-{})",
                        want.block,
                        want.layers,
                        config.block,
                        config.layers,
                        config.depth()
                    ),
                });
            }
        }
        let stem =
            ConvBn::load(gpu, &mut src, "conv1", "bn1", Conv2dConfig::new(config.in_channels, config.width, 7, 2, 3))?;
        let mut c_in = config.width;
        let mut stages: [Vec<Block>; 4] = Default::default();
        for (s, stage) in stages.iter_mut().enumerate() {
            let planes = config.width << s;
            for i in 0..config.layers[s] {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                stage.push(Block::load(
                    gpu,
                    &mut src,
                    &format!("layer{}.{i}", s + 1),
                    config.block,
                    c_in,
                    planes,
                    stride,
                )?);
                c_in = planes * config.block.expansion();
            }
        }
        let features = config.features();
        let reuse = match opts.num_classes {
            None => true,
            Some(k) => src.shape_of("fc.weight") == Some(&[k, features][..]),
        };
        let fc = if reuse && src.contains("fc.weight") {
            let w = src.tensor(gpu, "fc.weight", &[config.num_classes, features])?;
            let b = src.tensor(gpu, "fc.bias", &[config.num_classes])?;
            Linear::new("fc", w, Some(b), WeightLayout::OutIn)
        } else {
            let k = opts.num_classes.unwrap_or(config.num_classes);
            if k == 0 {
                return Err(Error::invalid("resnet", "the checkpoint has no `fc` head: give the number of classes"));
            }
            config.num_classes = k;
            new_head(gpu, features, k, opts.seed)?
        };
        let head_from_checkpoint = reuse && src.contains("fc.weight");
        src.finish(&|name| {
            name.ends_with("num_batches_tracked") || (!head_from_checkpoint && name.starts_with("fc."))
        })?;
        Ok(ResNet { config, stem, stages, fc, bn: opts.bn, head_from_checkpoint })
    }

    /// Pooled features `[N, features]` of images `[N, C, H, W]`.
    pub fn features(&self, tape: &Tape, images: &Var) -> Result<Var> {
        let x = self.stem.forward(tape, images, self.bn)?;
        let x = autograd::activation(tape, Activation::Relu, &x)?;
        let mut x = autograd::max_pool2d(tape, &x, 3, 2, 1)?;
        for stage in &self.stages {
            for block in stage {
                x = block.forward(tape, &x, self.bn)?;
            }
        }
        autograd::global_avg_pool(tape, &x)
    }

    /// Logits `[N, classes]`.
    pub fn forward(&self, tape: &Tape, images: &Var) -> Result<Var> {
        let pooled = self.features(tape, images)?;
        self.fc.forward(tape, &pooled)
    }

    /// Mean cross-entropy against class indices.
    pub fn loss(&self, tape: &Tape, images: &Var, targets: &[i32]) -> Result<Loss> {
        let logits = self.forward(tape, images)?;
        autograd::cross_entropy(tape, &logits, targets)
    }

    /// Every conv → BN unit, stem first (saving needs the BNs' running statistics).
    pub fn conv_bns(&self) -> Vec<&ConvBn> {
        let blocks = self.stages.iter().flatten().flat_map(|b| b.convs.iter().chain(&b.downsample));
        std::iter::once(&self.stem).chain(blocks).collect()
    }

    /// Makes `fc` and the last `stages` stages trainable and freezes the rest (`--strategy
    /// top:N` counts stages from the output; 0 is the head alone, 4 everything but the stem).
    pub fn train_top(&mut self, gpu: &Gpu, stages: usize) -> Result<()> {
        let mut result = Ok(());
        let mut set = |p: &mut Param, on: bool| {
            if result.is_ok() {
                result = p.set_trainable(gpu, on);
            }
        };
        self.stem.visit_params_mut(&mut |p| set(p, stages > 4));
        for (s, stage) in self.stages.iter_mut().enumerate() {
            let on = s + stages >= 4;
            stage.iter_mut().for_each(|b| b.visit_params_mut(&mut |p| set(p, on)));
        }
        self.fc.visit_params_mut(&mut |p| set(p, true));
        result
    }
}

/// PyTorch's `nn.Linear` initialisation: weight and bias uniform in ±1/√fan_in.
fn new_head(gpu: &Gpu, features: usize, classes: usize, seed: u64) -> Result<Linear> {
    let mut rng = Rng::new(seed ^ 0x5E5_4E7);
    let bound = 1.0 / (features as f32).sqrt();
    let w = Tensor::from_f32(gpu, &rng.uniform(classes * features, bound), &[classes, features])?;
    let b = Tensor::from_f32(gpu, &rng.uniform(classes, bound), &[classes])?;
    Ok(Linear::new("fc", w, Some(b), WeightLayout::OutIn))
}

impl Module for ResNet {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        self.stem.visit_params(f);
        self.stages.iter().flatten().for_each(|b| b.visit_params(f));
        self.fc.visit_params(f);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.stem.visit_params_mut(f);
        self.stages.iter_mut().flatten().for_each(|b| b.visit_params_mut(f));
        self.fc.visit_params_mut(f);
    }
}
