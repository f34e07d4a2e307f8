//! Whole decoders against PyTorch: tiny random GPT-2 and Llama checkpoints (and, in
//! `models/families.rs`, Llama 3, Qwen2, Qwen3, Mistral and Phi-3) with logits, loss,
//! LoRA gradients and greedy generations made by transformers + PEFT
//! (`scripts/make_fixtures.py`; the tests read its files and never need Python).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln::autograd::Tape;
use kiln::data::lm::Example;
use kiln::formats::peft::TaskType;
use kiln::generate::{Sampling, generate};
use kiln::models::quantize;
use kiln::models::{CausalLm, LmInput, load_causal_lm};
use kiln::nn::LoraConfig;
use kiln::quant::QuantType;
use kiln::train::forgetting;

use common::*;

/// Logits and losses: f32 through a few layers, ~1e-6 relative on both sides.
const LOGIT_TOL: f64 = 1e-4;
/// LoRA gradients summed over tokens and layers.
const GRAD_TOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The tensors of expected.safetensors: f32 as f64, i32 as i64.
struct Expected {
    f: HashMap<String, (Vec<f64>, Vec<usize>)>,
    i: HashMap<String, Vec<i64>>,
}

impl Expected {
    fn read(dir: &Path) -> Expected {
        let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (mut f, mut i) = (HashMap::new(), HashMap::new());
        for (name, v) in st.tensors() {
            let words = v.data().chunks_exact(4).map(|b| [b[0], b[1], b[2], b[3]]);
            match v.dtype() {
                safetensors::Dtype::F32 => {
                    f.insert(name, (words.map(|w| f32::from_le_bytes(w) as f64).collect(), v.shape().to_vec()));
                }
                safetensors::Dtype::I32 => {
                    i.insert(name, words.map(|w| i32::from_le_bytes(w) as i64).collect());
                }
                other => panic!("unexpected dtype {other:?} for {name}"),
            }
        }
        Expected { f, i }
    }

    fn f(&self, name: &str) -> &[f64] {
        &self.f.get(name).unwrap_or_else(|| panic!("fixture has no `{name}`")).0
    }

    /// The batch as kiln takes it: ids, key mask, and targets shifted left (HF shifts inside).
    fn batch(&self) -> (LmInput, Vec<i32>) {
        self.batch_on(gpu())
    }

    fn batch_on(&self, g: &kiln::Gpu) -> (LmInput, Vec<i32>) {
        let ids: Vec<u32> = self.i["input_ids"].iter().map(|&x| x as u32).collect();
        let mask: Vec<u32> = self.i["attention_mask"].iter().map(|&x| x as u32).collect();
        let labels = &self.i["labels"];
        let (b, t) = (2, ids.len() / 2);
        let targets = (0..b * t).map(|k| if k % t == t - 1 { -100 } else { labels[k + 1] as i32 }).collect();
        (LmInput::new(g, ids, b, t, Some(&mask)).unwrap(), targets)
    }
}

/// Logits where the attention mask is 1 (padded positions' logits are implementation detail).
fn real_positions(logits: &[f32], mask: &[i64], vocab: usize) -> Vec<f32> {
    mask.iter()
        .enumerate()
        .filter(|(_, m)| **m == 1)
        .flat_map(|(k, _)| logits[k * vocab..(k + 1) * vocab].to_vec())
        .collect()
}

fn expected_real(e: &Expected, name: &str, vocab: usize) -> Vec<f64> {
    let all: Vec<f32> = e.f(name).iter().map(|&x| x as f32).collect();
    real_positions(&all, &e.i["attention_mask"], vocab).iter().map(|&x| x as f64).collect()
}

fn check_logits(what: &str, model: &dyn CausalLm, e: &Expected, name: &str) {
    let (input, _) = e.batch();
    let v = model.shape().vocab;
    let got = model.all_logits(gpu(), &input).unwrap().to_f32_vec(gpu()).unwrap();
    assert_close(what, &real_positions(&got, &e.i["attention_mask"], v), &expected_real(e, name, v), LOGIT_TOL, 1e-4);
}

fn loss_of(model: &dyn CausalLm, e: &Expected) -> f32 {
    let (input, targets) = e.batch();
    let tape = Tape::no_grad(gpu());
    model.loss(&tape, &input, &targets).unwrap().read(gpu()).unwrap().0
}

fn base_matches(name: &str) {
    let dir = fixture(name);
    let e = Expected::read(&dir);
    let model = load_causal_lm(gpu(), &dir).unwrap();
    check_logits(&format!("{name} logits"), model.as_ref(), &e, "logits");
    assert_close(&format!("{name} loss"), &[loss_of(model.as_ref(), &e)], e.f("loss"), LOGIT_TOL, 1e-5);
}

#[test]
fn gpt2_logits_and_loss_match_transformers() {
    base_matches("gpt2_tiny");
}

#[test]
fn llama_logits_and_loss_match_transformers() {
    base_matches("llama_tiny");
}

/// PEFT's adapter loads; logits, loss and every LoRA gradient match PEFT's; merging gives the
/// merged model's logits.
fn lora_matches(name: &str) {
    adapter_matches(name, "");
}

