//! The BERT encoder and sequence classifier against transformers + PEFT (`bert_tiny`, made by
//! `scripts/make_fixtures.py`): hidden states, both poolings, logits, plain and class-weighted
//! losses, full-model and LoRA gradients, and PEFT SEQ_CLS adapters in both directions.

use super::*;

use kiln::autograd::Module;

use kiln::formats::safetensors::save_safetensors;
use kiln::models::bert::{Bert, EncoderInput};
use kiln::models::classifier::{Pooling, SequenceClassifier};

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

/// `--pooling pooler` is `BertForSequenceClassification`'s own head: [CLS] → the checkpoint's
/// pooler dense + tanh → classifier. Logits, loss and the gradients of the pooler, the head and
/// an encoder weight match PyTorch's to 1e-4; a saved adapter carries the pooler in PEFT's
/// `modules_to_save` and loads back to the same logits.
#[test]
fn classifier_with_berts_pooler_matches_pytorch() {
    let g = gpu();
    let (mut model, e) = classifier(Pooling::Pooler);
    let input = e.encoder_input();
    let logits = model.predict(g, &input).unwrap();
    assert_close("pooler logits", &logits, e.f("logits_pooler"), 1e-4, 1e-4);
    model.set_trainable(g, &|_| true).unwrap();
    let tape = Tape::train(g, 0, 1);
    let l = model.logits(&tape, &input).unwrap();
    let loss = model.loss(&tape, &l, &e.targets(), None).unwrap();
    tape.backward(&loss, 1.0).unwrap();
    assert_close("pooler loss", &[loss.read(g).unwrap().0], e.f("loss_pooler"), 1e-4, 1e-5);
    let mut checked = 0;
    model.visit_params(&mut |p| {
        let key = format!("pooler_grad.{}", p.name);
        if e.f.contains_key(&key) {
            assert_close(&key, &p.grad.as_ref().unwrap().to_f32_vec(g).unwrap(), e.f(&key), GRAD_TOL, 1e-3);
            checked += 1;
        }
    });
    assert_eq!(checked, 4, "every pooler gradient of the fixture was compared");
    // The pooler is part of the head: depth 0, so `head` and `lora` train it.
    assert_eq!(model.depth("bert.pooler.dense.weight"), 0);

    // An adapter: LoRA, then the pooler and head changed as training would; saved and loaded.
    let cfg = model.load_adapter(g, &fixture("bert_tiny").join("peft_adapter")).unwrap();
    let pooler = model.pooler.as_mut().unwrap();
    let w: Vec<f32> = pooler.weight.value.to_f32_vec(g).unwrap().iter().map(|x| x * 0.5 + 0.01).collect();
    pooler.weight.value = kiln::Tensor::from_f32(g, &w, &[32, 32]).unwrap();
    let before = model.predict(g, &input).unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save_adapter(g, &cfg, "bert_tiny", out.path()).unwrap();
    let config = std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap();
    assert!(config.contains("\"bert.pooler.dense\"") && config.contains("\"classifier\""), "{config}");
    let readme = std::fs::read_to_string(out.path().join("README.md")).unwrap();
    assert!(readme.contains("AutoPeftModelForSequenceClassification") && readme.contains("model(**enc)"), "{readme}");
    let mut again = SequenceClassifier::load(g, &fixture("bert_tiny"), labels(), Pooling::Pooler, 99).unwrap();
    again.load_adapter(g, out.path()).unwrap();
    assert_close("reloaded pooler logits", &again.predict(g, &input).unwrap(), &f64s(&before), 0.0, 0.0);
}

