//! `kiln train`: a classifier with each strategy, the run folder and its config.toml, early
//! stopping, a killed run resumed to the same numbers, divergence, retain sets and EWC, a
//! quantized base, and bad input named.

use std::path::Path;

use super::{Kiln, bert_workspace, classifier_run, curve, events, kiln, lm_run, lm_workspace, read_json, values};

#[test]
fn bad_data_line_is_an_error_naming_file_and_line() {
    let ws = lm_workspace();
    std::fs::write(ws.data.join("train.jsonl"), "{\"text\": \"w1 w2\"}\n{\"txet\": 3}\n").unwrap();
    kiln("train").model(&ws.model).data(&ws.data).fails_naming(&["train.jsonl", "line 2"]);
}

#[test]
fn train_classifier_end_to_end_with_each_strategy() {
    let ws = bert_workspace();
    for (strategy, epochs, saved) in [("lora", "6", "adapter"), ("head", "30", "model"), ("top:1", "4", "model")] {
        let run = ws.path(&format!("run-{}", strategy.replace(':', "")));
        let report = classifier_run(&ws, &run, strategy)
            .args(["--epochs", epochs, "--lr", "1e-2", "--lora-dropout", "0", "--eval-every", "0"])
            .args(["--class-weights", "balanced"])
            .json();
        let f1 = report["test"]["macro_f1"].as_f64().unwrap();
        assert!(f1 >= 0.9, "{strategy}: test macro-F1 {f1}: {report}");
        assert_eq!(report["test"]["count"], 32);
        assert_eq!(report["test_groups"]["a"]["total"], 10, "{strategy}: per-group scores");
        for f in ["settings.json", "config.toml", "metrics.jsonl", "report.json", "report.md", "loss.png", "metric.png"]
        {
            assert!(run.join(f).is_file(), "{strategy}: missing {f}");
        }
        assert_eq!(report["saved"], run.join(saved).to_str().unwrap());
        let settings = read_json(&run.join("settings.json"));
        assert_eq!(settings["labels"], serde_json::json!(["neg", "pos"]));
        // 64 training texts, 10% held out for validation (stratified).
        assert_eq!(settings["examples"]["valid"], 6, "{settings}");
    }
    let cfg = read_json(&ws.path("run-lora/adapter/adapter_config.json"));
    assert_eq!(cfg["task_type"], "SEQ_CLS");
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["classifier"]));
    let config = read_json(&ws.path("run-head/model/config.json"));
    assert_eq!(config["id2label"], serde_json::json!({"0": "neg", "1": "pos"}));
}

/// `--dropout` reaches an encoder classifier (it once stopped at the LM): the fixture's own
/// dropout is 0, so with `--dropout 0.3` the first step's loss differs, and settings.json says
/// which rates ran.
#[test]
fn dropout_flag_sets_the_classifiers_dropout() {
    let ws = bert_workspace();
    let first_loss = |name: &str, dropout: Option<&str>| {
        let run = ws.path(name);
        let mut cmd = classifier_run(&ws, &run, "full").args(["--steps", "1", "--eval-every", "0"]);
        if let Some(p) = dropout {
            cmd = cmd.flag("dropout", p);
        }
        cmd.json();
        (values(&run, "step", "loss")[0], read_json(&run.join("settings.json"))["dropout"].clone())
    };
    let (plain, plain_rates) = first_loss("run-plain", None);
    let (dropped, rates) = first_loss("run-dropout", Some("0.3"));
    assert_eq!(plain_rates, serde_json::json!({"hidden": 0.0, "classifier": 0.0}));
    let hidden = rates["hidden"].as_f64().unwrap();
    assert!((hidden - 0.3).abs() < 1e-6 && rates["classifier"] == rates["hidden"], "{rates}");
    assert!((plain - dropped).abs() > 1e-6, "--dropout 0.3 changed nothing: loss {plain} both times");
}