/// [`lora_matches`] for the adapter under `<fixture>/<sub>/` (its own expected.safetensors with
/// the adapter's logits, loss, gradients and merged logits; inputs and base from the fixture).
fn adapter_matches(name: &str, sub: &str) {
    let g = gpu();
    let dir = fixture(name);
    let mut e = Expected::read(&dir);
    let adapter_dir = dir.join(sub);
    if !sub.is_empty() {
        e.f.retain(|k, _| !k.starts_with("grad."));
        e.f.extend(Expected::read(&adapter_dir).f);
    }
    let mut model = load_causal_lm(g, &dir).unwrap();
    model.load_adapter(g, &adapter_dir.join("peft_adapter")).unwrap();
    check_logits(&format!("{name} lora logits"), model.as_ref(), &e, "lora_logits");

    let (input, targets) = e.batch();
    let tape = Tape::train(g, 0, 1);
    let loss = model.loss(&tape, &input, &targets).unwrap();
    tape.backward(&loss, 1.0).unwrap();
    assert_close(&format!("{name} lora loss"), &[loss.read(g).unwrap().0], e.f("lora_loss"), LOGIT_TOL, 1e-5);
    let mut checked = 0;
    model.visit_params(&mut |p| {
        if let Some(grad) = &p.grad {
            let key = format!("grad.base_model.model.{}", p.name);
            assert_close(&format!("{name} {key}"), &grad.to_f32_vec(g).unwrap(), e.f(&key), GRAD_TOL, 1e-3);
            checked += 1;
        }
    });
    let expected_grads = e.f.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(checked, expected_grads, "every LoRA matrix of the fixture has a gradient in kiln");

    model.merge_lora(g).unwrap();
    check_logits(&format!("{name} merged logits"), model.as_ref(), &e, "merged_logits");
}

#[test]
fn gpt2_lora_matches_peft() {
    lora_matches("gpt2_tiny");
}

#[test]
fn llama_lora_matches_peft() {
    lora_matches("llama_tiny");
}

/// DoRA (PEFT's `use_dora`): logits, loss, the gradients of A, B and the magnitude, and the
/// merged model, against PEFT 0.21 with non-zero B (so ||W + s·B·A|| ≠ ||W||).
#[test]
fn llama_dora_matches_peft() {
    adapter_matches("llama_tiny", "dora");
}

/// The same through GPT-2's `[in, out]` Conv1D weights (PEFT's `fan_in_fan_out`).
#[test]
fn gpt2_dora_matches_peft() {
    adapter_matches("gpt2_tiny", "dora");
}

/// Greedy decoding through the KV cache reproduces transformers' `generate`.
fn greedy_matches(name: &str) {
    let dir = fixture(name);
    let e = Expected::read(&dir);
    let model = load_causal_lm(gpu(), &dir).unwrap();
    let want: Vec<u32> = e.i["greedy_ids"].iter().map(|&x| x as u32).collect();
    let new = want.len() - 4;
    let got = generate(gpu(), model.as_ref(), &want[..4], new, Sampling::greedy(), &[], &mut |_| Ok(())).unwrap();
    assert_eq!(got, want[4..], "{name}: greedy continuation of {:?}", &want[..4]);
}

#[test]
fn gpt2_greedy_generation_matches_transformers() {
    greedy_matches("gpt2_tiny");
}

#[test]
fn llama_greedy_generation_matches_transformers() {
    greedy_matches("llama_tiny");
}

/// With its adapters switched off a LoRA model is its base; the mean KL from the base equals the
/// one computed from the fixture's transformers (base) and PEFT (adapted) logits.
fn kl_from_base_matches(name: &str) {
    let g = gpu();
    let dir = fixture(name);
    let e = Expected::read(&dir);
    let mut model = load_causal_lm(g, &dir).unwrap();
    model.load_adapter(g, &dir.join("peft_adapter")).unwrap();
    let (input, _) = e.batch();
    let off = forgetting::with_adapters_off(model.as_mut(), |m| m.all_logits(g, &input)?.to_f32_vec(g)).unwrap();
    let base = load_causal_lm(g, &dir).unwrap().all_logits(g, &input).unwrap().to_f32_vec(g).unwrap();
    assert_close(&format!("{name} logits with adapters off"), &off, &f64s(&base), 1e-6, 0.0);
    // Switched back on: PEFT's logits again.
    check_logits(&format!("{name} lora logits after switching back"), model.as_ref(), &e, "lora_logits");

    let (v, t) = (model.shape().vocab, 7);
    let (ids, mask) = (&e.i["input_ids"], &e.i["attention_mask"]);
    let (mut examples, mut want, mut rows) = (Vec::new(), 0.0, 0);
    for r in 0..2 {
        let len = mask[r * t..(r + 1) * t].iter().filter(|&&m| m == 1).count();
        let row_ids: Vec<u32> = ids[r * t..r * t + len].iter().map(|&x| x as u32).collect();
        let mut loss_mask = vec![true; len];
        loss_mask[0] = false;
        examples.push(Example { ids: row_ids, loss_mask, truncated: false });
        for pos in 0..len - 1 {
            let k = (r * t + pos) * v;
            let row = |key: &str| e.f(key)[k..k + v].iter().map(|&x| x as f32).collect::<Vec<_>>();
            want += forgetting::kl_divergence(&row("logits"), &row("lora_logits"));
            rows += 1;
        }
    }
    let got = forgetting::mean_kl_from_base(g, model.as_mut(), &examples).unwrap();
    want /= rows as f64;
    assert!(want > 1e-4, "{name}: the fixture's adapter moves the distribution ({want})");
    assert!(
        (got - want).abs() < 1e-4 * want.max(1.0),
        "{name}: mean KL from the base {got}, PyTorch's logits give {want}"
    );
}

#[test]
fn gpt2_kl_from_base_matches_pytorch() {
    kl_from_base_matches("gpt2_tiny");
}

#[test]
fn llama_kl_from_base_matches_pytorch() {
    kl_from_base_matches("llama_tiny");
}