/// PEFT's SEQ_CLS adapter (LoRA on query/key/value/dense, classifier in modules_to_save) loads;
/// logits, loss and every gradient (adapters and head) match PEFT's.
#[test]
fn classifier_lora_matches_peft() {
    let g = gpu();
    let (mut model, e) = classifier(Pooling::Mean);
    model.load_adapter(g, &fixture("bert_tiny").join("peft_adapter")).unwrap();
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
    let cfg = model.load_adapter(g, &fixture("bert_tiny").join("peft_adapter")).unwrap();
    let input = e.encoder_input();
    let before = model.predict(g, &input).unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save_adapter(g, &cfg, "bert_tiny", out.path()).unwrap();
    let (labels, pooling) = kiln::models::classifier::read_classifier_meta(out.path()).unwrap();
    assert_eq!((labels.len(), pooling), (LABELS, Pooling::Cls));
    // Without BERT's pooler, the README shows how to pool as kiln does.
    let readme = std::fs::read_to_string(out.path().join("README.md")).unwrap();
    assert!(readme.contains("h[:, 0]") && readme.contains("num_labels=3"), "{readme}");
    let mut again = SequenceClassifier::load(g, &fixture("bert_tiny"), labels, pooling, 99).unwrap();
    let cfg2 = again.load_adapter(g, out.path()).unwrap();
    assert_eq!(cfg, cfg2);
    assert_close("reloaded classifier logits", &again.predict(g, &input).unwrap(), &f64s(&before), 0.0, 0.0);
}

// ---- training strategies on the tiny model ----

use kiln::data::encode::Encoded;
use kiln::train::classify::{ClassifyConfig, LabeledSet, Strategy, Unfreeze, UnfreezeUnit, train_classifier};
use kiln::train::driver::{Event, LoopSettings, Scores};
use kiln::train::schedule::ScheduleKind;
use kiln::train::stopping::{StopMetric, StopSettings};

/// Texts of 3–6 words between [CLS]=2 and [SEP]=3: a class's marker word (10 or 60) twice,
/// the rest random words from ids 4..96.
fn toy_set(n: usize, seed: u64) -> (Vec<Encoded>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let (mut items, mut labels) = (Vec::new(), Vec::new());
    for i in 0..n {
        let y = i % 2;
        let len = 3 + rng.below(4) as usize;
        let mut ids = vec![2, 10 + 50 * y as u32];
        ids.extend((0..len - 2).map(|_| 4 + rng.below(92)));
        ids.extend([10 + 50 * y as u32, 3]);
        items.push(Encoded { types: vec![0; ids.len()], ids });
        labels.push(y);
    }
    (items, labels)
}

/// The tiny encoder with a fresh two-label head.
fn toy_classifier() -> SequenceClassifier {
    let labels = vec!["a".to_string(), "b".to_string()];
    SequenceClassifier::load(gpu(), &fixture("bert_tiny"), labels, Pooling::Mean, 5).unwrap()
}

fn toy_config(strategy: Strategy, steps: usize) -> ClassifyConfig {
    ClassifyConfig {
        strategy,
        lora: LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: ["query", "key", "value", "dense"].map(String::from).to_vec(),
            use_rslora: false,
            use_dora: false,
        },
        run: LoopSettings {
            epochs: 1,
            max_steps: Some(steps),
            lr: 1e-2,
            schedule: ScheduleKind::Constant,
            warmup_ratio: 0.0,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            eval_every: None,
            stop: StopSettings { metric: StopMetric::MacroF1, patience: None, min_delta: 0.0, restore_best: false },
            checkpoints: None,
            l2sp: None,
            ewc: None,
            seed: 3,
        },
        batch_size: 8,
        layer_lr_decay: 1.0,
        unfreeze: None,
        class_weights: None,
    }
}

/// Every parameter's values by name.
fn snapshot(model: &SequenceClassifier) -> HashMap<String, Vec<f32>> {
    let mut out = HashMap::new();
    model.visit_params(&mut |p| {
        out.insert(p.name.clone(), p.value.to_f32_vec(gpu()).unwrap());
    });
    out
}

