//! conv → batch norm, the unit ResNets and EfficientNets are built of, loaded from
//! `<conv>.weight` and `<bn>.{weight,bias,running_mean,running_var}` (torchvision's and the
//! efficientnet packages' names), every shape checked.

use crate::autograd::{Module, Param, Tape, Var};
use crate::error::Result;
use crate::formats::safetensors::WeightSource;
use crate::gpu::Gpu;
use crate::nn::{BatchNorm2d, BnMode, Conv2d, Conv2dConfig};

pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
}

impl ConvBn {
    /// The conv `conv` (no bias) and the batch norm `bn` of `cfg.c_out` channels.
    pub fn load(gpu: &Gpu, src: &mut dyn WeightSource, conv: &str, bn: &str, cfg: Conv2dConfig) -> Result<ConvBn> {
        let w = src.tensor(gpu, &format!("{conv}.weight"), &cfg.weight_shape())?;
        let c = [cfg.c_out];
        let bn_layer = BatchNorm2d::new(
            bn,
            src.tensor(gpu, &format!("{bn}.weight"), &c)?,
            src.tensor(gpu, &format!("{bn}.bias"), &c)?,
            src.tensor(gpu, &format!("{bn}.running_mean"), &c)?,
            src.tensor(gpu, &format!("{bn}.running_var"), &c)?,
        );
        Ok(ConvBn { conv: Conv2d::new(conv, cfg, w, None), bn: bn_layer })
    }

    pub fn forward(&self, tape: &Tape, x: &Var, bn: BnMode) -> Result<Var> {
        let y = self.conv.forward(tape, x)?;
        self.bn.forward(tape, &y, bn)
    }
}

impl Module for ConvBn {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        self.conv.visit_params(f);
        self.bn.visit_params(f);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.conv.visit_params_mut(f);
        self.bn.visit_params_mut(f);
    }
}