/// Retain samples are the model's own: seeded, one start token untrained, every sampled token a
/// target, at most the asked length, ending at a stop token when one comes.
#[test]
fn retain_samples_are_seeded_draws_of_the_model() {
    let g = gpu();
    let model = load_causal_lm(g, &fixture("llama_tiny")).unwrap();
    let draw = |seed| forgetting::sample_retain_set(g, model.as_ref(), 1, &[2], 6, 9, seed, &mut |_| Ok(())).unwrap();
    let (a, b, c) = (draw(7), draw(7), draw(8));
    let ids = |s: &[Example]| s.iter().map(|x| x.ids.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b), "the same seed draws the same samples");
    assert_ne!(ids(&a), ids(&c), "another seed draws others");
    assert_eq!(a.len(), 6);
    let distinct: std::collections::HashSet<_> = ids(&a).into_iter().collect();
    assert!(distinct.len() > 1, "samples differ from one another: {:?}", ids(&a));
    for x in &a {
        assert_eq!(x.ids[0], 1);
        assert!(x.ids.len() >= 2 && x.ids.len() <= 10, "{:?}", x.ids);
        assert!(!x.loss_mask[0]);
        assert!(x.loss_mask[1..].iter().all(|&m| m));
        // A stop token ends a sample.
        if let Some(p) = x.ids[1..].iter().position(|&t| t == 2) {
            assert_eq!(p + 2, x.ids.len(), "{:?}", x.ids);
        }
    }
}

/// `--dropout` reaches GPT-2's own layers: at 0 a training tape computes the inference loss, at
/// 0.5 it does not; Llama has none to set and says so.
#[test]
fn gpt2_dropout_is_settable_and_llama_refuses() {
    let g = gpu();
    let e = Expected::read(&fixture("gpt2_tiny"));
    let mut model = load_causal_lm(g, &fixture("gpt2_tiny")).unwrap();
    let (input, targets) = e.batch();
    let loss = |m: &dyn CausalLm, tape: &Tape| m.loss(tape, &input, &targets).unwrap().read(g).unwrap().0;
    let eval = loss(model.as_ref(), &Tape::no_grad(g));
    model.set_dropout(0.0).unwrap();
    assert_eq!(loss(model.as_ref(), &Tape::train(g, 0, 1)), eval);
    model.set_dropout(0.5).unwrap();
    assert_ne!(loss(model.as_ref(), &Tape::train(g, 0, 1)), eval);
    let mut llama = load_causal_lm(g, &fixture("llama_tiny")).unwrap();
    assert!(llama.set_dropout(0.1).unwrap_err().to_string().contains("no dropout layers"));
}

/// An adapter kiln saves loads back (in kiln) with the same logits; `scripts/check_peft_roundtrip.py`
/// proves real PEFT reads it too.
#[test]
fn adapter_save_and_load_round_trip() {
    let g = gpu();
    let dir = fixture("llama_tiny");
    let e = Expected::read(&dir);
    let mut model = load_causal_lm(g, &dir).unwrap();
    let cfg = model.load_adapter(g, &dir.join("peft_adapter")).unwrap();
    let (input, _) = e.batch();
    let before = model.all_logits(g, &input).unwrap().to_f32_vec(g).unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save_adapter(g, &cfg, TaskType::CausalLm, "llama_tiny", out.path()).unwrap();
    let mut again = load_causal_lm(g, &dir).unwrap();
    let cfg2 = again.load_adapter(g, out.path()).unwrap();
    assert_eq!(cfg, cfg2);
    let after = again.all_logits(g, &input).unwrap().to_f32_vec(g).unwrap();
    assert_close("reloaded adapter logits", &after, &f64s(&before), 0.0, 0.0);
}