fn max_change(before: &HashMap<String, Vec<f32>>, after: &HashMap<String, Vec<f32>>, name: &str) -> f32 {
    before[name].iter().zip(&after[name]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

fn train_toy(model: &mut SequenceClassifier, cfg: &ClassifyConfig) -> Vec<Event> {
    let (x, y) = toy_set(32, 1);
    let (vx, vy) = toy_set(8, 2);
    let mut events = Vec::new();
    let train = LabeledSet { items: &x, labels: &y };
    let valid = Some(LabeledSet { items: &vx, labels: &vy });
    train_classifier(gpu(), model, train, valid, None, 0, cfg, &mut |e| {
        events.push(e.clone());
        Ok(())
    })
    .unwrap();
    events
}

/// Each strategy changes exactly the parameters it trains and leaves the rest bit-identical.
#[test]
fn strategies_train_exactly_their_blocks() {
    for strategy in [Strategy::Head, Strategy::Top(1), Strategy::Lora, Strategy::Full] {
        let mut model = toy_classifier();
        let before = snapshot(&model);
        let events = train_toy(&mut model, &toy_config(strategy, 4));
        let after = snapshot(&model);
        assert_eq!(
            events.iter().any(|e| matches!(e, Event::Features { .. })),
            strategy == Strategy::Head,
            "{strategy}: features are cached for the head strategy only"
        );
        for name in before.keys() {
            let changed = max_change(&before, &after, name) > 0.0;
            let should = match strategy {
                Strategy::Head => name.starts_with("classifier."),
                // LoRA leaves every base weight as it was (its A and B are new tensors).
                Strategy::Lora => name.starts_with("classifier."),
                Strategy::Top(_) => name.starts_with("classifier.") || name.starts_with("bert.encoder.layer.1."),
                // Unused embedding rows (ids never in the toy texts) keep their values, but
                // each table as a whole moves.
                Strategy::Full => true,
            };
            assert_eq!(changed, should, "{strategy}: `{name}` changed = {changed}");
        }
        if strategy == Strategy::Lora {
            let mut lora_moved = 0;
            model.visit_params(&mut |p| {
                if p.name.contains(".lora_B.") && p.value.to_f32_vec(gpu()).unwrap().iter().any(|&v| v != 0.0) {
                    lora_moved += 1;
                }
            });
            assert_eq!(lora_moved, 2 * 6, "every adapter's B left zero: 6 linears in each of 2 layers");
        }
    }
}

/// A frozen block records nothing: with top:1 the tape holds no embedding and one attention.
#[test]
fn frozen_blocks_record_nothing_on_the_tape() {
    let g = gpu();
    let (mut model, e) = classifier(Pooling::Mean);
    model.set_trainable(g, &|n| Strategy::Top(1).trains(n, 2)).unwrap();
    let tape = Tape::train(g, 0, 1);
    let logits = model.logits(&tape, &e.encoder_input()).unwrap();
    let names = tape.recorded_names();
    assert!(!names.contains(&"embedding"), "{names:?}");
    assert_eq!(names.iter().filter(|n| **n == "attention").count(), 1, "{names:?}");
    let loss = model.loss(&tape, &logits, &e.targets(), None).unwrap();
    tape.backward(&loss, 1.0).unwrap();
}

/// Progressive unfreezing: the head first, then one more block every 2 steps, down to the
/// embeddings; each block trains only from its turn on.
#[test]
fn progressive_unfreezing_adds_one_block_every_k_steps() {
    let mut model = toy_classifier();
    let mut cfg = toy_config(Strategy::Full, 7);
    cfg.unfreeze = Some(Unfreeze { every: 2, unit: UnfreezeUnit::Step });
    let before = snapshot(&model);
    let events = train_toy(&mut model, &cfg);
    let stages: Vec<(usize, usize, usize)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Trainable { step, depth, params } => Some((*step, *depth, *params)),
            _ => None,
        })
        .collect();
    let steps_depths: Vec<(usize, usize)> = stages.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(steps_depths, [(0, 0), (2, 1), (4, 2), (6, 3)]);
    assert!(stages.windows(2).all(|w| w[1].2 > w[0].2), "trainable parameters grow: {stages:?}");
    assert_eq!(stages[0].2, 32 * 2 + 2, "the head alone: weight [2, 32] and bias");
    let after = snapshot(&model);
    for name in ["classifier.weight", "bert.encoder.layer.0.output.dense.weight", "bert.embeddings.LayerNorm.weight"] {
        assert!(max_change(&before, &after, name) > 0.0, "{name} trained once its turn came");
    }
}