#[test]
fn classifier_data_errors_name_the_problem() {
    let ws = bert_workspace();
    let with = |files: &[(&str, &str)]| -> Kiln {
        for (name, text) in files {
            std::fs::write(ws.data.join(name), text).unwrap();
        }
        kiln("train").model(&ws.model).data(&ws.data)
    };
    std::fs::remove_file(ws.data.join("test.jsonl")).unwrap();
    let ok = "{\"text\": \"w4 w5\", \"label\": \"a\"}\n{\"text\": \"w6\", \"label\": \"b\"}\n";
    with(&[("train.jsonl", &format!("{ok}{{\"text\": \"w7\"}}\n"))]).fails_naming(&["train.jsonl", "line 3", "label"]);
    with(&[("train.jsonl", ok), ("test.jsonl", "{\"text\": \"w7\", \"label\": \"c\"}\n")])
        .fails_naming(&["test", "`c`"]);
    std::fs::remove_file(ws.data.join("test.jsonl")).unwrap();
    with(&[("train.jsonl", ok)]).flag("strategy", "top:x").fails_naming(&["top:x"]);
    with(&[("train.jsonl", ok)]).flag("class-weights", "1,2,3").fails_naming(&["class-weights", "2"]);
    with(&[("train.jsonl", ok)]).flag("dropout", "1.5").fails_naming(&["--dropout", "1.5"]);
}

/// A negative value written with a space (`--lr -1`, as README's table writes it) is a value,
/// not a flag: it reaches kiln's own range check, for floats and integers alike.
#[test]
fn negative_values_reach_kilns_range_checks() {
    let ws = bert_workspace();
    let train = || kiln("train").model(&ws.model).data(&ws.data).out(&ws.path("run"));
    train().flag("lr", "-1").fails_naming(&["--lr: -1; expected a positive number"]);
    train().flag("weight-decay", "-0.5").fails_naming(&["--weight-decay: -0.5; expected a number ≥ 0"]);
    train().flag("lora-dropout", "-1e3").fails_naming(&["--lora-dropout: -1000"]);
    train().flag("max-grad-norm", "-0.5").fails_naming(&["--max-grad-norm: -0.5"]);
    let err = train().flag("batch-size", "-2").fails_naming(&["--batch-size", "-2"]);
    assert!(!err.contains("unexpected argument"), "{err}");
    assert!(!ws.path("run").exists(), "a refused run left its folder");
}

