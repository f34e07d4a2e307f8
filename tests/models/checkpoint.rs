//! Gradient checkpointing (`set_grad_checkpoint`): every trainable gradient, and the loss,
//! are the same with and without it, on the tiny fixture of every decoder family and the BERT
//! encoder, with dropout on so that the rerun in backward must replay the forward's masks.

use super::*;

use kiln::autograd::Module;
use kiln::models::bert::EncoderInput;
use kiln::models::classifier::{Pooling, SequenceClassifier};
use kiln::tensor::Tensor;

/// Both passes run the same kernels on the same values in the same order; what differs is only
/// when the block's ops run, so the gradients agree to rounding (in practice bit for bit).
const CKPT_TOL: f64 = 1e-6;

/// Every trainable parameter's gradient by name, read back and then zeroed for the next pass.
fn take_grads<M: Module + ?Sized>(module: &M) -> Vec<(String, Vec<f32>)> {
    let g = gpu();
    let mut out = Vec::new();
    module.visit_params(&mut |p| {
        if let Some(grad) = &p.grad {
            out.push((p.name.clone(), grad.to_f32_vec(g).unwrap()));
            g.clear(grad);
        }
    });
    out
}

/// Random LoRA B matrices (PEFT starts them at zero, which would leave A's gradients zero and
/// nothing flowing back through the adapters).
fn randomize_lora_b<M: Module + ?Sized>(module: &mut M, seed: u64) {
    let g = gpu();
    let mut rng = Rng::new(seed);
    module.visit_params_mut(&mut |p| {
        if p.name.contains("lora_B") {
            let v: Vec<f32> = rng.vec(p.numel()).iter().map(|x| 0.1 * x).collect();
            p.value = Tensor::from_f32(g, &v, p.value.shape()).unwrap();
        }
    });
}

fn compare(what: &str, plain: &[(String, Vec<f32>)], ckpt: &[(String, Vec<f32>)]) {
    assert_eq!(plain.len(), ckpt.len(), "{what}: same trainable parameters");
    assert!(!plain.is_empty(), "{what}: something is trainable");
    let mut nonzero = 0;
    for ((name, a), (name2, b)) in plain.iter().zip(ckpt) {
        assert_eq!(name, name2);
        assert_close(&format!("{what} {name}"), b, &f64s(a), CKPT_TOL, 1e-6);
        nonzero += a.iter().any(|&x| x != 0.0) as usize;
    }
    // Gradients reached the adapters of the first layer (through every checkpoint's dx).
    assert!(nonzero * 10 >= plain.len() * 9, "{what}: only {nonzero} of {} gradients are nonzero", plain.len());
}

fn decoder_case(name: &str) {
    let g = gpu();
    let dir = fixture(name);
    let e = Expected::read(&dir);
    let mut model = load_causal_lm(g, &dir).unwrap();
    let targets = model.lora_targets(&["all-linear".to_string()]);
    let lora =
        LoraConfig { r: 4, alpha: 8.0, dropout: 0.1, target_modules: targets, use_rslora: false, use_dora: false };
    model.add_lora(g, &lora, 7).unwrap();
    // GPT-2's residual and embedding dropout too.
    let _ = model.set_dropout(0.1);
    randomize_lora_b(model.as_mut(), 11);
    let (input, targets) = e.batch();
    let mut losses = Vec::new();
    let mut grads = Vec::new();
    for on in [false, true] {
        model.set_grad_checkpoint(on).unwrap();
        let tape = Tape::train(g, 3, 5);
        let loss = model.loss(&tape, &input, &targets).unwrap();
        let names = tape.recorded_names();
        let checkpoints = names.iter().filter(|n| **n == "checkpoint").count();
        assert_eq!(checkpoints, if on { model.shape().layers } else { 0 }, "{name}: {names:?}");
        tape.backward(&loss, 1.0).unwrap();
        losses.push(loss.read(g).unwrap().0);
        grads.push(take_grads(model.as_ref()));
    }
    assert_close(&format!("{name} loss"), &[losses[1]], &[losses[0] as f64], CKPT_TOL, 1e-6);
    compare(name, &grads[0], &grads[1]);
}

#[test]
fn checkpointed_gradients_equal_plain_ones_for_every_decoder_family() {
    for name in [
        "gpt2_tiny",
        "llama_tiny",
        "llama3_tiny",
        "qwen2_tiny",
        "qwen3_tiny",
        "mistral_tiny",
        "phi3_tiny",
        "gemma3_tiny",
    ] {
        decoder_case(name);
    }
}

