//! One image classifier over the CNN families (EfficientNet-Lite and ResNet): the pooled
//! features of the body, the head, and the stages counted from the output that the training
//! strategies, progressive unfreezing and per-stage learning rates work on.
//!
//! Stages (depth 0 is the head):
//! - ResNet: 1 `layer4`, 2 `layer3`, 3 `layer2`, 4 `layer1`, 5 the stem (`conv1`, `bn1`);
//! - EfficientNet-Lite: 1 the last block stage with the head conv (`_conv_head`, `_bn1`),
//!   2 .. 7 the block stages below it, 8 the stem (`_conv_stem`, `_bn0`).
//!
//! # Shapes
//! images `[N, 3, S, S]` → features `[N, C]` → logits `[N, classes]`.

use std::path::Path;

use super::efficientnet_lite::{EfficientNetLite, EfficientNetLiteConfig};
use super::resnet::{ResNet, ResNetOptions};
use crate::autograd::{self, Module, Param, Tape, Var};
use crate::error::{Error, Result};
use crate::formats::safetensors::save_safetensors;
use crate::gpu::Gpu;
use crate::nn::BnMode;
use crate::tensor::Tensor;
use crate::util::write_atomic;

/// The file beside a saved classifier's weights naming its architecture and labels.
pub const IMAGE_CONFIG: &str = "config.json";

pub enum ImageClassifier {
    Lite(Box<EfficientNetLite>),
    ResNet(Box<ResNet>),
}

/// Which family a checkpoint holds, from its tensor names.
fn family(path: &Path) -> Result<&'static str> {
    let src = crate::formats::weights::open(path)?;
    let names = src.names();
    if names.iter().any(|n| n == "_conv_stem.weight") {
        Ok("efficientnet-lite")
    } else if names.iter().any(|n| n == "conv1.weight") {
        Ok("resnet")
    } else {
        Err(Error::Parse {
            path: path.to_path_buf(),
            message: "neither an EfficientNet-Lite (`_conv_stem.weight`) nor a ResNet (`conv1.weight`) checkpoint"
                .into(),
        })
    }
}

impl ImageClassifier {
    /// Loads the CNN at `path` (a folder with model.safetensors and maybe config.json, a
    /// .safetensors file or a PyTorch checkpoint) with a head of `num_classes` (new unless the
    /// checkpoint's has that size). An EfficientNet-Lite's scaling comes from config.json beside
    /// the weights; without one it is lite0.
    pub fn load(gpu: &Gpu, path: &Path, num_classes: usize, bn: BnMode, seed: u64) -> Result<ImageClassifier> {
        match family(path)? {
            "resnet" => {
                let opts = ResNetOptions { depth: None, num_classes: Some(num_classes), bn, seed };
                Ok(ImageClassifier::ResNet(Box::new(ResNet::load(gpu, path, &opts)?)))
            }
            _ => {
                let config_path =
                    if path.is_dir() { path.join(IMAGE_CONFIG) } else { path.with_file_name(IMAGE_CONFIG) };
                let config = if config_path.is_file() {
                    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
                    serde_json::from_str(&text)
                        .map_err(|e| Error::Parse { path: config_path, message: e.to_string() })?
                } else {
                    EfficientNetLiteConfig::lite(0)?
                };
                let m = EfficientNetLite::load(gpu, path, config, Some(num_classes), bn, seed)?;
                Ok(ImageClassifier::Lite(Box::new(m)))
            }
        }
    }

    pub fn architecture(&self) -> String {
        match self {
            ImageClassifier::Lite(m) => {
                let c = &m.config;
                match (0..5).find(|&n| {
                    EfficientNetLiteConfig::lite(n).is_ok_and(|l| {
                        l.width_coefficient == c.width_coefficient
                            && l.depth_coefficient == c.depth_coefficient
                            && c.fix_head_stem
                    })
                }) {
                    Some(n) => format!("efficientnet-lite{n}"),
                    None => "efficientnet-lite".into(),
                }
            }
            ImageClassifier::ResNet(m) => format!("resnet{}", m.config.depth()),
        }
    }

    /// Width of the pooled features.
    pub fn feature_width(&self) -> usize {
        match self {
            ImageClassifier::Lite(m) => m.config.head_width(),
            ImageClassifier::ResNet(m) => m.config.features(),
        }
    }

    pub fn num_classes(&self) -> usize {
        match self {
            ImageClassifier::Lite(m) => m.config.num_classes,
            ImageClassifier::ResNet(m) => m.config.num_classes,
        }
    }

    pub fn head_from_checkpoint(&self) -> bool {
        match self {
            ImageClassifier::Lite(m) => m.head_from_checkpoint,
            ImageClassifier::ResNet(m) => m.head_from_checkpoint,
        }
    }

    pub fn set_bn(&mut self, bn: BnMode) {
        match self {
            ImageClassifier::Lite(m) => m.bn = bn,
            ImageClassifier::ResNet(m) => m.bn = bn,
        }
    }

    /// Pooled features `[N, C]` of the body.
    pub fn features(&self, tape: &Tape, images: &Var) -> Result<Var> {
        match self {
            ImageClassifier::Lite(m) => m.features(tape, images),
            ImageClassifier::ResNet(m) => m.features(tape, images),
        }
    }