/// Only what is trainable costs anything: a frozen model records no op; LoRA on the last layer
/// only records that layer and what follows it, nothing below.
#[test]
fn tape_records_only_above_the_lowest_trainable_tensor() {
    let g = gpu();
    let dir = fixture("llama_tiny");
    let e = Expected::read(&dir);
    let (input, targets) = e.batch();
    let mut model = load_causal_lm(g, &dir).unwrap();
    let tape = Tape::train(g, 0, 1);
    let loss = model.loss(&tape, &input, &targets).unwrap();
    assert_eq!(tape.recorded(), 0, "a frozen model records nothing: {:?}", tape.recorded_names());
    let err = tape.backward(&loss, 1.0).unwrap_err().to_string();
    assert!(err.contains("does not depend on any trainable"), "{err}");

    let cfg = LoraConfig {
        r: 2,
        alpha: 4.0,
        dropout: 0.0,
        target_modules: vec!["model.layers.1.self_attn.v_proj".into()],
        use_rslora: false,
        use_dora: false,
    };
    assert_eq!(model.add_lora(g, &cfg, 7).unwrap(), 1);
    let tape = Tape::train(g, 0, 1);
    model.loss(&tape, &input, &targets).unwrap();
    let names = tape.recorded_names();
    // v_proj (with LoRA), attention, o_proj, residual add, norm, MLP (gate, up, swiglu, down),
    // residual add, final norm, the loss: no embedding, no layer 0, no q/k projections or RoPE.
    assert_eq!(names.first(), Some(&"linear+lora"), "{names:?}");
    assert!(!names.contains(&"embedding") && !names.contains(&"rope"), "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "attention").count(), 1, "{names:?}");
    assert_eq!(names.last(), Some(&"linear_cross_entropy"), "{names:?}");
}

/// Two micro-batches with seed ½ each accumulate the same gradient as one pass with seed 1.
#[test]
fn gradients_accumulate_across_micro_batches() {
    let g = gpu();
    let dir = fixture("gpt2_tiny");
    let e = Expected::read(&dir);
    let (input, targets) = e.batch();
    let grads = |passes: usize| {
        let mut model = load_causal_lm(g, &dir).unwrap();
        model.load_adapter(g, &dir.join("peft_adapter")).unwrap();
        for _ in 0..passes {
            let tape = Tape::train(g, 0, 1);
            let loss = model.loss(&tape, &input, &targets).unwrap();
            tape.backward(&loss, 1.0 / passes as f32).unwrap();
        }
        let mut out = Vec::new();
        model.visit_params(&mut |p| {
            if let Some(gr) = &p.grad {
                out.extend(gr.to_f32_vec(g).unwrap());
            }
        });
        out
    };
    let (one, two) = (grads(1), grads(2));
    assert!(one.iter().any(|&x| x != 0.0));
    assert_close("accumulated gradients", &two, &f64s(&one), 1e-6, 1e-5);
}

/// A training step (batch upload, forward, backward, clipping, AdamW) records into command
/// buffers submitted in chunks of `submit_every` dispatches while it records (so a GPU starts
/// on a long step early), and the rest once when the loss is read back; the loss is the same
/// as with the whole step in one submit.
#[test]
fn a_training_step_is_submitted_in_chunks() {
    // A device of its own: the other tests of this binary submit on the shared one meanwhile.
    let own = kiln::Gpu::new(&kiln::gpu::AdapterChoice::from_flag_or_env(None)).expect("GPU tests need an adapter");
    let g = &own;
    let dir = fixture("llama_tiny");
    let e = Expected::read(&dir);
    let mut model = load_causal_lm(g, &dir).unwrap();
    model.load_adapter(g, &dir.join("peft_adapter")).unwrap();
    let mut opt = kiln::train::Optimizer::new(Default::default(), Some(1.0));
    let mut losses = Vec::new();
    for every in [100_000, 16] {
        g.set_submit_every(every);
        g.synchronize().unwrap();
        let before = g.counts();
        let (input, targets) = e.batch_on(g);
        let tape = Tape::train(g, 0, 1);
        let loss = model.loss(&tape, &input, &targets).unwrap();
        tape.backward(&loss, 1.0).unwrap();
        opt.step(g, model.as_ref(), 0.0).unwrap();
        let recorded = g.counts().since(&before);
        // A chunk is submitted when the next dispatch would be its `every + 1`-th.
        let chunks = (recorded.dispatches - 1) / every as u64;
        assert!(recorded.dispatches > 16, "the step is long enough to be chunked");
        assert_eq!(recorded.submits, chunks, "only full chunks are submitted before the loss is read");
        let (value, _) = loss.read(g).unwrap();
        assert!(value.is_finite());
        assert_eq!(g.counts().since(&before).submits, chunks + 1, "reading the loss submits the rest once");
        losses.push(value);
    }
    assert_eq!(losses[0].to_bits(), losses[1].to_bits(), "chunking changes no bit of the loss");
}

/// A checkpoint that does not fit its config is refused with the tensor named: a wrong shape,
/// a missing tensor, an unexpected one.
#[test]
fn mismatched_checkpoints_name_the_tensor() {
    let g = gpu();
    let src = fixture("llama_tiny");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, Vec<f32>, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let data = v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            (n, data, v.shape().to_vec())
        })
        .collect();
    let write = |config: &serde_json::Value, tensors: &[(String, Vec<f32>, Vec<usize>)]| {
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        kiln::formats::safetensors::save_safetensors(&dir.join("model.safetensors"), tensors, None).unwrap();
    };
    let load_err = || load_causal_lm(g, dir).err().expect("the checkpoint is refused").to_string();

    let mut wider = config.clone();
    wider["intermediate_size"] = 50.into();
    write(&wider, &tensors);
    let err = load_err();
    assert!(err.contains("model.layers.0.mlp.gate_proj.weight") && err.contains("[48, 32]"), "{err}");

    let without: Vec<_> = tensors.iter().filter(|t| t.0 != "model.norm.weight").cloned().collect();
    write(&config, &without);
    let err = load_err();
    assert!(err.contains("missing tensor `model.norm.weight`"), "{err}");

    let mut extra = tensors.clone();
    extra.push(("model.layers.2.self_attn.q_proj.weight".into(), vec![0.0; 4], vec![2, 2]));
    write(&config, &extra);
    let err = load_err();
    assert!(err.contains("unexpected") && err.contains("model.layers.2.self_attn.q_proj.weight"), "{err}");
}

#[path = "models/checkpoint.rs"]
mod checkpoint;
#[path = "models/efficientnet_lite.rs"]
mod efficientnet_lite;
#[path = "models/encoder.rs"]
mod encoder;
#[path = "models/images.rs"]
mod images;
#[path = "models/resnet.rs"]
mod resnet;

#[path = "models/sixteen.rs"]
mod sixteen;
#[path = "models/tokenizers.rs"]
mod tokenizers;

#[path = "models/families.rs"]
mod families;

/// A quantized base computes what its dequantized f32 copy computes: logits (tiled and skinny
/// paths), the LoRA loss and every LoRA gradient (which flow back through the quantized layers'
/// dX kernel: layer 0's adapters see the gradient through layer 1's frozen blocks), and the
/// merge (which dequantizes). GPT-2's Conv1D weights are transposed to [out, in] blocks.
fn quantized_base_equals_its_dequantized_copy(name: &str, kind: QuantType) {
    quantized_base_with_adapter(name, kind, "peft_adapter");
}

