//! EfficientNet-Lite against the efficientnet-lite-pytorch package's own model code
//! (`efficientnet_lite_tiny`, made by `scripts/make_fixtures.py`): TensorFlow "SAME" padding,
//! depthwise convolutions, ReLU6, BN with eps 1e-3 in both modes, and gradients of the head and
//! of the last block's depthwise and projection convolutions and BNs.

use super::*;

use kiln::Tensor;
use kiln::autograd::{Module, Var, cross_entropy};
use kiln::models::efficientnet_lite::{EfficientNetLite, EfficientNetLiteConfig};
use kiln::nn::BnMode;

fn tiny(bn: BnMode) -> EfficientNetLite {
    let dir = fixture("efficientnet_lite_tiny");
    let config: EfficientNetLiteConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    EfficientNetLite::load(gpu(), &dir, config, None, bn, 0).unwrap()
}

fn matches_package(mode: &str) {
    let g = gpu();
    let e = Expected::read(&fixture("efficientnet_lite_tiny"));
    let mut model = tiny(if mode == "train" { BnMode::Train } else { BnMode::Frozen });
    assert_eq!(model.blocks.len(), 10);
    model.visit_params_mut(&mut |p| p.set_trainable(g, true).unwrap());
    let (data, shape) = &e.f["images"];
    let data: Vec<f32> = data.iter().map(|&v| v as f32).collect();
    let images = Var::constant(Tensor::from_f32(g, &data, shape).unwrap());
    let labels: Vec<i32> = e.i["labels"].iter().map(|&v| v as i32).collect();
    let tape = Tape::train(g, 0, 1);
    let logits = model.forward(&tape, &images).unwrap();
    let loss = cross_entropy(&tape, &logits, &labels).unwrap();
    tape.backward(&loss, 1.0).unwrap();
    let what = format!("efficientnet_lite_tiny {mode}");
    assert_close(
        &format!("{what} logits"),
        &logits.value.to_f32_vec(g).unwrap(),
        e.f(&format!("logits_{mode}")),
        LOGIT_TOL,
        1e-4,
    );
    assert_close(&format!("{what} loss"), &[loss.read(g).unwrap().0], e.f(&format!("loss_{mode}")), LOGIT_TOL, 1e-4);
    let prefix = format!("grad_{mode}.");
    let mut checked = 0;
    model.visit_params(&mut |p| {
        let key = format!("{prefix}{}", p.name);
        if e.f.contains_key(&key) {
            let grad = p.grad.as_ref().unwrap().to_f32_vec(g).unwrap();
            assert_close(&format!("{what} {key}"), &grad, e.f(&key), GRAD_TOL, 1e-3);
            checked += 1;
        }
    });
    assert_eq!(checked, e.f.keys().filter(|k| k.starts_with(&prefix)).count(), "every gradient in the fixture checked");
    assert!(checked >= 7);
}

#[test]
fn efficientnet_lite_eval_mode_bn_matches_package() {
    matches_package("eval");
}

#[test]
fn efficientnet_lite_train_mode_bn_matches_package() {
    matches_package("train");
}

/// lite0's layout: 16 blocks, stem 32, head 1280, as the real checkpoint has them; a new head.
#[test]
fn efficientnet_lite0_layout_and_new_head() {
    let c = EfficientNetLiteConfig::lite(0).unwrap();
    let blocks = c.blocks();
    assert_eq!((blocks.len(), c.stem_width(), c.head_width()), (16, 32, 1280));
    assert_eq!((blocks[0].c_in, blocks[0].c_out, blocks[0].expand), (32, 16, 1));
    assert_eq!((blocks[15].c_in, blocks[15].c_out, blocks[15].kernel), (192, 320, 3));
    assert_eq!(blocks.iter().filter(|b| b.stride == 2).count(), 4);
    let dir = fixture("efficientnet_lite_tiny");
    let config: EfficientNetLiteConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let m = EfficientNetLite::load(gpu(), &dir, config, Some(5), BnMode::Frozen, 3).unwrap();
    assert!(!m.head_from_checkpoint);
    assert_eq!(m.fc.weight.value.shape()[0], 5);
}