/// A folder above the data, or the training file itself, given as `--data` is pointed at the
/// folder that holds train.jsonl; a model of the wrong kind is named without Rust debug text.
#[test]
fn data_and_model_mistakes_point_at_the_fix() {
    let ws = lm_workspace();
    let data = ws.data.display().to_string();
    lm_run(&ws, &ws.path("a")).data(ws.tmp.path()).fails_naming(&["no train.jsonl", &format!("try --data {data}")]);
    lm_run(&ws, &ws.path("b")).data(&ws.data.join("train.jsonl")).fails_naming(&["the folder, not the file", &data]);
    let bert = ws.path("bert");
    std::fs::create_dir_all(&bert).unwrap();
    std::fs::write(bert.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let err = kiln("generate").model(&bert).flag("prompt", "w3").fails_naming(&["model_type `bert`"]);
    assert!(!err.contains("Some("), "{err}");
}

/// A git-lfs pointer where a model file should be is named as one, in each kind of file kiln
/// reads; a safetensors header with an unknown dtype or offsets past the end names the tensor.
#[test]
fn lfs_pointers_and_broken_safetensors_headers_are_named() {
    let ws = lm_workspace();
    let pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a21\nsize 269060552\n";
    let broken = |name: &str, contents: &[u8]| -> std::path::PathBuf {
        let model = ws.path(&format!("model-{name}"));
        std::fs::create_dir_all(&model).unwrap();
        for e in std::fs::read_dir(&ws.model).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
        }
        std::fs::write(model.join(name), contents).unwrap();
        model
    };
    for name in ["model.safetensors", "config.json", "tokenizer.json"] {
        let model = broken(name, pointer.as_bytes());
        lm_run(&ws, &ws.path("run")).model(&model).fails_naming(&[name, "git-lfs pointer", "git lfs pull"]);
    }
    let gguf = ws.path("model.gguf");
    std::fs::write(&gguf, pointer).unwrap();
    lm_run(&ws, &ws.path("run")).model(&gguf).fails_naming(&["model.gguf", "git-lfs pointer"]);
    let header = |h: &str| {
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(h.as_bytes());
        b.extend([0u8; 8]);
        b
    };
    let model =
        broken("model.safetensors", &header(r#"{"w": {"dtype": "F12", "shape": [2], "data_offsets": [0, 8]}}"#));
    lm_run(&ws, &ws.path("run")).model(&model).fails_naming(&["tensor `w`", "`F12`"]);
    let model =
        broken("model.safetensors", &header(r#"{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}"#));
    lm_run(&ws, &ws.path("run")).model(&model).fails_naming(&["tensor `w` (F32)", "[0, 16]", "bytes"]);
    assert!(!ws.path("run").exists(), "a refused run left its folder");
}

/// Data that tokenizes to nothing and a classifier's --max-len past the encoder's positions
/// are refused before the run folder exists, naming the file or the flag.
#[test]
fn empty_after_tokenizing_and_too_long_max_len_are_refused_up_front() {
    let ws = lm_workspace();
    // Prompts of three words and a BOS fill 3 tokens: no completion token is left to train on.
    let run = ws.path("run");
    lm_run(&ws, &run).flag("max-len", "3").fails_naming(&[
        "train.jsonl",
        "no training examples",
        "64 of 64 records",
        "tokenizing",
        "--max-len 3",
    ]);
    assert!(!run.exists(), "a refused run left its folder");
    // The tiny BERT has 32 positions: an explicit --max-len past them is refused by name, the
    // default (128) is kept within them.
    let ws = bert_workspace();
    let run = ws.path("run");
    classifier_run(&ws, &run, "head").flag("max-len", "33").fails_naming(&["--max-len", "33", "32 positions"]);
    assert!(!run.exists(), "a refused run left its folder");
    classifier_run(&ws, &run, "head").flag("steps", "1").run();
    assert_eq!(read_json(&run.join("settings.json"))["max_len"], 32);
}

/// Early stopping on a language model: patience 1 with a min_delta nothing can beat stops at
/// the first evaluation after step 0, and the saved adapter is step 0's (every lora_B zero).
#[test]
fn lm_early_stopping_restores_the_best_adapter() {
    let ws = lm_workspace();
    let run = ws.path("run");
    let report =
        lm_run(&ws, &run).args(["--steps", "20", "--eval-every", "5", "--patience", "1", "--min-delta", "100"]).json();
    assert_eq!(report["steps"], 5, "{report}");
    assert_eq!(report["stopped_early_at"], 5);
    assert_eq!(report["best"]["step"], 0);
    assert_eq!(report["best"]["metric"], "val_loss");
    let bytes = std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut b_matrices = 0;
    for (name, t) in st.tensors() {
        if name.contains(".lora_B.") {
            b_matrices += 1;
            assert!(t.data().iter().all(|&b| b == 0), "{name} is back to its initial zeros");
        }
    }
    assert!(b_matrices > 0);
}

/// `--config run.toml` sets flags, the command line overrides them, and the run folder's
/// config.toml reproduces the run's settings when read back.
#[test]
fn config_file_sets_flags_and_the_run_folder_keeps_them() {
    let ws = bert_workspace();
    let config = ws.path("run.toml");
    let toml = format!(
        "model = {:?}\ndata = {:?}\nstrategy = \"head\"\nepochs = 3\nlr = 0.05\nbatch_size = 16\neval_every = 0\n\
         metric = \"accuracy\"\n",
        ws.model, ws.data
    );
    std::fs::write(&config, toml).unwrap();
    let (run1, run2) = (ws.path("run1"), ws.path("run2"));
    // `--adapter 0`: the first of `kiln devices`, which every machine that runs these tests has.
    kiln("train").flag("config", &config).flag("lr", "0.02").flag("adapter", "0").out(&run1).run();
    let recorded = std::fs::read_to_string(run1.join("config.toml")).unwrap();
    assert!(recorded.contains("adapter = \"0\""), "config.toml records --adapter:\n{recorded}");
    let first = read_json(&run1.join("settings.json"));
    assert_eq!(first["train"]["strategy"], "head");
    assert_eq!(first["train"]["epochs"], 3);
    assert_eq!(first["train"]["batch_size"], 16);
    assert_eq!(first["train"]["lr"].as_f64().unwrap() as f32, 0.02, "the command line wins over the file");
    assert_eq!(first["train"]["stop"]["metric"], "accuracy");
    kiln("train").flag("config", run1.join("config.toml")).out(&run2).run();
    assert_eq!(read_json(&run2.join("settings.json"))["train"], first["train"], "config.toml reproduces the settings");
}

/// Runs `train` to the end in `whole`, and again in `halted` with `--halt-after STEP` (which
/// must fail as asked) then `--resume`d: the two curves must be equal.
fn halt_and_resume(train: impl Fn(&Path) -> Kiln, whole: &Path, halted: &Path, step: usize) {
    train(whole).json();
    train(halted).flag("halt-after", step.to_string()).fails_naming(&[&format!("halted after step {step}")]);
    kiln("train").flag("resume", halted).json();
    let (a, b) = (curve(whole), curve(halted));
    assert_eq!(a, b, "the resumed curve equals the uninterrupted one");
}

/// A run halted right after the checkpoint of step 6 and resumed with `--resume` gives the
/// uninterrupted run's curve: the same loss, learning rate and gradient norm at every step, the
/// same validations, the same test scores (dropout on, so the masks must line up too).
#[test]
fn killed_and_resumed_run_equals_the_uninterrupted_one() {
    let ws = bert_workspace();
    let (whole, halted) = (ws.path("whole"), ws.path("halted"));
    let train = |out: &Path| {
        classifier_run(&ws, out, "lora").args([
            "--steps",
            "10",
            "--lr",
            "1e-2",
            "--lora-dropout",
            "0.1",
            "--eval-every",
            "4",
            "--save-every",
            "3",
        ])
    };
    halt_and_resume(train, &whole, &halted, 6);
    assert_eq!(events(&whole, "step").len(), 10);
    let report = |run: &Path| read_json(&run.join("report.json"));
    assert_eq!(report(&whole)["test"], report(&halted)["test"]);
    assert_eq!(report(&whole)["best"], report(&halted)["best"]);
    // Resuming a finished run trains no further step.
    kiln("train").flag("resume", &whole).json();
    assert_eq!(events(&whole, "step").len(), 10);
    assert_eq!(report(&whole)["steps"], 10);
}

/// The same for a language model, with gradient accumulation and LoRA dropout: halted after step
/// 4 and resumed, the curve and the adapter equal the uninterrupted run's.
#[test]
fn killed_and_resumed_lm_run_equals_the_uninterrupted_one() {
    let ws = lm_workspace();
    let (whole, halted) = (ws.path("whole"), ws.path("halted"));
    let train = |out: &Path| {
        lm_run(&ws, out)
            .args(["--steps", "8", "--batch-size", "4", "--grad-accum", "2", "--lora-dropout", "0.1"])
            .args(["--eval-every", "3", "--save-every", "2"])
    };
    halt_and_resume(train, &whole, &halted, 4);
    assert_eq!(events(&whole, "step").len(), 8);
    let adapter = |run: &Path| std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(adapter(&whole) == adapter(&halted), "the same adapter, byte for byte");
}

/// A loss that is no longer finite stops the run with the step and points at the last good
/// checkpoint.
#[test]
fn non_finite_loss_names_the_step_and_the_last_good_checkpoint() {
    let ws = bert_workspace();
    classifier_run(&ws, &ws.path("run"), "full")
        .args(["--lr", "1e38", "--steps", "8", "--save-every", "1", "--max-grad-norm", "0", "--warmup-ratio", "0"])
        .fails_naming(&["loss became", "at step", "last good checkpoint is step", "checkpoints"]);
}

/// A retain set is scored before and after training (forgetting in report.json), for both
/// model families, and `--ewc` estimates its Fisher from it; `--ewc` without one is an error.
#[test]
fn retain_sets_measure_forgetting_and_feed_ewc() {
    // A language model: retain text is the validation file.
    let ws = lm_workspace();
    let short = |out: &Path| lm_run(&ws, out).args(["--steps", "6", "--ewc", "100"]);
    let report = short(&ws.path("run")).flag("retain", ws.data.join("valid.jsonl")).json();
    let f = &report["forgetting"];
    assert!(f["retain_tokens"].as_u64().unwrap() > 0, "{report}");
    assert!(f["perplexity_before"].as_f64().unwrap() > 1.0 && f["perplexity_after"].as_f64().unwrap() > 1.0);
    kiln("train").model(&ws.model).data(&ws.data).args(["--steps", "1", "--ewc", "1"]).fails_naming(&["retain"]);

    // A retain set drawn from the base model: written to the run folder, scored, and the mean KL
    // from the base after training is above 0 (the adapter moved the distribution).
    let run = ws.path("run-generated");
    let report = short(&run).args(["--retain-generate", "5", "--retain-sample-len", "8"]).json();
    let f = &report["forgetting"];
    assert_eq!(f["retain_examples"], 5, "{report}");
    assert_eq!(f["kl_from_base_before"], 0.0, "{report}");
    assert!(f["kl_from_base_after"].as_f64().unwrap() > 1e-4, "{report}");
    // The Fisher's size is logged, so λ can be chosen.
    let fisher = &events(&run, "fisher")[0];
    assert_eq!(fisher["retain_examples"], 5);
    assert!(fisher["max"].as_f64().unwrap() >= fisher["mean"].as_f64().unwrap());
    assert!(fisher["weights"].as_u64().unwrap() > 0);
    assert_eq!(fisher["lambda"], 100.0);
    let samples = std::fs::read_to_string(run.join("data/retain.jsonl")).unwrap();
    assert_eq!(samples.lines().count(), 5, "{samples}");
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(md.contains("| kl_from_base |"), "{md}");
    // Llama has no dropout layers of its own: --dropout says so instead of doing nothing.
    kiln("train")
        .model(&ws.model)
        .data(&ws.data)
        .out(&ws.path("dropout"))
        .args(["--steps", "1", "--dropout", "0.1"])
        .fails_naming(&["no dropout layers"]);

    // A classifier: retain texts are labelled.
    let ws = bert_workspace();
    let report = classifier_run(&ws, &ws.path("run"), "full")
        .args(["--steps", "4", "--lr", "1e-3", "--ewc", "1000"])
        .flag("retain", ws.data.join("test.jsonl"))
        .json();
    let f = &report["forgetting"];
    assert_eq!(f["retain_examples"], 32, "{report}");
    for k in ["accuracy_before", "accuracy_after", "macro_f1_before", "macro_f1_after"] {
        assert!((0.0..=1.0).contains(&f[k].as_f64().unwrap()), "{k}: {report}");
    }
}

/// LoRA on a base quantized on load (`--quantize q4_0`): the error per tensor type and the
/// validation perplexity before and after are reported, the memory table is printed, the
/// adapter learns, generation runs on the quantized base; a budget the run cannot fit is
/// refused before any work, saying what to lower.
#[test]
fn train_on_a_quantized_base_end_to_end() {
    let ws = lm_workspace();
    let run = ws.path("run");
    let quantized = |out: &Path| {
        lm_run(&ws, out)
            .args(["--quantize", "q4_0", "--steps", "60", "--batch-size", "8", "--eval-every", "0"])
            .args(["--lora-dropout", "0"])
    };
    let (_, err) = quantized(&run).run();
    // intermediate_size 48: down_proj stays f32, the other 12 linears are quantized.
    for want in [
        "quantized 12 linear weights to q4_0",
        "kept f32: model.layers.0.mlp.down_proj.weight",
        "q_proj",
        "validation perplexity",
        "GPU memory (estimate)",
        "weights quantized",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    let report = read_json(&run.join("report.json"));
    let q = &report["quantize"];
    let (before, after) = (q["val_ppl_f32"].as_f64().unwrap(), q["val_ppl_quantized"].as_f64().unwrap());
    assert!(before > 1.0 && (after / before - 1.0).abs() < 0.2, "perplexity {before} -> {after}");
    assert!(q["report"]["by_type"]["q_proj"]["max_abs"].as_f64().unwrap() > 0.0);
    assert!(report["memory_estimate_bytes"].as_u64().unwrap() > 0);
    let settings = read_json(&run.join("settings.json"));
    assert_eq!(settings["base_quantized"]["q4_0"][0], 12);
    let evals = report["evals"].as_array().unwrap();
    let last_val = evals.last().unwrap()[1].as_f64().unwrap();
    let first_val = q["val_loss_quantized"].as_f64().unwrap();
    assert!(last_val < first_val - 0.5, "validation loss fell on the quantized base: {first_val} -> {evals:?}");
    assert!(values(&run, "step", "loss").len() == 60);

    // Refused before training: the budget is far below the estimate.
    let refused = ws.path("run2");
    quantized(&refused).flag("gpu-memory", "0").fails_naming(&["lower --batch-size (now 8)", "--gpu-memory"]);
    assert!(!refused.join("metrics.jsonl").exists(), "refused before the run started");
}