fn quantized_base_with_adapter(name: &str, kind: QuantType, adapter: &str) {
    let g = gpu();
    let dir = fixture(name);
    let e = Expected::read(&dir);
    let mut q = load_causal_lm(g, &dir).unwrap();
    let f32_loss = loss_of(q.as_ref(), &e);
    let report = quantize::quantize_linears(g, q.as_mut(), kind).unwrap();
    eprintln!("{name} {kind}: {}", report.lines().join("\n"));
    let mut d = load_causal_lm(g, &dir).unwrap();
    quantize::quantize_linears(g, d.as_mut(), kind).unwrap();
    assert!(quantize::dequantize_linears(g, d.as_mut()).unwrap() > 0);
    assert!(quantize::quantized_summary(d.as_mut()).is_empty());
    let quant_loss = loss_of(q.as_ref(), &e);
    eprintln!("{name} {kind}: loss {f32_loss} (f32) -> {quant_loss}");
    assert!((quant_loss - f32_loss).abs() < 0.05 * f32_loss, "{kind} moved the loss from {f32_loss} to {quant_loss}");
    for m in [&mut q, &mut d] {
        m.load_adapter(g, &dir.join(adapter)).unwrap();
    }
    let (input, targets) = e.batch();
    let what = format!("{name} {kind}");
    assert!(assert_same_logits_and_grads(g, &what, q.as_ref(), d.as_ref(), &input, &targets) > 0);
    let logits = |m: &dyn CausalLm| m.all_logits(g, &input).unwrap().to_f32_vec(g).unwrap();
    q.merge_lora(g).unwrap();
    d.merge_lora(g).unwrap();
    assert_close(&format!("{what} merged logits"), &logits(q.as_ref()), &f64s(&logits(d.as_ref())), LOGIT_TOL, 1e-4);
}

/// Checks that two models meant to be equal give the same logits, last-position logits and
/// parameter gradients (same names, none all zero) on one batch; returns how many gradients.
fn assert_same_logits_and_grads(
    g: &kiln::Gpu,
    what: &str,
    q: &dyn CausalLm,
    d: &dyn CausalLm,
    input: &LmInput,
    targets: &[i32],
) -> usize {
    let logits = |m: &dyn CausalLm| m.all_logits(g, input).unwrap().to_f32_vec(g).unwrap();
    assert_close(&format!("{what} logits"), &logits(q), &f64s(&logits(d)), LOGIT_TOL, 1e-4);
    let last = |m: &dyn CausalLm| m.last_logits(g, input, None).unwrap().to_f32_vec(g).unwrap();
    assert_close(&format!("{what} last logits"), &last(q), &f64s(&last(d)), LOGIT_TOL, 1e-4);
    let mut grads = Vec::new();
    for m in [q, d] {
        let tape = Tape::train(g, 0, 1);
        let loss = m.loss(&tape, input, targets).unwrap();
        tape.backward(&loss, 1.0).unwrap();
        let mut gs = Vec::new();
        m.visit_params(&mut |p| {
            if let Some(grad) = &p.grad {
                gs.push((p.name.clone(), grad.to_f32_vec(g).unwrap()));
            }
        });
        grads.push(gs);
    }
    assert_eq!(grads[0].len(), grads[1].len(), "{what}: gradient count");
    for ((nq, gq), (nd, gd)) in grads[0].iter().zip(&grads[1]) {
        assert_eq!(nq, nd);
        assert!(gq.iter().any(|&v| v != 0.0), "{what} {nq}: zero gradient");
        assert_close(&format!("{what} {nq}"), gq, &f64s(gd), GRAD_TOL, 1e-3);
    }
    grads[0].len()
}

#[test]
fn llama_quantized_base_lora_equals_dequantized() {
    // The K-quants need rows of 256: `llama_k_quantized_base_lora_equals_dequantized`.
    for kind in QuantType::ALL.into_iter().filter(|k| !k.is_k_quant()) {
        quantized_base_equals_its_dequantized_copy("llama_tiny", kind);
    }
}

/// Qwen2 (q/k/v biases beside the blocks) and Qwen3 (per-head q/k norms, head_dim 12) with a
/// frozen base in each 32-block type: the same as their dequantized copies.
#[test]
fn qwen_quantized_base_lora_equals_dequantized() {
    for name in ["qwen2_tiny", "qwen3_tiny"] {
        for kind in QuantType::ALL.into_iter().filter(|k| !k.is_k_quant()) {
            quantized_base_equals_its_dequantized_copy(name, kind);
        }
    }
}

/// DoRA on a quantized base: the norm of W + s·B·A comes from the dequantized rows, so the
/// logits, gradients (magnitudes included) and merge equal those of the dequantized copy.
#[test]
fn quantized_base_dora_equals_dequantized() {
    quantized_base_with_adapter("llama_tiny", QuantType::Q8_0, "dora/peft_adapter");
    quantized_base_with_adapter("gpt2_tiny", QuantType::Q4_0, "dora/peft_adapter");
}

/// Switching DoRA adapters off (forgetting's base comparison) gives the base model, not the
/// magnitude-scaled one; switched back on, PEFT's DoRA logits again.
#[test]
fn dora_adapters_off_is_the_base() {
    let g = gpu();
    let dir = fixture("llama_tiny");
    let mut e = Expected::read(&dir);
    e.f.extend(Expected::read(&dir.join("dora")).f);
    let mut model = load_causal_lm(g, &dir).unwrap();
    model.load_adapter(g, &dir.join("dora/peft_adapter")).unwrap();
    let (input, _) = e.batch();
    let off = forgetting::with_adapters_off(model.as_mut(), |m| m.all_logits(g, &input)?.to_f32_vec(g)).unwrap();
    let base = load_causal_lm(g, &dir).unwrap().all_logits(g, &input).unwrap().to_f32_vec(g).unwrap();
    assert_close("DoRA adapters off", &off, &f64s(&base), 1e-6, 0.0);
    check_logits("DoRA logits after switching back", model.as_ref(), &e, "lora_logits");
}