    /// Logits of pooled features (EfficientNet's dropout first, in training passes).
    pub fn head(&self, tape: &Tape, pooled: &Var) -> Result<Var> {
        match self {
            ImageClassifier::Lite(m) => {
                let x = autograd::dropout(tape, pooled, m.config.dropout_rate)?;
                m.fc.forward(tape, &x)
            }
            ImageClassifier::ResNet(m) => m.fc.forward(tape, pooled),
        }
    }

    pub fn logits(&self, tape: &Tape, images: &Var) -> Result<Var> {
        let pooled = self.features(tape, images)?;
        self.head(tape, &pooled)
    }

    /// The deepest stage (the stem's).
    pub fn max_depth(&self) -> usize {
        match self {
            ImageClassifier::Lite(m) => m.blocks.iter().filter(|b| !b.spec.residual).count() + 1,
            ImageClassifier::ResNet(_) => 5,
        }
    }

    /// The stage of parameter `name`, counted from the output (see the module doc).
    pub fn depth(&self, name: &str) -> usize {
        match self {
            ImageClassifier::Lite(m) => {
                if name.starts_with("_fc.") {
                    return 0;
                }
                let stages = m.blocks.iter().filter(|b| !b.spec.residual).count();
                let Some(rest) = name.strip_prefix("_blocks.") else {
                    // `_conv_head` and the top-level `_bn1` go with the last stage.
                    return if name.starts_with("_conv_head") || name.starts_with("_bn1.") { 1 } else { stages + 1 };
                };
                let i: usize = rest.split('.').next().and_then(|x| x.parse().ok()).unwrap_or(0);
                // A stage starts at each block that does not add its input.
                let stage = m.blocks.iter().take(i + 1).filter(|b| !b.spec.residual).count();
                stages + 1 - stage
            }
            ImageClassifier::ResNet(_) => {
                if name.starts_with("fc.") {
                    return 0;
                }
                match name.strip_prefix("layer").and_then(|r| r.chars().next()).and_then(|c| c.to_digit(10)) {
                    Some(s) => 5 - s as usize,
                    None => 5,
                }
            }
        }
    }

    /// Makes exactly the parameters `keep` names trainable.
    pub fn set_trainable(&mut self, gpu: &Gpu, keep: &dyn Fn(&str) -> bool) -> Result<()> {
        let mut result = Ok(());
        self.visit_params_mut(&mut |p| {
            if result.is_ok() {
                let k = keep(&p.name);
                result = p.set_trainable(gpu, k);
            }
        });
        result
    }

    /// Writes the whole model (weights, BN running statistics) as `model.safetensors` with
    /// the checkpoint's names, and config.json with the architecture and the labels, so that
    /// `--model DIR` loads it again.
    pub fn save(&self, gpu: &Gpu, dir: &Path, labels: &[String]) -> Result<()> {
        let mut tensors = Vec::new();
        let mut params = Vec::new();
        self.visit_params(&mut |p| params.push((p.name.clone(), p.value.clone())));
        for (name, t) in params {
            tensors.push((name, t.to_f32_vec(gpu)?, t.shape().to_vec()));
        }
        let mut buffers = Vec::new();
        self.visit_buffers(&mut |name, t| buffers.push((name.to_string(), t.clone())));
        for (name, t) in buffers {
            tensors.push((name, t.to_f32_vec(gpu)?, t.shape().to_vec()));
        }
        let mut config = match self {
            ImageClassifier::Lite(m) => serde_json::json!({
                "width_coefficient": m.config.width_coefficient, "depth_coefficient": m.config.depth_coefficient,
                "fix_head_stem": m.config.fix_head_stem, "num_classes": m.config.num_classes,
                "dropout_rate": m.config.dropout_rate,
            }),
            ImageClassifier::ResNet(m) => serde_json::json!({ "num_classes": m.config.num_classes }),
        };
        config["architecture"] = self.architecture().into();
        config["labels"] = labels.into();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        save_safetensors(&dir.join("model.safetensors"), &tensors, Some(Default::default()))?;
        write_atomic(&dir.join(IMAGE_CONFIG), serde_json::to_string_pretty(&config).expect("json").as_bytes())
    }
}

impl Module for ImageClassifier {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        match self {
            ImageClassifier::Lite(m) => m.visit_params(f),
            ImageClassifier::ResNet(m) => m.visit_params(f),
        }
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        match self {
            ImageClassifier::Lite(m) => m.visit_params_mut(f),
            ImageClassifier::ResNet(m) => m.visit_params_mut(f),
        }
    }

    /// Every BN layer's `running_mean` and `running_var`, with the checkpoint's names.
    fn visit_buffers(&self, f: &mut dyn FnMut(&str, &Tensor)) {
        let units = match self {
            ImageClassifier::Lite(m) => m.conv_bns(),
            ImageClassifier::ResNet(m) => m.conv_bns(),
        };
        for unit in units {
            let path = unit.bn.weight.name.strip_suffix(".weight").unwrap_or(&unit.bn.weight.name);
            f(&format!("{path}.running_mean"), &unit.bn.running_mean);
            f(&format!("{path}.running_var"), &unit.bn.running_var);
        }
    }
}
