//! The BERT encoder and sequence classifier against transformers + PEFT (`bert_tiny`, made by
//! `scripts/make_fixtures.py`): hidden states, both poolings, logits, plain and class-weighted
//! losses, full-model and LoRA gradients, and PEFT SEQ_CLS adapters in both directions.

use super::*;

use kiln::autograd::Module;

use kiln::models::bert::{Bert, EncoderInput};
use kiln::models::classifier::{Pooling, SequenceClassifier};
use kiln::models::weights::save_safetensors;

const LABELS: usize = 3;

fn labels() -> Vec<String> {
    (0..LABELS).map(|i| i.to_string()).collect()
}

impl Expected {
    fn encoder_input(&self) -> EncoderInput {
        let u = |name: &str| self.i[name].iter().map(|&x| x as u32).collect::<Vec<u32>>();
        let ids = u("input_ids");
        let t = ids.len() / 2;
        EncoderInput::new(gpu(), ids, Some(u("token_type_ids")), Some(u("attention_mask")), 2, t).unwrap()
    }

    fn targets(&self) -> Vec<usize> {
        self.i["labels"].iter().map(|&x| x as usize).collect()
    }
}

fn classifier(pooling: Pooling) -> (SequenceClassifier, Expected) {
    let dir = fixture("bert_tiny");
    (SequenceClassifier::load(gpu(), &dir, labels(), pooling, 0).unwrap(), Expected::read(&dir))
}

/// Hidden states at real positions only (padded rows are an implementation detail).
fn real_hidden(h: &[f32], e: &Expected, c: usize) -> (Vec<f32>, Vec<f64>) {
    let want: Vec<f32> = e.f("hidden").iter().map(|&x| x as f32).collect();
    let mask = &e.i["attention_mask"];
    (real_positions(h, mask, c), f64s(&real_positions(&want, mask, c)))
}

#[test]
fn bert_hidden_states_poolings_and_logits_match_transformers() {
    let g = gpu();
    for (pooling, pooled, logits) in
        [(Pooling::Mean, "pooled_mean", "logits_mean"), (Pooling::Cls, "pooled_cls", "logits_cls")]
    {
        let (model, e) = classifier(pooling);
        let input = e.encoder_input();
        let tape = Tape::no_grad(g);
        let h = model.body.forward(&tape, &input).unwrap().value.to_f32_vec(g).unwrap();
        let (got, want) = real_hidden(&h, &e, 32);
        assert_close("bert hidden", &got, &want, LOGIT_TOL, 1e-4);
        let p = model.pooled(&tape, &input).unwrap().value.to_f32_vec(g).unwrap();
        assert_close(pooled, &p, e.f(pooled), LOGIT_TOL, 1e-4);
        assert_close(logits, &model.predict(g, &input).unwrap(), e.f(logits), LOGIT_TOL, 1e-4);
    }
}

/// all-MiniLM-L6-v2 ships a bare `BertModel` (no `bert.` prefix, no classifier): the same
/// weights without the prefix load and give the same hidden states.
#[test]
fn bert_loads_checkpoints_without_the_prefix() {
    let g = gpu();
    let dir = fixture("bert_tiny");
    let e = Expected::read(&dir);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = Vec::new();
    for (name, v) in st.tensors() {
        let Some(bare) = name.strip_prefix("bert.") else { continue };
        let data = v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        tensors.push((bare.to_string(), data, v.shape().to_vec()));
    }
    let out = tempfile::tempdir().unwrap();
    save_safetensors(&out.path().join("model.safetensors"), &tensors, None).unwrap();
    std::fs::copy(dir.join("config.json"), out.path().join("config.json")).unwrap();
    let bert = Bert::load(g, out.path()).unwrap();
    let h = bert.forward(&Tape::no_grad(g), &e.encoder_input()).unwrap().value.to_f32_vec(g).unwrap();
    let (got, want) = real_hidden(&h, &e, 32);
    assert_close("bare BertModel hidden", &got, &want, LOGIT_TOL, 1e-4);
    // A fresh head for another label count, on the same body.
    let fresh = SequenceClassifier::load(g, out.path(), vec!["a".into(), "b".into()], Pooling::Mean, 7).unwrap();
    assert_eq!(fresh.classifier.weight.value.shape(), &[2, 32]);
}