/// A DoRA adapter kiln saves says `use_dora: true`, holds the magnitudes under PEFT's key and
/// loads back (in kiln) with the same logits; `check_peft_roundtrip.py --dora` has real PEFT
/// read it.
#[test]
fn dora_adapter_save_and_load_round_trip() {
    let g = gpu();
    let dir = fixture("gpt2_tiny");
    let e = Expected::read(&dir);
    let mut model = load_causal_lm(g, &dir).unwrap();
    let cfg = model.load_adapter(g, &dir.join("dora/peft_adapter")).unwrap();
    assert!(cfg.use_dora);
    let (input, _) = e.batch();
    let before = model.all_logits(g, &input).unwrap().to_f32_vec(g).unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save_adapter(g, &cfg, TaskType::CausalLm, "gpt2_tiny", out.path()).unwrap();
    let text = std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap();
    assert!(text.contains("\"use_dora\": true"), "{text}");
    let bytes = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let m = st.tensor("base_model.model.transformer.h.1.mlp.c_fc.lora_magnitude_vector").unwrap();
    assert_eq!(m.shape(), [128]);
    let mut again = load_causal_lm(g, &dir).unwrap();
    assert_eq!(again.load_adapter(g, out.path()).unwrap(), cfg);
    let after = again.all_logits(g, &input).unwrap().to_f32_vec(g).unwrap();
    assert_close("reloaded DoRA adapter logits", &after, &f64s(&before), 0.0, 0.0);
}

#[test]
fn gpt2_quantized_base_lora_equals_dequantized() {
    quantized_base_equals_its_dequantized_copy("gpt2_tiny", QuantType::Q4_1);
}