#[test]
fn checkpointed_gradients_equal_plain_ones_for_bert() {
    let g = gpu();
    let dir = fixture("bert_tiny");
    let e = Expected::read(&dir);
    let labels = (0..3).map(|i| i.to_string()).collect();
    let mut model = SequenceClassifier::load(g, &dir, labels, Pooling::Mean, 0).unwrap();
    // Everything trainable: the embeddings' gradients need dx through every layer.
    model.set_trainable(g, &|_| true).unwrap();
    let u = |name: &str| e.i[name].iter().map(|&x| x as u32).collect::<Vec<u32>>();
    let (ids, types, mask) = (u("input_ids"), u("token_type_ids"), u("attention_mask"));
    let t = ids.len() / 2;
    let input = EncoderInput::new(g, ids, Some(types), Some(mask), 2, t).unwrap();
    let targets: Vec<usize> = e.i["labels"].iter().map(|&x| x as usize).collect();
    let mut grads = Vec::new();
    for on in [false, true] {
        model.body.grad_checkpoint = on;
        let tape = Tape::train(g, 3, 5);
        let logits = model.logits(&tape, &input).unwrap();
        let loss = model.loss(&tape, &logits, &targets, None).unwrap();
        let checkpoints = tape.recorded_names().iter().filter(|n| **n == "checkpoint").count();
        assert_eq!(checkpoints, if on { model.body.layers.len() } else { 0 });
        tape.backward(&loss, 1.0).unwrap();
        grads.push(take_grads(&model));
    }
    compare("bert_tiny", &grads[0], &grads[1]);
}

/// A checkpointed pass that needs no gradient (everything frozen) records nothing, like a
/// plain one.
#[test]
fn checkpointing_a_frozen_model_records_nothing() {
    let g = gpu();
    let dir = fixture("llama_tiny");
    let e = Expected::read(&dir);
    let mut model = load_causal_lm(g, &dir).unwrap();
    model.set_grad_checkpoint(true).unwrap();
    let (input, targets) = e.batch();
    let tape = Tape::train(g, 0, 1);
    let plain = loss_of(model.as_ref(), &e);
    let loss = model.loss(&tape, &input, &targets).unwrap();
    assert_eq!(tape.recorded(), 0);
    assert_eq!(loss.read(g).unwrap().0, plain);
}

/// The estimate: checkpointed activations are below the plain ones, and with no flag
/// checkpointing turns on exactly when the plain run would not fit the budget.
#[test]
fn checkpointing_turns_on_when_the_run_would_not_fit() {
    use kiln::train::memory::{choose_checkpointing, estimate_lm};
    let g = gpu();
    let mut model = load_causal_lm(g, &fixture("llama_tiny")).unwrap();
    let targets = model.lora_targets(&["all-linear".to_string()]);
    model
        .add_lora(
            g,
            &LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, target_modules: targets, use_rslora: false, use_dora: false },
            1,
        )
        .unwrap();
    let e = estimate_lm(model.as_mut(), 64, 64);
    assert!(e.activations_checkpointed < e.activations_plain, "{e:?}");
    assert_eq!(e.activations, e.activations_plain);
    let plain = e.clone().with_checkpointing(false).total();
    let ckpt = e.clone().with_checkpointing(true).total();
    // Flags win.
    assert!(choose_checkpointing(e.clone(), Some(true), None).0.grad_checkpoint);
    assert!(!choose_checkpointing(e.clone(), Some(false), Some((1, "x"))).0.grad_checkpoint);
    // No budget, or one the plain run fits: off, nothing said.
    let (off, said) = choose_checkpointing(e.clone(), None, Some((plain, "test")));
    assert!(!off.grad_checkpoint && said.is_none());
    assert!(!choose_checkpointing(e.clone(), None, None).0.grad_checkpoint);
    // A budget between the two: on, and it says why, naming the flag.
    let (on, said) = choose_checkpointing(e.clone(), None, Some(((plain + ckpt) / 2, "test")));
    assert!(on.grad_checkpoint && on.total() == ckpt);
    let said = said.unwrap();
    assert!(said.contains("--grad-checkpoint") && said.contains("test"), "{said}");
    assert!(on.table().contains("ckpt") && on.table().contains("without checkpointing"), "{}", on.table());
}