#[test]
fn classifier_loss_and_gradients_match_pytorch() {
    let g = gpu();
    let (mut model, e) = classifier(Pooling::Mean);
    model.set_trainable(g, &|_| true).unwrap();
    let input = e.encoder_input();
    let tape = Tape::train(g, 0, 1);
    let logits = model.logits(&tape, &input).unwrap();
    let loss = model.loss(&tape, &logits, &e.targets(), None).unwrap();
    tape.backward(&loss, 1.0).unwrap();
    assert_close("loss", &[loss.read(g).unwrap().0], e.f("loss_mean"), LOGIT_TOL, 1e-5);
    let mut checked = 0;
    model.visit_params(&mut |p| {
        let key = format!("grad.{}", p.name);
        if e.f.contains_key(&key) {
            let got = p.grad.as_ref().unwrap().to_f32_vec(g).unwrap();
            assert_close(&key, &got, e.f(&key), GRAD_TOL, 1e-3);
            checked += 1;
        }
    });
    assert_eq!(checked, 5, "every gradient of the fixture was compared");

    let weights: Vec<f32> = e.f("class_weights").iter().map(|&x| x as f32).collect();
    let tape = Tape::no_grad(g);
    let logits = model.logits(&tape, &input).unwrap();
    let weighted = model.loss(&tape, &logits, &e.targets(), Some(&weights)).unwrap();
    assert_close("class-weighted loss", &[weighted.read(g).unwrap().0], e.f("loss_weighted"), LOGIT_TOL, 1e-5);
}

/// PEFT's SEQ_CLS adapter (LoRA on query/key/value/dense, classifier in modules_to_save) loads;
/// logits, loss and every gradient (adapters and head) match PEFT's.
#[test]
fn classifier_lora_matches_peft() {
    let g = gpu();
    let (mut model, e) = classifier(Pooling::Mean);
    peft::load_classifier_adapter(g, &mut model, &fixture("bert_tiny").join("peft_adapter")).unwrap();
    model.classifier.visit_params_mut(&mut |p| p.set_trainable(g, true).unwrap());
    let input = e.encoder_input();
    assert_close("lora logits", &model.predict(g, &input).unwrap(), e.f("lora_logits"), LOGIT_TOL, 1e-4);
    let tape = Tape::train(g, 0, 1);
    let logits = model.logits(&tape, &input).unwrap();
    let loss = model.loss(&tape, &logits, &e.targets(), None).unwrap();
    tape.backward(&loss, 1.0).unwrap();
    assert_close("lora loss", &[loss.read(g).unwrap().0], e.f("lora_loss"), LOGIT_TOL, 1e-5);
    let mut checked = 0;
    model.visit_params(&mut |p| {
        if let Some(grad) = &p.grad {
            let key = format!("lora_grad.base_model.model.{}", p.name);
            assert_close(&key, &grad.to_f32_vec(g).unwrap(), e.f(&key), GRAD_TOL, 1e-3);
            checked += 1;
        }
    });
    let expected = e.f.keys().filter(|k| k.starts_with("lora_grad.")).count();
    assert_eq!(checked, expected, "every trainable tensor of the fixture has a gradient in kiln");
}

/// A SEQ_CLS adapter kiln saves (LoRA + head + labels and pooling) loads back with the same
/// logits; `scripts/check_peft_roundtrip.py --seq-cls` proves real PEFT reads it too.
#[test]
fn classifier_adapter_save_and_load_round_trip() {
    let g = gpu();
    let (mut model, e) = classifier(Pooling::Cls);
    let cfg = peft::load_classifier_adapter(g, &mut model, &fixture("bert_tiny").join("peft_adapter")).unwrap();
    let input = e.encoder_input();
    let before = model.predict(g, &input).unwrap();
    let out = tempfile::tempdir().unwrap();
    peft::save_classifier_adapter(g, &mut model, &cfg, "bert_tiny", out.path()).unwrap();
    let (labels, pooling) = peft::read_classifier_meta(out.path()).unwrap();
    assert_eq!((labels.len(), pooling), (LABELS, Pooling::Cls));
    let mut again = SequenceClassifier::load(g, &fixture("bert_tiny"), labels, pooling, 99).unwrap();
    let cfg2 = peft::load_classifier_adapter(g, &mut again, out.path()).unwrap();
    assert_eq!(cfg, cfg2);
    assert_close("reloaded classifier logits", &again.predict(g, &input).unwrap(), &f64s(&before), 0.0, 0.0);
}
