//! ResNets against PyTorch (`resnet18_tiny`, basic blocks, and `resnet50_tiny`, bottlenecks,
//! made by `scripts/make_fixtures.py` with torchvision's module layout): logits and loss with
//! BN in evaluation mode (running statistics: `model.eval()`, and kiln's frozen BN) and in
//! training mode (batch statistics, running averages updated), and the gradients of the head
//! and of the last stage's convs and BN weights in both.

use super::*;

use kiln::Tensor;
use kiln::autograd::{Module, Var, cross_entropy};
use kiln::models::resnet::{BlockKind, ResNet, ResNetOptions};
use kiln::nn::{BatchNorm2d, BnMode};

fn images(e: &Expected) -> Var {
    let (data, shape) = &e.f["images"];
    let data: Vec<f32> = data.iter().map(|&v| v as f32).collect();
    Var::constant(Tensor::from_f32(gpu(), &data, shape).unwrap())
}

fn load(name: &str, bn: BnMode) -> ResNet {
    ResNet::load(gpu(), &fixture(name), &ResNetOptions { bn, ..Default::default() }).unwrap()
}

/// The BN layer `layer4.1.bn2` (or `bn1`, the stem's) of a model.
fn bn_named<'m>(model: &'m ResNet, name: &str) -> &'m BatchNorm2d {
    if name == "bn1" {
        return &model.stem.bn;
    }
    let parts: Vec<&str> = name.split('.').collect();
    let stage: usize = parts[0].trim_start_matches("layer").parse().unwrap();
    let block: usize = parts[1].parse().unwrap();
    let conv: usize = parts[2].trim_start_matches("bn").parse().unwrap();
    &model.stages[stage - 1][block].convs[conv - 1].bn
}

/// One forward and backward with BN in `mode` (`eval`: running statistics, `train`: the
/// batch's), the last stage and the head trainable; everything checked against PyTorch's.
fn matches_pytorch(name: &str, mode: &str) {
    let g = gpu();
    let e = Expected::read(&fixture(name));
    let mut model = load(name, if mode == "train" { BnMode::Train } else { BnMode::Frozen });
    model.train_top(g, 1).unwrap();
    let labels: Vec<i32> = e.i["labels"].iter().map(|&v| v as i32).collect();
    let tape = Tape::train(g, 0, 1);
    let logits = model.forward(&tape, &images(&e)).unwrap();
    let loss = cross_entropy(&tape, &logits, &labels).unwrap();
    let names = tape.recorded_names();
    // Below layer4 nothing needs a gradient, so nothing is recorded: the first op is a conv
    // of layer4 and no max-pool (the stem's) is on the tape.
    assert_eq!(names.first(), Some(&"conv2d"), "{names:?}");
    assert!(!names.contains(&"max_pool2d"), "{names:?}");
    tape.backward(&loss, 1.0).unwrap();
    assert_close(
        &format!("{name} logits_{mode}"),
        &logits.value.to_f32_vec(g).unwrap(),
        e.f(&format!("logits_{mode}")),
        LOGIT_TOL,
        1e-4,
    );
    assert_close(
        &format!("{name} loss_{mode}"),
        &[loss.read(g).unwrap().0],
        e.f(&format!("loss_{mode}")),
        LOGIT_TOL,
        1e-4,
    );
    let prefix = format!("grad_{mode}.");
    let mut checked = 0;
    model.visit_params(&mut |p| {
        let key = format!("{prefix}{}", p.name);
        if e.f.contains_key(&key) {
            let grad = p.grad.as_ref().unwrap_or_else(|| panic!("{} is trainable", p.name));
            assert_close(&format!("{name} {key}"), &grad.to_f32_vec(g).unwrap(), e.f(&key), GRAD_TOL, 1e-3);
            checked += 1;
        }
    });
    assert_eq!(checked, e.f.keys().filter(|k| k.starts_with(&prefix)).count(), "every gradient in the fixture checked");
    assert!(checked >= 7);

    // Training mode moved the running statistics as PyTorch did; evaluation mode left them.
    for key in e.f.keys().filter(|k| k.starts_with("running.")) {
        let (bn, stat) = key["running.".len()..].rsplit_once('.').unwrap();
        let layer = bn_named(&model, bn);
        let t = if stat == "running_mean" { &layer.running_mean } else { &layer.running_var };
        let got = t.to_f32_vec(g).unwrap();
        if mode == "train" {
            assert_close(&format!("{name} {key}"), &got, e.f(key), 1e-5, 1e-5);
        } else {
            let before = load(name, BnMode::Frozen);
            let b = bn_named(&before, bn);
            let want = if stat == "running_mean" { &b.running_mean } else { &b.running_var };
            assert_eq!(got, want.to_f32_vec(g).unwrap(), "{name} {key}: evaluation mode leaves it");
        }
    }
}

#[test]
fn resnet18_eval_mode_bn_matches_pytorch() {
    matches_pytorch("resnet18_tiny", "eval");
}

#[test]
fn resnet18_train_mode_bn_matches_pytorch() {
    matches_pytorch("resnet18_tiny", "train");
}

#[test]
fn resnet50_eval_mode_bn_matches_pytorch() {
    matches_pytorch("resnet50_tiny", "eval");
}

#[test]
fn resnet50_train_mode_bn_matches_pytorch() {
    matches_pytorch("resnet50_tiny", "train");
}

/// The architecture is read off the checkpoint; an evaluation pass (no tape) uses the running
/// statistics whatever the BN mode; a new head has the user's classes; a depth that the
/// checkpoint does not have is refused with both block layouts named.
#[test]
fn resnet_config_new_head_and_wrong_depth() {
    let g = gpu();
    let e = Expected::read(&fixture("resnet50_tiny"));
    let m = load("resnet50_tiny", BnMode::Train);
    assert_eq!((m.config.block, m.config.layers, m.config.width), (BlockKind::Bottleneck, [3, 4, 6, 3], 2));
    assert_eq!((m.config.depth(), m.config.features(), m.config.num_classes), (50, 64, 3));
    let logits = m.forward(&Tape::no_grad(g), &images(&e)).unwrap();
    assert_close(
        "resnet50_tiny no-grad logits",
        &logits.value.to_f32_vec(g).unwrap(),
        e.f("logits_eval"),
        LOGIT_TOL,
        1e-4,
    );

    let opts = ResNetOptions { num_classes: Some(5), seed: 7, ..Default::default() };
    let m = ResNet::load(g, &fixture("resnet18_tiny"), &opts).unwrap();
    assert!(!m.head_from_checkpoint);
    assert_eq!(m.fc.weight.value.shape(), [5, 24]);
    let e18 = Expected::read(&fixture("resnet18_tiny"));
    assert_eq!(m.forward(&Tape::no_grad(g), &images(&e18)).unwrap().shape(), [2, 5]);

    let opts = ResNetOptions { depth: Some(34), ..Default::default() };
    let err = ResNet::load(g, &fixture("resnet18_tiny"), &opts).err().expect("depth 34 is refused").to_string();
    assert!(err.contains("[3, 4, 6, 3]") && err.contains("[2, 2, 2, 2]") && err.contains("ResNet-18"), "{err}");
    let opts = ResNetOptions { depth: Some(18), ..Default::default() };
    assert!(ResNet::load(g, &fixture("resnet18_tiny"), &opts).unwrap().head_from_checkpoint);
}