#[test]
fn llama_rows_off_the_block_size_stay_f32_and_are_named() {
    let g = gpu();
    let mut m = load_causal_lm(g, &fixture("llama_tiny")).unwrap();
    let r = quantize::quantize_linears(g, m.as_mut(), QuantType::Q8_0).unwrap();
    // intermediate_size 48: down_proj's rows of 48 inputs are not whole blocks of 32.
    assert_eq!(r.tensors, 2 * 6);
    assert_eq!(r.kept_f32.len(), 2);
    assert!(r.kept_f32[0].contains("mlp.down_proj.weight") && r.kept_f32[0].contains("48"), "{:?}", r.kept_f32);
    assert_eq!(r.by_type.keys().collect::<Vec<_>>(), ["gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]);
    assert!(r.bytes_quantized * 3 < r.bytes_f32);
}

/// The memory estimate: LoRA's state is 3× its parameters (gradient and two moments), a
/// quantized base shrinks the weights, and a budget or a binding limit it does not fit is
/// refused with a message that names what to lower.
#[test]
fn memory_estimate_and_refusal() {
    use kiln::train::memory::{check_fits, estimate_lm};
    let g = gpu();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        use_rslora: false,
        use_dora: false,
    };
    let mut m = load_causal_lm(g, &fixture("llama_tiny")).unwrap();
    m.add_lora(g, &cfg, 0).unwrap();
    let f = estimate_lm(m.as_mut(), 4, 16);
    quantize::quantize_linears(g, m.as_mut(), QuantType::Q4_1).unwrap();
    let q = estimate_lm(m.as_mut(), 4, 16);
    // 2 layers × (q: 4·32 + 32·4, v: 4·32 + 16·4) LoRA weights.
    let lora = 2 * (4 * 32 + 32 * 4 + 4 * 32 + 16 * 4) as u64;
    assert_eq!(f.trainable_params, lora);
    assert_eq!((f.gradients, f.optimizer), (4 * lora, 8 * lora));
    assert_eq!(f.weights_quantized, 0);
    assert!(q.weights_quantized > 0 && q.weights_f32 + q.weights_quantized < f.weights_f32);
    assert_eq!(q.activations, f.activations);
    eprintln!("{}\n{}", f.table(), q.table());
    assert!(f.table().contains("AdamW moments"));
    let limits = g.limits().clone();
    check_fits(&f, &limits, Some((1 << 30, "test")), false).unwrap();
    let e = check_fits(&f, &limits, Some((f.total() - 1, "test budget")), false).unwrap_err().to_string();
    assert!(e.contains("lower --batch-size (now 4) or --max-len (now 16)") && e.contains("--quantize"), "{e}");
    let e = check_fits(&q, &limits, Some((q.total() - 1, "test budget")), true).unwrap_err().to_string();
    assert!(!e.contains("--quantize") && e.contains("test budget"), "{e}");
    let mut small = limits.clone();
    small.max_storage_buffer_binding_size = 1024;
    let e = check_fits(&f, &small, None, false).unwrap_err().to_string();
    assert!(e.contains("max_storage_buffer_binding_size") && e.contains('`'), "{e}");
    // Logits over one binding are no reason to refuse: the loss binds them 64 rows at a time
    // (`linear_cross_entropy_splits_a_head_larger_than_one_binding`). 256 tokens of a 96-word
    // vocabulary are 96 KiB of logits; under a 64 KiB binding only 64 rows (24 KiB) must fit.
    let wide = estimate_lm(m.as_mut(), 16, 16);
    small.max_storage_buffer_binding_size = 64 << 10;
    assert!(4 * 256 * 96 > small.max_storage_buffer_binding_size);
    check_fits(&wide, &small, None, true).unwrap();
    assert_eq!(wide.largest_tensor.1, (4 * 256 * 48) as u64, "{:?}", wide.largest_tensor);
    // Under 24 KiB not even 64 rows fit: no flag can help, and the message says so.
    small.max_storage_buffer_binding_size = 20 << 10;
    let e = check_fits(&f, &small, None, true).unwrap_err().to_string();
    assert!(e.contains("logits (64 rows") && e.contains("vocabulary is too wide") && e.contains("--adapter"), "{e}");
}

/// A Llama whose linear rows are whole K-quant super-blocks (hidden 256, FFN 512), written with
/// seeded random weights: the tiny fixture's rows of 32 and 48 cannot hold 256-weight blocks.
/// Its K-quantized base computes what its dequantized f32 copy computes: logits (tiled and
/// skinny paths), the loss, every LoRA gradient (through the frozen blocks' dX kernel) and the
/// merge. For every K-quant (Q4_K_M/Q5_K_M files mix Q4_K/Q5_K with Q6_K; Q3_K_M and Q2_K
/// files add Q3_K and Q2_K).
#[test]
fn llama_k_quantized_base_lora_equals_dequantized() {
    let g = gpu();
    let dir = std::env::temp_dir().join(format!("kiln_kquant_llama_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("llama_tiny").join("config.json")).unwrap()).unwrap();
    let (hidden, ffn, heads, kv, head_dim, vocab) = (256, 512, 8, 4, 32, 96);
    config["hidden_size"] = hidden.into();
    config["intermediate_size"] = ffn.into();
    config["num_attention_heads"] = heads.into();
    config["num_key_value_heads"] = kv.into();
    config["head_dim"] = head_dim.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut rng = Rng::new(77);
    let mut tensors = vec![
        ("model.embed_tokens.weight".to_string(), rng.vec(vocab * hidden), vec![vocab, hidden]),
        ("model.norm.weight".to_string(), vec![1.0; hidden], vec![hidden]),
    ];
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        let (q, kvd) = (heads * head_dim, kv * head_dim);
        for (name, out, inp) in [
            ("self_attn.q_proj", q, hidden),
            ("self_attn.k_proj", kvd, hidden),
            ("self_attn.v_proj", kvd, hidden),
            ("self_attn.o_proj", hidden, q),
            ("mlp.gate_proj", ffn, hidden),
            ("mlp.up_proj", ffn, hidden),
            ("mlp.down_proj", hidden, ffn),
        ] {
            // Uniform in ±sqrt(3/fan_in): unit-variance outputs, so the logits stay O(1).
            let s = (3.0 / inp as f32).sqrt();
            let w: Vec<f32> = rng.vec(out * inp).iter().map(|v| v * s).collect();
            tensors.push((format!("{p}.{name}.weight"), w, vec![out, inp]));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.push((format!("{p}.{norm}.weight"), vec![1.0; hidden], vec![hidden]));
        }
    }
    kiln::formats::safetensors::save_safetensors(&dir.join("model.safetensors"), &tensors, None).unwrap();

    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: ["q_proj", "v_proj", "o_proj", "down_proj"].map(String::from).to_vec(),
        use_rslora: false,
        use_dora: false,
    };
    let (b, t) = (2, 7);
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 37 % vocab) as u32).collect();
    let targets: Vec<i32> = (0..b * t).map(|i| if i % t == t - 1 { -100 } else { (i * 11 % vocab) as i32 }).collect();
    let input = LmInput::new(g, ids, b, t, None).unwrap();
    for kind in QuantType::ALL.into_iter().filter(|k| k.is_k_quant()) {
        let what = format!("llama 256 {kind}");
        let mut models = Vec::new();
        for dequantized in [false, true] {
            let mut m = load_causal_lm(g, &dir).unwrap();
            let report = quantize::quantize_linears(g, m.as_mut(), kind).unwrap();
            // Every linear's rows are whole super-blocks: nothing stays f32.
            assert_eq!((report.tensors, report.kept_f32.len()), (14, 0), "{what}: {:?}", report.kept_f32);
            if dequantized {
                assert_eq!(quantize::dequantize_linears(g, m.as_mut()).unwrap(), 14);
            } else {
                eprintln!("{what}: {}", report.lines().join("\n"));
            }
            m.add_lora(g, &cfg, 5).unwrap();
            // B starts at zero; give it values so that A's gradients are not zero.
            let mut k = 0;
            m.visit_params_mut(&mut |p| {
                if p.name.contains("lora_B") {
                    let n = p.value.numel();
                    let v: Vec<f32> = (0..n).map(|i| ((i + k) % 7) as f32 * 0.01 - 0.03).collect();
                    p.value.write_f32(g, &v).unwrap();
                    k += 1;
                }
            });
            models.push(m);
        }
        let (q, d) = (&models[0], &models[1]);
        let grads = assert_same_logits_and_grads(g, &what, q.as_ref(), d.as_ref(), &input, &targets);
        assert_eq!(grads, 2 * 4 * 2, "{what}: A and B of 4 targets in 2 layers");
        let logits = |m: &dyn CausalLm| m.all_logits(g, &input).unwrap().to_f32_vec(g).unwrap();
        for m in &mut models {
            m.merge_lora(g).unwrap();
        }
        let (q, d) = (&models[0], &models[1]);
        assert_close(
            &format!("{what} merged logits"),
            &logits(q.as_ref()),
            &f64s(&logits(d.as_ref())),
            LOGIT_TOL,
            1e-4,
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Sequence packing: six examples of different lengths (some tokens not trained) packed into
/// two rows equal, example by example, their losses unpacked (to 1e-5), and the packed batch's
/// loss and LoRA gradients equal those of the same examples padded one per row. Positions
/// restart per example (RoPE, or GPT-2's learned positions) and attention stays inside each
/// (Mistral's sliding window included).
fn packed_equals_unpacked(name: &str) {
    use kiln::data::{lm::make_batches, packing};
    let g = gpu();
    let dir = fixture(name);
    let mut rng = Rng::new(77);
    let examples: Vec<Example> = [5usize, 3, 7, 2, 6, 4]
        .iter()
        .map(|&n| Example {
            ids: (0..n).map(|_| 3 + rng.below(90)).collect(),
            loss_mask: (0..n).map(|t| t == 0 || t % 3 != 1).collect(),
            truncated: false,
        })
        .collect();
    let packed = packing::pack_batches(&examples, 3, 14, 0, None).unwrap();
    assert_eq!(packed.len(), 1);
    let p = &packed[0];
    assert_eq!((p.batch, p.seq), (2, 14), "first fit: [5, 3, 2, 4] and [7, 6]");
    let load = || {
        let mut m = load_causal_lm(g, &dir).unwrap();
        m.load_adapter(g, &dir.join("peft_adapter")).unwrap();
        m
    };
    let model = load();
    let input = packing::lm_input(g, p).unwrap();
    // Where each example sits in the packed batch: rows are filled in first-fit order.
    let mut at = [0usize; 2];
    for (i, e) in examples.iter().enumerate() {
        let row = if [0, 1, 3, 5].contains(&i) { 0 } else { 1 };
        let start = row * p.seq + at[row];
        at[row] += e.ids.len();
        let mut targets = vec![-100; p.batch * p.seq];
        targets[start..start + e.ids.len()].copy_from_slice(&p.targets[start..start + e.ids.len()]);
        let tape = Tape::no_grad(g);
        let got = model.loss(&tape, &input, &targets).unwrap().read(g).unwrap().0;
        let alone = &make_batches(&examples[i..i + 1], 1, 0, None).unwrap()[0];
        let alone_input = LmInput::new(g, alone.ids.clone(), 1, alone.seq, None).unwrap();
        let want = model.loss(&Tape::no_grad(g), &alone_input, &alone.targets).unwrap().read(g).unwrap().0;
        assert_close(&format!("{name} example {i} packed loss"), &[got], &[want as f64], 1e-5, 0.0);
    }
    // The whole batch, with gradients: packed vs padded (one example per row).
    let mut grads = Vec::new();
    for batch in [p.clone(), make_batches(&examples, 6, 0, None).unwrap().remove(0)] {
        let m = load();
        let tape = Tape::grad_only(g);
        let loss = m.loss(&tape, &packing::lm_input(g, &batch).unwrap(), &batch.targets).unwrap();
        tape.backward(&loss, 1.0).unwrap();
        let mut gs = vec![loss.read(g).unwrap().0];
        m.visit_params(&mut |p| {
            if let Some(grad) = &p.grad {
                gs.extend(grad.to_f32_vec(g).unwrap());
            }
        });
        grads.push(gs);
    }
    assert_close(&format!("{name} packed loss and LoRA gradients"), &grads[0], &f64s(&grads[1]), 1e-5, 1e-4);
}

#[test]
fn packed_examples_equal_unpacked() {
    for name in ["llama_tiny", "gpt2_tiny", "mistral_tiny", "qwen3_tiny", "phi3_tiny", "gemma3_tiny"] {
        packed_equals_unpacked(name);
    }
}

/// A LoRA step of the tiny Llama and the tiny GPT-2 with enough tokens (2 × 24) for the frozen
/// base's products, and the tied head's, to take the tiled kernels, under f16 on cooperative
/// matrices against f32 on the same device: the loss within 1e-3 relative, the LoRA gradients
/// within 2e-2 of f32's as a vector (relative L2), and not bit-equal (f16 ran). Where the adapter has no cooperative matrices,
/// `shape_or_refusal` checks the refusal instead and says so (and fails under
/// `KILN_REQUIRE_COOP`).
#[test]
fn lora_step_under_f16_matches_f32() {
    use kiln::kernels::matmul_coop::Precision;
    let Some(_) = shape_or_refusal() else { return };
    let g = coop_gpu();
    let (batch, seq) = (2, 24);
    for name in ["llama_tiny", "gpt2_tiny"] {
        let dir = fixture(name);
        let mut rng = Rng::new(1606);
        let ids: Vec<u32> = (0..batch * seq).map(|_| 3 + rng.below(90)).collect();
        let targets: Vec<i32> = (0..batch * seq).map(|_| 3 + rng.below(90) as i32).collect();
        let run = || {
            let mut m = load_causal_lm(g, &dir).unwrap();
            m.load_adapter(g, &dir.join("peft_adapter")).unwrap();
            let input = LmInput::new(g, ids.clone(), batch, seq, None).unwrap();
            let tape = Tape::grad_only(g);
            let loss = m.loss(&tape, &input, &targets).unwrap();
            tape.backward(&loss, 1.0).unwrap();
            let mut out = vec![loss.read(g).unwrap().0];
            m.visit_params(&mut |p| {
                if let Some(grad) = &p.grad {
                    out.extend(grad.to_f32_vec(g).unwrap());
                }
            });
            out
        };
        let f32s = under_precision(Precision::F32, run);
        let f16s = under_f16(run);
        // The loss to 1e-3 relative; the LoRA gradients (summed over tokens and layers, each
        // layer's products rounded) as a whole, by their relative L2 distance.
        let (loss16, loss32) = (f16s[0] as f64, f32s[0] as f64);
        assert!((loss16 - loss32).abs() <= 1e-3 * loss32.abs(), "{name}: loss {loss16} under f16, {loss32} under f32");
        let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
        let diff = norm(&mut f16s[1..].iter().zip(&f32s[1..]).map(|(&a, &b)| a as f64 - b as f64));
        let rel = diff / norm(&mut f32s[1..].iter().map(|&b| b as f64));
        eprintln!("{name} under f16: loss {loss16} against {loss32}, LoRA gradients {rel:.2e} relative (L2)");
        assert!(rel <= 2e-2, "{name} under f16: LoRA gradients {rel:e} from f32's (relative L2)");
        assert!(f16s != f32s, "{name} under f16 equals f32 bit for bit: did f16 run?");
    }
}