/// With a per-block decay of 1/2, the first AdamW step moves each weight by lr·(1/2)^depth (the
/// first Adam step has magnitude lr wherever the gradient is not zero).
#[test]
fn discriminative_learning_rates_scale_each_block() {
    let mut model = toy_classifier();
    let mut cfg = toy_config(Strategy::Full, 1);
    cfg.layer_lr_decay = 0.5;
    let before = snapshot(&model);
    train_toy(&mut model, &cfg);
    let after = snapshot(&model);
    for (name, depth) in [
        ("classifier.weight", 0),
        ("bert.encoder.layer.1.attention.self.query.weight", 1),
        ("bert.encoder.layer.0.intermediate.dense.weight", 2),
        ("bert.embeddings.position_embeddings.weight", 3),
    ] {
        let want = cfg.run.lr * 0.5f32.powi(depth);
        let got = max_change(&before, &after, name);
        assert!((got - want).abs() < 0.02 * want, "{name}: moved {got}, expected lr·0.5^{depth} = {want}");
    }
}

fn hf_initialised_classifier(dir: &Path) -> SequenceClassifier {
    hf_initialised_bert(dir);
    SequenceClassifier::load(gpu(), dir, vec!["a".into(), "b".into()], Pooling::Mean, 5).unwrap()
}

/// Training separates the toy classes (validation macro-F1 rises to near 1).
#[test]
fn lora_classifier_learns_the_toy_task() {
    let tmp = tempfile::tempdir().unwrap();
    let mut model = hf_initialised_classifier(tmp.path());
    let mut cfg = toy_config(Strategy::Lora, 24);
    cfg.run.eval_every = Some(100);
    let events = train_toy(&mut model, &cfg);
    let evals: Vec<(f32, f64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Eval { val_loss, scores: Scores::Classes { macro_f1, .. }, .. } => Some((*val_loss, *macro_f1)),
            _ => None,
        })
        .collect();
    assert_eq!(evals.len(), 2, "before the first step and at the end");
    // The fresh head starts near chance loss (ln 2); training brings it well below.
    assert!(evals[1].1 >= 0.85, "validation macro-F1 {evals:?}");
    assert!(evals[1].0 < 0.5 * evals[0].0, "validation loss {evals:?}");
}

/// Patience 1 and a min_delta no change can beat: the first evaluation after step 0 ends the
/// run, and the weights of step 0 (the best) are put back bit for bit.
#[test]
fn early_stopping_stops_and_restores_the_best_weights() {
    let mut model = toy_classifier();
    let mut cfg = toy_config(Strategy::Full, 10);
    cfg.run.eval_every = Some(2);
    cfg.run.stop = StopSettings { metric: StopMetric::ValLoss, patience: Some(1), min_delta: 1e9, restore_best: true };
    let before = snapshot(&model);
    let (x, y) = toy_set(32, 1);
    let (vx, vy) = toy_set(8, 2);
    let summary = train_classifier(
        gpu(),
        &mut model,
        LabeledSet { items: &x, labels: &y },
        Some(LabeledSet { items: &vx, labels: &vy }),
        None,
        0,
        &cfg,
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!((summary.steps, summary.stopped_early_at), (2, Some(2)));
    assert_eq!(summary.best.map(|b| b.0), Some(0));
    assert_eq!(summary.evals.len(), 2, "step 0 and step 2, no extra evaluation after stopping");
    let after = snapshot(&model);
    for name in before.keys() {
        assert_eq!(max_change(&before, &after, name), 0.0, "{name} is back to its step-0 value");
    }
}

/// The gradient norm the curves report is the global L2 norm of every trainable gradient,
/// before clipping.
#[test]
fn optimizer_reports_the_global_gradient_norm() {
    let g = gpu();
    let (mut model, e) = classifier(Pooling::Mean);
    model.set_trainable(g, &|_| true).unwrap();
    let tape = Tape::train(g, 0, 1);
    let logits = model.logits(&tape, &e.encoder_input()).unwrap();
    let loss = model.loss(&tape, &logits, &e.targets(), None).unwrap();
    tape.backward(&loss, 1.0).unwrap();
    let mut sum_sq = 0.0f64;
    model.visit_params(&mut |p| {
        sum_sq += p.grad.as_ref().unwrap().to_f32_vec(g).unwrap().iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
    });
    let mut opt = kiln::train::Optimizer::new(Default::default(), Some(1e-3));
    opt.step(g, &model, 1e-3).unwrap();
    let got = opt.last_grad_norm(g).unwrap().unwrap() as f64;
    assert!((got - sum_sq.sqrt()).abs() <= 1e-5 * sum_sq.sqrt(), "{got} vs {}", sum_sq.sqrt());
}

/// L2-SP keeps a fully fine-tuned model near where it started: the same run with a strong pull
/// drifts much less from the starting weights than without it.
#[test]
fn l2sp_reduces_drift_from_the_starting_weights() {
    let drift = |l2sp: Option<f32>| -> f64 {
        let mut model = toy_classifier();
        let before = snapshot(&model);
        let mut cfg = toy_config(Strategy::Full, 12);
        cfg.run.lr = 3e-3;
        cfg.run.l2sp = l2sp;
        train_toy(&mut model, &cfg);
        let after = snapshot(&model);
        before
            .iter()
            .filter(|(name, _)| name.starts_with("bert.encoder."))
            .map(|(name, b)| b.iter().zip(&after[name]).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>())
            .sum::<f64>()
            .sqrt()
    };
    let (free, pulled) = (drift(None), drift(Some(50.0)));
    eprintln!("encoder drift: {free:.4} without L2-SP, {pulled:.4} with λ = 50");
    assert!(free > 0.0 && pulled < 0.5 * free, "encoder drift {pulled} with L2-SP vs {free} without");
}

/// EWC: the Fisher information of the starting model on a retain set weights the pull, so with
/// a strong EWC term the Fisher-weighted drift Σ F·(θ − θ₀)² (what EWC penalises) is far smaller
/// than without it; weights the retain set does not care about may still move.
#[test]
fn ewc_reduces_fisher_weighted_drift() {
    let (rx, ry) = toy_set(16, 9);
    let mut start = toy_classifier();
    let fisher = kiln::train::ewc::fisher_diagonal(gpu(), &mut start, &|_| true, rx.len(), &mut |tape, m, i| {
        let input = kiln::data::encode::make_input(gpu(), &[&rx[i]], 0)?;
        let logits = m.logits(tape, &input)?;
        m.loss(tape, &logits, &[ry[i]], None)
    })
    .unwrap();
    let fisher: HashMap<String, Vec<f32>> =
        fisher.iter().map(|(n, t)| (n.clone(), t.to_f32_vec(gpu()).unwrap())).collect();
    assert!(fisher.values().flatten().any(|&f| f > 0.0) && fisher.values().flatten().all(|&f| f >= 0.0));
    let drift = |ewc: Option<f32>| -> f64 {
        let mut model = toy_classifier();
        let before = snapshot(&model);
        let mut cfg = toy_config(Strategy::Full, 12);
        cfg.run.lr = 3e-3;
        cfg.run.ewc = ewc;
        let (x, y) = toy_set(32, 1);
        let retain = Some(LabeledSet { items: &rx, labels: &ry });
        train_classifier(gpu(), &mut model, LabeledSet { items: &x, labels: &y }, None, retain, 0, &cfg, &mut |_| {
            Ok(())
        })
        .unwrap();
        let after = snapshot(&model);
        before
            .iter()
            .map(|(name, b)| {
                let f = &fisher[name];
                b.iter().zip(&after[name]).zip(f).map(|((x, y), f)| *f as f64 * ((x - y) as f64).powi(2)).sum::<f64>()
            })
            .sum::<f64>()
    };
    let (free, pulled) = (drift(None), drift(Some(1e6)));
    eprintln!("Fisher-weighted drift: {free:.3e} without EWC, {pulled:.3e} with λ = 1e6");
    assert!(free > 0.0 && pulled < 0.5 * free, "Fisher-weighted drift {pulled} with EWC vs {free} without");
}
