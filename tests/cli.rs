//! The command line end to end on the tiny Llama fixture: `kiln train` writes its run folder
//! and learns, `kiln generate` runs with the adapter, `kiln export --merge` writes a model that
//! loads back with the adapter's logits. And on a tiny BERT: `kiln train` on labelled texts
//! with each strategy, scoring the test set.

mod common;

use std::path::Path;
use std::process::Command;

use common::{tiny_bert, tiny_chat_model, tiny_model, tiny_model_of};
use kiln::gpu::AdapterChoice;
use kiln::models::{LmInput, load_causal_lm};

/// Counting tasks: prompt `w{s} w{s+1} w{s+2}`, completion the next three numbers.
fn counting_data(dir: &Path) {
    let line = |s: usize| {
        let w = |k: usize| format!("w{}", 3 + (s + k) % 90);
        format!("{{\"prompt\": \"{} {} {}\", \"completion\": \" {} {} {}\"}}\n", w(0), w(1), w(2), w(3), w(4), w(5))
    };
    // Validation windows start between training ones: every step n -> n+1 is seen in training.
    std::fs::write(dir.join("train.jsonl"), (0..80).filter(|s| s % 5 != 0).map(line).collect::<String>()).unwrap();
    std::fs::write(dir.join("valid.jsonl"), (0..80).filter(|s| s % 5 == 0).map(line).collect::<String>()).unwrap();
}

fn kiln(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).env("XDG_RUNTIME_DIR", "/tmp").output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
    assert!(out.status.success(), "kiln {args:?} failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

#[test]
fn train_generate_export_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data, run, merged) =
        (tmp.path().join("model"), tmp.path().join("data"), tmp.path().join("run"), tmp.path().join("merged"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_model(&model);
    counting_data(&data);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (m, d, r) = (s(&model), s(&data), s(&run));
    kiln(&[
        "train",
        "--model",
        &m,
        "--data",
        &d,
        "--out",
        &r,
        "--steps",
        "100",
        "--batch-size",
        "8",
        "--lr",
        "3e-2",
        "--eval-every",
        "25",
        "--lora-r",
        "8",
        "--lora-dropout",
        "0",
        "--json",
        "--target-modules",
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    ]);

    // The run folder: settings, one line per step and evaluation, a report, the adapter.
    for f in [
        "settings.json",
        "config.toml",
        "metrics.jsonl",
        "report.json",
        "report.md",
        "loss.png",
        "metric.png",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let steps: Vec<f64> = events.iter().filter(|e| e["event"] == "step").map(|e| e["loss"].as_f64().unwrap()).collect();
    let evals: Vec<f64> =
        events.iter().filter(|e| e["event"] == "eval").map(|e| e["val_loss"].as_f64().unwrap()).collect();
    assert_eq!(steps.len(), 100);
    assert_eq!(evals.len(), 5, "evaluations before training, at steps 25, 50, 75 and the end: {evals:?}");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    // A random tiny model with rank-4 adapters: the loss falls steadily, not to zero.
    assert!(mean(&steps[90..]) < 0.5 * mean(&steps[..5]), "training loss fell: {steps:?}");
    assert!(evals[4] < evals[0] - 1.0, "validation loss fell: {evals:?}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 8);

    let adapter = s(&run.join("adapter"));
    let (out, _) =
        kiln(&["generate", "--model", &m, "--lora", &adapter, "--prompt", "w10 w11 w12", "--max-tokens", "3"]);
    // The adapter learned to count: the continuation starts with the next number. (A word-level
    // tokenizer decodes the new words without the space before them.)
    assert!(out.starts_with("w10 w11 w12w13"), "{out}");

    kiln(&["export", "--merge", "--model", &m, "--lora", &adapter, "--out", &s(&merged)]);
    let gpu = kiln::Gpu::new(&AdapterChoice::from_flag_or_env(None)).expect("GPU tests need an adapter");
    let ids: Vec<u32> = vec![10, 11, 12, 13, 14];
    let input = LmInput::new(&gpu, ids, 1, 5, None).unwrap();
    let mut with_adapter = load_causal_lm(&gpu, &model).unwrap();
    with_adapter.load_adapter(&gpu, &run.join("adapter")).unwrap();
    let want = with_adapter.all_logits(&gpu, &input).unwrap().to_f32_vec(&gpu).unwrap();
    let got = load_causal_lm(&gpu, &merged).unwrap().all_logits(&gpu, &input).unwrap().to_f32_vec(&gpu).unwrap();
    let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(err < 1e-4, "merged model logits differ from base + adapter by {err}");
}

/// The model's own chat template end to end: `kiln train` on chat records (system, user,
/// assistant; the assistant always answers `w50 w51 w52`) learns the assistant's answer, and `kiln generate --chat` renders the same
/// template and answers. A model without a template says so once and refuses `--chat`.
#[test]
fn chat_template_trains_and_generates_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data, run) = (tmp.path().join("model"), tmp.path().join("data"), tmp.path().join("run"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_chat_model(&model);
    let line = |s: usize| {
        let w = |k: usize| format!("w{}", 3 + (s + k) % 90);
        let m = |role: &str, content: String| serde_json::json!({"role": role, "content": content});
        let messages = [
            m("system", "w1".into()),
            m("user", format!("{} {} {}", w(0), w(1), w(2))),
            m("assistant", "w50 w51 w52".into()),
        ];
        format!("{}\n", serde_json::json!({ "messages": messages }))
    };
    std::fs::write(data.join("train.jsonl"), (0..80).filter(|s| s % 5 != 0).map(line).collect::<String>()).unwrap();
    std::fs::write(data.join("valid.jsonl"), (0..80).filter(|s| s % 5 == 0).map(line).collect::<String>()).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (m, d, r) = (s(&model), s(&data), s(&run));
    let (_, err) = kiln(&[
        "train",
        "--model",
        &m,
        "--data",
        &d,
        "--out",
        &r,
        "--steps",
        "100",
        "--batch-size",
        "8",
        "--lr",
        "3e-2",
        "--eval-every",
        "50",
        "--lora-r",
        "8",
        "--lora-dropout",
        "0",
        "--json",
        "--target-modules",
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    ]);
    assert!(!err.contains("no chat template"), "{err}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let evals: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "eval")
        .map(|e| e["val_loss"].as_f64().unwrap())
        .collect();
    assert!(evals.last().unwrap() < &(evals[0] - 1.0), "validation loss on the assistant turns fell: {evals:?}");

    // The prompt is the template's: system and user turns, then the assistant header, after which
    // the adapter learned to give the assistant's answer; generation stops at <|im_end|>, the end
    // of turn read off the template.
    let adapter = s(&run.join("adapter"));
    let (out, err) = kiln(&[
        "generate",
        "--model",
        &m,
        "--lora",
        &adapter,
        "--chat",
        "--system",
        "w1",
        "--prompt",
        "w10 w11 w12",
        "--max-tokens",
        "8",
    ]);
    assert_eq!(out.trim(), "w50 w51 w52", "stderr {err}, evals {evals:?}");
    assert!(err.contains("[3 tokens"), "{err}");

    // `kiln eval` prompts with the template too: each held-out chat's turns before its answer.
    let r = eval_report(
        &[
            "--model",
            &m,
            "--lora",
            &adapter,
            "--data",
            &s(&data.join("valid.jsonl")),
            "--gen-tokens",
            "6",
            "--no-latency",
            "--no-edge-cases",
            "--no-counterfactual",
            "--bootstrap",
            "10",
        ],
        &tmp.path().join("eval"),
    );
    let generation = &r["language_model"]["generation"];
    assert_eq!(generation["exact_match"].as_f64(), Some(1.0), "{generation}");

    // Without a template: a note, once, and --chat refused by name.
    let plain = tmp.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    tiny_model(&plain);
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["generate", "--model", &s(&plain), "--chat", "--prompt", "w10", "--max-tokens", "2"])
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.matches("has no chat template; kiln uses the plain format").count(), 1, "{err}");
    assert!(err.contains("has no chat template; drop --chat"), "{err}");
}

/// Phi-3 (fused qkv_proj and gate_up_proj, partial rotary, LongRoPE) through the same commands
/// with `--lora-targets all-linear`: the adapter records the expanded module names (Phi-3's
/// fused ones), generation runs, and the merged export loads back as a phi3 model with the
/// adapter's logits.
#[test]
fn phi3_all_linear_train_generate_export() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data, run, merged) =
        (tmp.path().join("model"), tmp.path().join("data"), tmp.path().join("run"), tmp.path().join("merged"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_model_of("phi3_tiny", &model);
    counting_data(&data);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (m, d, r) = (s(&model), s(&data), s(&run));
    let args = ["--steps", "30", "--batch-size", "8", "--lr", "2e-2", "--eval-every", "30", "--lora-dropout", "0"];
    let mut train = vec!["train", "--model", &m, "--data", &d, "--out", &r, "--json", "--lora-targets", "all-linear"];
    train.extend(args);
    kiln(&train);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["target_modules"], serde_json::json!(["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]));
    let bytes = std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap();
    let keys = safetensors::SafeTensors::deserialize(&bytes).unwrap().names().len();
    assert_eq!(keys, 2 * 4 * 2, "A and B for 4 modules in each of 2 layers");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let steps: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "step")
        .map(|e| e["loss"].as_f64().unwrap())
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(mean(&steps[25..]) < mean(&steps[..5]), "training loss fell: {steps:?}");

    let adapter = s(&run.join("adapter"));
    let (out, _) =
        kiln(&["generate", "--model", &m, "--lora", &adapter, "--prompt", "w10 w11 w12", "--max-tokens", "3"]);
    assert!(out.starts_with("w10 w11 w12"), "{out}");
    kiln(&["export", "--merge", "--model", &m, "--lora", &adapter, "--out", &s(&merged)]);
    let gpu = kiln::Gpu::new(&AdapterChoice::from_flag_or_env(None)).expect("GPU tests need an adapter");
    let input = LmInput::new(&gpu, vec![10, 11, 12, 13, 14], 1, 5, None).unwrap();
    let mut with_adapter = load_causal_lm(&gpu, &model).unwrap();
    with_adapter.load_adapter(&gpu, &run.join("adapter")).unwrap();
    let want = with_adapter.all_logits(&gpu, &input).unwrap().to_f32_vec(&gpu).unwrap();
    let exported = load_causal_lm(&gpu, &merged).unwrap();
    assert_eq!(exported.model_type(), "phi3");
    let got = exported.all_logits(&gpu, &input).unwrap().to_f32_vec(&gpu).unwrap();
    let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(err < 1e-4, "merged phi3 logits differ from base + adapter by {err}");
}

#[test]
fn bad_data_line_is_an_error_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (tmp.path().join("model"), tmp.path().join("data"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_model(&model);
    std::fs::write(data.join("train.jsonl"), "{\"text\": \"w1 w2\"}\n{\"txet\": 3}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["train", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()])
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("train.jsonl") && err.contains("line 2"), "{err}");
}

/// "pos" texts carry w10 twice, "neg" texts w60; the rest are filler words. The group says
/// which filler range was used, so per-group scores have something to report.
fn labelled_data(dir: &Path) {
    let line = |i: usize| {
        let (label, marker) = if i.is_multiple_of(2) { ("pos", 10) } else { ("neg", 60) };
        let filler: Vec<String> = (0..3).map(|k| format!("w{}", 20 + (i * 7 + k * 13) % 30)).collect();
        let group = if i.is_multiple_of(3) { "a" } else { "b" };
        format!(
            "{{\"text\": \"w{marker} {} w{marker}\", \"label\": \"{label}\", \"group\": \"{group}\"}}\n",
            filler.join(" ")
        )
    };
    std::fs::write(dir.join("train.jsonl"), (0..64).map(line).collect::<String>()).unwrap();
    std::fs::write(dir.join("test.jsonl"), (64..96).map(line).collect::<String>()).unwrap();
}

/// A temporary folder with `model/` (the tiny BERT) and `data/` (the labelled texts).
fn bert_workspace() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (tmp.path().join("model"), tmp.path().join("data"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_bert(&model);
    labelled_data(&data);
    (tmp, model, data)
}

#[test]
fn train_classifier_end_to_end_with_each_strategy() {
    let (tmp, model, data) = bert_workspace();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    for (strategy, epochs, saved) in [("lora", "6", "adapter"), ("head", "30", "model"), ("top:1", "4", "model")] {
        let run = tmp.path().join(format!("run-{}", strategy.replace(':', "")));
        let (out, _) = kiln(&[
            "train",
            "--model",
            &s(&model),
            "--data",
            &s(&data),
            "--out",
            &s(&run),
            "--strategy",
            strategy,
            "--epochs",
            epochs,
            "--batch-size",
            "8",
            "--lr",
            "1e-2",
            "--lora-dropout",
            "0",
            "--eval-every",
            "0",
            "--class-weights",
            "balanced",
            "--json",
        ]);
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        let f1 = report["test"]["macro_f1"].as_f64().unwrap();
        assert!(f1 >= 0.9, "{strategy}: test macro-F1 {f1}: {report}");
        assert_eq!(report["test"]["count"], 32);
        assert_eq!(report["test_groups"]["a"]["total"], 10, "{strategy}: per-group scores");
        for f in ["settings.json", "config.toml", "metrics.jsonl", "report.json", "report.md", "loss.png", "metric.png"]
        {
            assert!(run.join(f).is_file(), "{strategy}: missing {f}");
        }
        assert_eq!(report["saved"], s(&run.join(saved)));
        let settings: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("settings.json")).unwrap()).unwrap();
        assert_eq!(settings["labels"], serde_json::json!(["neg", "pos"]));
        // 64 training texts, 10% held out for validation (stratified).
        assert_eq!(settings["examples"]["valid"], 6, "{settings}");
    }
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("run-lora/adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["task_type"], "SEQ_CLS");
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["classifier"]));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("run-head/model/config.json")).unwrap()).unwrap();
    assert_eq!(config["id2label"], serde_json::json!({"0": "neg", "1": "pos"}));
}

#[test]
fn classifier_data_errors_name_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (tmp.path().join("model"), tmp.path().join("data"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_bert(&model);
    let run = |files: &[(&str, &str)], extra: &[&str]| -> String {
        for (name, text) in files {
            std::fs::write(data.join(name), text).unwrap();
        }
        let mut args = vec!["train", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()];
        args.extend(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_kiln")).args(&args).env("XDG_RUNTIME_DIR", "/tmp").output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let ok = "{\"text\": \"w4 w5\", \"label\": \"a\"}\n{\"text\": \"w6\", \"label\": \"b\"}\n";
    let err = run(&[("train.jsonl", &format!("{ok}{{\"text\": \"w7\"}}\n"))], &[]);
    assert!(err.contains("train.jsonl") && err.contains("line 3") && err.contains("label"), "{err}");
    let err = run(&[("train.jsonl", ok), ("test.jsonl", "{\"text\": \"w7\", \"label\": \"c\"}\n")], &[]);
    assert!(err.contains("test") && err.contains("`c`"), "{err}");
    std::fs::remove_file(data.join("test.jsonl")).unwrap();
    let err = run(&[("train.jsonl", ok)], &["--strategy", "top:x"]);
    assert!(err.contains("top:x"), "{err}");
    let err = run(&[("train.jsonl", ok)], &["--class-weights", "1,2,3"]);
    assert!(err.contains("class-weights") && err.contains("2"), "{err}");
    let err = run(&[("train.jsonl", ok)], &["--dropout", "1.5"]);
    assert!(err.contains("--dropout") && err.contains("1.5"), "{err}");
}

/// Early stopping on a language model: patience 1 with a min_delta nothing can beat stops at
/// the first evaluation after step 0, and the saved adapter is step 0's (every lora_B zero).
#[test]
fn lm_early_stopping_restores_the_best_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data, run) = (tmp.path().join("model"), tmp.path().join("data"), tmp.path().join("run"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_model(&model);
    counting_data(&data);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (out, _) = kiln(&[
        "train",
        "--model",
        &s(&model),
        "--data",
        &s(&data),
        "--out",
        &s(&run),
        "--steps",
        "20",
        "--lr",
        "3e-2",
        "--eval-every",
        "5",
        "--patience",
        "1",
        "--min-delta",
        "100",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
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
    let (tmp, model, data) = bert_workspace();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let config = tmp.path().join("run.toml");
    let toml = format!(
        "model = {:?}\ndata = {:?}\nstrategy = \"head\"\nepochs = 3\nlr = 0.05\nbatch_size = 16\neval_every = 0\n\
         metric = \"accuracy\"\n",
        s(&model),
        s(&data)
    );
    std::fs::write(&config, toml).unwrap();
    let (run1, run2) = (tmp.path().join("run1"), tmp.path().join("run2"));
    kiln(&["train", "--config", &s(&config), "--lr", "0.02", "--out", &s(&run1)]);
    let settings = |run: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run.join("settings.json")).unwrap()).unwrap()
    };
    let first = settings(&run1);
    assert_eq!(first["train"]["strategy"], "head");
    assert_eq!(first["train"]["epochs"], 3);
    assert_eq!(first["train"]["batch_size"], 16);
    assert_eq!(first["train"]["lr"].as_f64().unwrap() as f32, 0.02, "the command line wins over the file");
    assert_eq!(first["train"]["stop"]["metric"], "accuracy");
    kiln(&["train", "--config", &s(&run1.join("config.toml")), "--out", &s(&run2)]);
    assert_eq!(settings(&run2)["train"], first["train"], "config.toml reproduces the settings");
}

/// The step and validation events of a run, without their wall-clock times.
fn curve(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "step" || e["event"] == "eval")
        .map(|mut e| {
            e.as_object_mut().unwrap().remove("seconds");
            e
        })
        .collect()
}

/// Runs `kiln train ARGS --halt-after STEP`, which must fail as asked, then `--resume`s it.
fn halt_and_resume(args: &[String], run: &Path, step: usize) {
    let mut halted: Vec<String> = args.to_vec();
    halted.extend(["--halt-after".to_string(), step.to_string()]);
    let out = Command::new(env!("CARGO_BIN_EXE_kiln")).args(&halted).env("XDG_RUNTIME_DIR", "/tmp").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("halted after step {step}")));
    kiln(&["train", "--resume", run.to_str().unwrap(), "--json"]);
}

/// A run halted right after the checkpoint of step 6 and resumed with `--resume` gives the
/// uninterrupted run's curve: the same loss, learning rate and gradient norm at every step, the
/// same validations, the same test scores (dropout on, so the masks must line up too).
#[test]
fn killed_and_resumed_run_equals_the_uninterrupted_one() {
    let (tmp, model, data) = bert_workspace();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (whole, halted) = (tmp.path().join("whole"), tmp.path().join("halted"));
    let common = |out: &Path| -> Vec<String> {
        [
            "train",
            "--model",
            &s(&model),
            "--data",
            &s(&data),
            "--out",
            &s(out),
            "--strategy",
            "lora",
            "--steps",
            "10",
            "--batch-size",
            "8",
            "--lr",
            "1e-2",
            "--lora-dropout",
            "0.1",
            "--eval-every",
            "4",
            "--save-every",
            "3",
            "--json",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let args: Vec<String> = common(&whole);
    kiln(&args.iter().map(String::as_str).collect::<Vec<_>>());
    halt_and_resume(&common(&halted), &halted, 6);

    let (a, b) = (curve(&whole), curve(&halted));
    assert_eq!(a.iter().filter(|e| e["event"] == "step").count(), 10);
    assert_eq!(a, b, "the resumed curve equals the uninterrupted one");
    let report = |run: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap()
    };
    assert_eq!(report(&whole)["test"], report(&halted)["test"]);
    assert_eq!(report(&whole)["best"], report(&halted)["best"]);
    // Resuming a finished run trains no further step.
    kiln(&["train", "--resume", &s(&whole), "--json"]);
    assert_eq!(curve(&whole).iter().filter(|e| e["event"] == "step").count(), 10);
    assert_eq!(report(&whole)["steps"], 10);
}

/// The same for a language model, with gradient accumulation and LoRA dropout: halted after step
/// 4 and resumed, the curve and the adapter equal the uninterrupted run's.
#[test]
fn killed_and_resumed_lm_run_equals_the_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (tmp.path().join("model"), tmp.path().join("data"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_model(&model);
    counting_data(&data);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (whole, halted) = (tmp.path().join("whole"), tmp.path().join("halted"));
    let common = |out: &Path| -> Vec<String> {
        [
            "train",
            "--model",
            &s(&model),
            "--data",
            &s(&data),
            "--out",
            &s(out),
            "--steps",
            "8",
            "--batch-size",
            "4",
            "--grad-accum",
            "2",
            "--lr",
            "3e-2",
            "--lora-dropout",
            "0.1",
            "--eval-every",
            "3",
            "--save-every",
            "2",
            "--json",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let args = common(&whole);
    kiln(&args.iter().map(String::as_str).collect::<Vec<_>>());
    halt_and_resume(&common(&halted), &halted, 4);
    let (a, b) = (curve(&whole), curve(&halted));
    assert_eq!(a.iter().filter(|e| e["event"] == "step").count(), 8);
    assert_eq!(a, b, "the resumed curve equals the uninterrupted one");
    let adapter = |run: &Path| std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(adapter(&whole) == adapter(&halted), "the same adapter, byte for byte");
}

/// A loss that is no longer finite stops the run with the step and points at the last good
/// checkpoint.
#[test]
fn non_finite_loss_names_the_step_and_the_last_good_checkpoint() {
    let (tmp, model, data) = bert_workspace();
    let run = tmp.path().join("run");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "train",
            "--model",
            &s(&model),
            "--data",
            &s(&data),
            "--out",
            &s(&run),
            "--strategy",
            "full",
            "--lr",
            "1e38",
            "--steps",
            "8",
            "--save-every",
            "1",
            "--max-grad-norm",
            "0",
            "--warmup-ratio",
            "0",
        ])
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("loss became") && err.contains("at step"), "{err}");
    assert!(err.contains("last good checkpoint is step") && err.contains("checkpoints"), "{err}");
}

/// A retain set is scored before and after training (forgetting in report.json), for both
/// model families, and `--ewc` estimates its Fisher from it; `--ewc` without one is an error.
#[test]
fn retain_sets_measure_forgetting_and_feed_ewc() {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // A language model: retain text is the validation file.
    let tmp = tempfile::tempdir().unwrap();
    let (model, data, run) = (tmp.path().join("model"), tmp.path().join("data"), tmp.path().join("run"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_model(&model);
    counting_data(&data);
    let retain = s(&data.join("valid.jsonl"));
    let (out, _) = kiln(&[
        "train",
        "--model",
        &s(&model),
        "--data",
        &s(&data),
        "--out",
        &s(&run),
        "--steps",
        "6",
        "--lr",
        "3e-2",
        "--retain",
        &retain,
        "--ewc",
        "100",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let f = &report["forgetting"];
    assert!(f["retain_tokens"].as_u64().unwrap() > 0, "{report}");
    assert!(f["perplexity_before"].as_f64().unwrap() > 1.0 && f["perplexity_after"].as_f64().unwrap() > 1.0);
    let fail = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["train", "--model", &s(&model), "--data", &s(&data), "--steps", "1", "--ewc", "1"])
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .unwrap();
    assert!(!fail.status.success());
    assert!(String::from_utf8_lossy(&fail.stderr).contains("retain"));

    // A retain set drawn from the base model: written to the run folder, scored, and the mean KL
    // from the base after training is above 0 (the adapter moved the distribution).
    let run = tmp.path().join("run-generated");
    let (out, _) = kiln(&[
        "train",
        "--model",
        &s(&model),
        "--data",
        &s(&data),
        "--out",
        &s(&run),
        "--steps",
        "6",
        "--lr",
        "3e-2",
        "--retain-generate",
        "5",
        "--retain-sample-len",
        "8",
        "--ewc",
        "100",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let f = &report["forgetting"];
    assert_eq!(f["retain_examples"], 5, "{report}");
    assert_eq!(f["kl_from_base_before"], 0.0, "{report}");
    assert!(f["kl_from_base_after"].as_f64().unwrap() > 1e-4, "{report}");
    // The Fisher's size is logged, so λ can be chosen.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let fisher: serde_json::Value = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .find(|e: &serde_json::Value| e["event"] == "fisher")
        .unwrap();
    assert_eq!(fisher["retain_examples"], 5);
    assert!(fisher["max"].as_f64().unwrap() >= fisher["mean"].as_f64().unwrap());
    assert!(fisher["weights"].as_u64().unwrap() > 0);
    assert_eq!(fisher["lambda"], 100.0);
    let samples = std::fs::read_to_string(run.join("data/retain.jsonl")).unwrap();
    assert_eq!(samples.lines().count(), 5, "{samples}");
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(md.contains("| kl_from_base |"), "{md}");
    // Llama has no dropout layers of its own: --dropout says so instead of doing nothing.
    let fail = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["train", "--model", &s(&model), "--data", &s(&data), "--steps", "1", "--dropout", "0.1"])
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .unwrap();
    assert!(!fail.status.success());
    assert!(
        String::from_utf8_lossy(&fail.stderr).contains("no dropout layers"),
        "{}",
        String::from_utf8_lossy(&fail.stderr)
    );

    // A classifier: retain texts are labelled.
    let (tmp, model, data) = bert_workspace();
    let run = tmp.path().join("run");
    let (out, _) = kiln(&[
        "train",
        "--model",
        &s(&model),
        "--data",
        &s(&data),
        "--out",
        &s(&run),
        "--strategy",
        "full",
        "--steps",
        "4",
        "--lr",
        "1e-3",
        "--retain",
        &s(&data.join("test.jsonl")),
        "--ewc",
        "1000",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let f = &report["forgetting"];
    assert_eq!(f["retain_examples"], 32, "{report}");
    for k in ["accuracy_before", "accuracy_after", "macro_f1_before", "macro_f1_after"] {
        assert!((0.0..=1.0).contains(&f[k].as_f64().unwrap()), "{k}: {report}");
    }
}

/// A word of class `pos` (w10..w39) or `neg` (w50..w79), drawn by a small LCG.
fn class_text(label: &str, seed: usize, words: usize) -> String {
    let base = if label == "pos" { 10 } else { 50 };
    let mut x = seed as u64 * 2_654_435_761 + 12345;
    (0..words)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            format!("w{}", base + (x >> 33) as usize % 30)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn jsonl_line(text: &str, label: &str) -> String {
    format!("{}\n", serde_json::json!({"text": text, "label": label}))
}

/// `kiln data inspect`, `clean` and `split` on planted problems: each is found, the cleaned files
/// lack exactly the planted rows (the log names each), the inputs are untouched, and a split keeps
/// duplicate clusters whole. `--suspicious` finds the flipped labels with the tiny BERT.
#[test]
fn data_commands_find_and_fix_planted_problems() {
    let (tmp, model, _) = bert_workspace();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let label = |i: usize| if i.is_multiple_of(2) { "pos" } else { "neg" };
    let mut train: Vec<String> = (0..60).map(|i| jsonl_line(&class_text(label(i), i, 40), label(i))).collect();
    let text = |i: usize| class_text(label(i), i, 40);
    let last_word_changed = |t: &str| format!("{} w95", t.rsplit_once(' ').unwrap().0);
    train.push(jsonl_line(&format!("  {}  ", text(0).to_uppercase()), "pos")); // line 61: exact copy of line 1
    train.push(jsonl_line(&last_word_changed(&text(1)), "neg")); // 62: near copy of line 2
    train.push(jsonl_line(&text(2), "neg")); // 63: line 3's text, other label
    train.push(jsonl_line(
        &"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg".repeat(3),
        "pos",
    )); // 64: a base64 blob
    train.push(jsonl_line("   ", "neg")); // 65: empty
    // 66..68: neg words, labelled pos (flipped).
    for i in [101, 103, 105] {
        train.push(jsonl_line(&class_text("neg", i, 40), "pos"));
    }
    let mut test: Vec<String> = (200..220).map(|i| jsonl_line(&class_text(label(i), i, 40), label(i))).collect();
    test.push(jsonl_line(&text(4), label(4))); // test line 21: exact copy of train line 5
    test.push(jsonl_line(&last_word_changed(&text(6)), label(6))); // 22: near copy of train line 7
    let dir = tmp.path().join("curate");
    std::fs::create_dir_all(&dir).unwrap();
    let (train_path, test_path) = (dir.join("train.jsonl"), dir.join("test.jsonl"));
    std::fs::write(&train_path, train.concat()).unwrap();
    std::fs::write(&test_path, test.concat()).unwrap();

    let report = tmp.path().join("report.md");
    let (out, _) = kiln(&[
        "data",
        "inspect",
        &s(&train_path),
        &s(&test_path),
        "--model",
        &s(&model),
        "--max-len",
        "32",
        "--suspicious",
        "--report",
        &s(&report),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let lines = |rows: &serde_json::Value| -> Vec<(u64, u64)> {
        rows.as_array().unwrap().iter().map(|r| (r["file"].as_u64().unwrap(), r["line"].as_u64().unwrap())).collect()
    };
    let exact: Vec<Vec<(u64, u64)>> = v["exact_duplicates"].as_array().unwrap().iter().map(lines).collect();
    assert_eq!(
        exact,
        vec![vec![(0, 1), (0, 61)], vec![(0, 3), (0, 63)], vec![(0, 5), (1, 21)]],
        "{}",
        v["exact_duplicates"]
    );
    let near: Vec<((u64, u64), (u64, u64))> = v["near_duplicates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let l = |r: &serde_json::Value| (r["file"].as_u64().unwrap(), r["line"].as_u64().unwrap());
            (l(&p["a"]), l(&p["b"]))
        })
        .collect();
    assert_eq!(near, vec![((0, 2), (0, 62)), ((0, 7), (1, 22))], "{}", v["near_duplicates"]);
    let conflicts: Vec<Vec<(u64, u64)>> = v["label_conflicts"].as_array().unwrap().iter().map(lines).collect();
    assert_eq!(conflicts, vec![vec![(0, 3), (0, 63)]]);
    let leaks: Vec<((u64, u64), bool)> = v["file_leaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            ((l["row"]["file"].as_u64().unwrap(), l["row"]["line"].as_u64().unwrap()), l["exact"].as_bool().unwrap())
        })
        .collect();
    assert_eq!(leaks, vec![((1, 21), true), ((1, 22), false)]);
    let f0 = &v["files"][0];
    assert_eq!(lines(&f0["empty"]), vec![(0, 65)]);
    assert_eq!(f0["junk"][0][0]["line"], 64);
    assert_eq!(f0["junk"][0][1], "base64");
    assert_eq!(f0["labels"]["pos"], 35, "{f0}");
    assert!(f0["token_lengths"]["over_max"].as_u64().unwrap() >= 60, "{f0}");
    let flagged: Vec<u64> =
        v["suspicious_labels"].as_array().unwrap().iter().map(|s| s["row"]["line"].as_u64().unwrap()).collect();
    // The flipped rows, and line 63 (line 3's pos words labelled neg), lead the list.
    let mut top = flagged[..4.min(flagged.len())].to_vec();
    top.sort();
    assert_eq!(top, vec![63, 66, 67, 68], "suspects {flagged:?}");
    let md = std::fs::read_to_string(&report).unwrap();
    for section in [
        "## Exact duplicates",
        "## Near duplicates",
        "## Duplicates whose labels disagree",
        "## Leakage across files",
        "## Empty and junk",
        "## Suspicious labels",
        "train.jsonl:66",
    ] {
        assert!(md.contains(section), "report.md lacks {section}:\n{md}");
    }

    // clean: every planted row goes, with its reason; the inputs are as they were.
    let cleaned = tmp.path().join("cleaned");
    let (before_train, before_test) = (std::fs::read(&train_path).unwrap(), std::fs::read(&test_path).unwrap());
    kiln(&["data", "clean", &s(&train_path), &s(&test_path), "--out", &s(&cleaned)]);
    assert_eq!(std::fs::read(&train_path).unwrap(), before_train);
    assert_eq!(std::fs::read(&test_path).unwrap(), before_test);
    let log: Vec<serde_json::Value> = std::fs::read_to_string(cleaned.join("removed.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let removed: Vec<(String, u64, String)> = log
        .iter()
        .map(|r| {
            (r["file"].as_str().unwrap().into(), r["line"].as_u64().unwrap(), r["reason"].as_str().unwrap().into())
        })
        .collect();
    let reason = |file: &str, line: u64| -> String {
        removed
            .iter()
            .find(|r| r.0 == file && r.1 == line)
            .map(|r| r.2.clone())
            .unwrap_or_else(|| panic!("{file}:{line} kept; removed {removed:?}"))
    };
    assert!(reason("train.jsonl", 61).starts_with("exact duplicate"));
    assert!(reason("train.jsonl", 62).starts_with("near duplicate"));
    assert!(
        reason("train.jsonl", 3).starts_with("label conflict")
            && reason("train.jsonl", 63).starts_with("label conflict")
    );
    assert!(reason("train.jsonl", 64).contains("base64"));
    assert_eq!(reason("train.jsonl", 65), "empty text");
    assert!(reason("test.jsonl", 21).starts_with("exact duplicate"));
    assert!(reason("test.jsonl", 22).starts_with("near duplicate"));
    assert_eq!(log.iter().find(|r| r["line"] == 61).unwrap()["kept"], "train.jsonl:1");
    assert_eq!(removed.len(), 8, "{removed:?}");
    let count = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
    assert_eq!((count(&cleaned.join("train.jsonl")), count(&cleaned.join("test.jsonl"))), (68 - 6, 20));
    // Writing over an input is refused.
    let fail = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["data", "clean", &s(&train_path), "--out", &s(&dir)])
        .output()
        .unwrap();
    assert!(!fail.status.success() && String::from_utf8_lossy(&fail.stderr).contains("overwrite"));

    // Rebalancing the training file: oversampled to the larger class.
    let balanced = tmp.path().join("balanced");
    kiln(&["data", "clean", &s(&cleaned.join("train.jsonl")), "--out", &s(&balanced), "--rebalance", "oversample"]);
    let text = std::fs::read_to_string(balanced.join("train.jsonl")).unwrap();
    let pos = text.lines().filter(|l| l.contains("\"label\":\"pos\"") || l.contains("\"label\": \"pos\"")).count();
    assert_eq!(pos * 2, text.lines().count(), "{pos} pos of {}", text.lines().count());

    // split: the near-duplicate pair and the exact pair each land in one split, for any seed.
    let all = tmp.path().join("all.jsonl");
    std::fs::write(&all, train.concat()).unwrap();
    for seed in 0..4 {
        let out_dir = tmp.path().join(format!("split{seed}"));
        kiln(&[
            "data",
            "split",
            &s(&all),
            "--out",
            &s(&out_dir),
            "--seed",
            &seed.to_string(),
            "--valid",
            "0.2",
            "--test",
            "0.3",
        ]);
        let where_is = |needle: &str| -> Vec<&str> {
            ["train", "valid", "test"]
                .into_iter()
                .filter(|n| std::fs::read_to_string(out_dir.join(format!("{n}.jsonl"))).unwrap().contains(needle))
                .collect()
        };
        assert_eq!(where_is(&text_of(&train[1])[..60]).len(), 1, "seed {seed}: the near pair is split");
        let total: usize = ["train", "valid", "test"].iter().map(|n| count(&out_dir.join(format!("{n}.jsonl")))).sum();
        assert_eq!(total, train.len());
    }
}

/// The `text` of a jsonl line.
fn text_of(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["text"].as_str().unwrap().to_string()
}

/// `kiln eval ARGS --out OUT --json` and its report, checked to be the one written to OUT.
fn eval_report(args: &[&str], out: &Path) -> serde_json::Value {
    let mut all = vec!["eval", "--out", out.to_str().unwrap(), "--json"];
    all.extend(args);
    let (stdout, _) = kiln(&all);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["examples"], written["examples"]);
    assert!(out.join("report.md").is_file());
    report
}

/// `kiln eval` on a tiny BERT classifier trained with LoRA (loaded from its run folder's
/// adapter on the base the adapter names) and with `head` (a save_pretrained folder): scores,
/// per-group gaps, counterfactual swaps of the class markers (they must flip) and of absent
/// words (not counted), every edge case answered, latency and throughput, the plots.
#[test]
fn eval_classifier_reports_every_part() {
    let (tmp, model, data) = bert_workspace();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run = tmp.path().join("run");
    kiln(&[
        "train",
        "--model",
        &s(&model),
        "--data",
        &s(&data),
        "--out",
        &s(&run),
        "--strategy",
        "lora",
        "--epochs",
        "6",
        "--batch-size",
        "8",
        "--lr",
        "1e-2",
        "--lora-dropout",
        "0",
        "--eval-every",
        "0",
        "--json",
    ]);
    // The marker words swap the class; w94 and w95 never occur.
    let pairs = tmp.path().join("pairs.txt");
    std::fs::write(&pairs, "w10,w60\nw94\tw95\n").unwrap();
    let cases = tmp.path().join("cases.jsonl");
    std::fs::write(&cases, "{\"text\": \"w10 w10 w10\", \"name\": \"only markers\"}\n").unwrap();
    let out = tmp.path().join("eval");
    let test = s(&data.join("test.jsonl"));
    let r = eval_report(
        &[
            "--model",
            &s(&run.join("adapter")),
            "--data",
            &test,
            "--group-by",
            "group",
            "--swap-terms",
            &s(&pairs),
            "--edge-cases",
            &s(&cases),
            "--latency-runs",
            "3",
            "--warmup",
            "1",
            "--batch-sizes",
            "1,2,4",
        ],
        &out,
    );
    assert_eq!(r["task"], "classification");
    assert_eq!(r["examples"], 32);
    let c = &r["classification"];
    assert!(c["metrics"]["accuracy"].as_f64().unwrap() >= 0.9, "{c}");
    let confusion: usize = c["metrics"]["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|x| x.as_u64().unwrap() as usize)
        .sum();
    assert_eq!(confusion, 32);
    let ece = c["calibration"]["ece"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ece) && c["calibration"]["bins"].as_array().unwrap().len() == 15);

    // Groups a (i % 3 == 0: 10 of 32) and b, each gap inside its own interval.
    let g = &r["groups"];
    assert_eq!(g["rows"][0]["group"], "a");
    assert_eq!(g["rows"][0]["examples"], 10);
    let gap = &g["gaps"][0];
    assert_eq!(gap["metric"], "accuracy");
    let (v, lo, hi) = (gap["gap"].as_f64().unwrap(), gap["ci_low"].as_f64().unwrap(), gap["ci_high"].as_f64().unwrap());
    assert!(lo <= v + 1e-12 && v <= hi + 1e-12 && v >= 0.0, "{gap}");
    assert_eq!(gap["flagged"], v > 0.05);

    // Every test text has a marker: 32 variants of w10<->w60, and they flip the class.
    let cf = &r["counterfactual"];
    assert_eq!(cf["examples_with_terms"], 32);
    let pair = &cf["by_pair"][0];
    assert_eq!(pair["pair"], "w10 ↔ w60");
    assert_eq!(pair["variants"], 32);
    assert!(pair["flip_rate"].as_f64().unwrap() >= 0.9, "{pair}");
    assert!(pair["mean_change"].as_f64().unwrap() < 0.0, "the old class loses probability: {pair}");
    assert_eq!(cf["by_pair"].as_array().unwrap().len(), 1, "absent terms are not counted");

    // Built-in cases and the user's: each has an answer or an error, and the long one says it
    // was truncated to --max-len (the run's 128, below the model's maximum).
    let edge = r["edge_cases"].as_array().unwrap();
    assert_eq!(edge.len(), 11);
    for e in edge {
        assert!(e["output"].is_string() || e["error"].is_string(), "{e}");
    }
    let long = edge.iter().find(|e| e["name"] == "longer than the model's maximum").unwrap();
    let note = long["note"].as_str().unwrap();
    assert!(note.contains("truncated from") && note.contains(&format!("to {} tokens", r["max_len"])), "{note}");
    assert!(long["tokens_before_truncation"].as_u64().unwrap() > r["model_max_positions"].as_u64().unwrap());
    assert_eq!(edge[10]["name"], "only markers");
    assert_eq!(edge[10]["output"], "pos");

    let lat = &r["latency"];
    assert_eq!(lat["single"]["runs"], 3);
    let (p50, p95, p99) = (
        lat["single"]["p50_ms"].as_f64().unwrap(),
        lat["single"]["p95_ms"].as_f64().unwrap(),
        lat["single"]["p99_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p95 && p95 <= p99, "{lat}");
    let batches: Vec<u64> =
        lat["throughput"].as_array().unwrap().iter().map(|p| p["batch"].as_u64().unwrap()).collect();
    assert_eq!(batches, [1, 2, 4]);
    assert!(r["peak_gpu_bytes"].as_u64().unwrap() > 0);
    for png in ["confusion.png", "reliability.png", "groups.png", "latency.png", "throughput.png"] {
        assert!(out.join(png).is_file(), "missing {png}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for section in
        ["## Scores", "## Per group", "## Counterfactual swaps", "## Edge cases", "## Latency and throughput"]
    {
        assert!(md.contains(section), "report.md lacks {section}");
    }

    // A save_pretrained folder (the head strategy's model/), parts switched off.
    let head = tmp.path().join("run-head");
    kiln(&[
        "train",
        "--model",
        &s(&model),
        "--data",
        &s(&data),
        "--out",
        &s(&head),
        "--strategy",
        "head",
        "--epochs",
        "30",
        "--lr",
        "1e-2",
        "--eval-every",
        "0",
        "--json",
    ]);
    let r = eval_report(
        &[
            "--model",
            &s(&head.join("model")),
            "--data",
            &test,
            "--no-counterfactual",
            "--no-edge-cases",
            "--no-latency",
            "--no-plots",
        ],
        &tmp.path().join("eval-head"),
    );
    assert!(r["classification"]["metrics"]["accuracy"].as_f64().unwrap() >= 0.9, "{r}");
    assert!(
        r["latency"].is_null() && r["edge_cases"].is_null() && r["counterfactual"].is_null() && r["groups"].is_null()
    );
    assert!(!tmp.path().join("eval-head/latency.png").exists());
}

/// `kiln eval` on the tiny Llama with a (briefly trained) adapter: loss and perplexity, greedy
/// completions scored against the references (exact match equals the share of samples that
/// match), per-group loss and exact match with gaps, counterfactual swaps in prompts, prompt
/// edge cases (an empty prompt is an error in the report, not a crash; a long one is cut and
/// says so), time to first token, tokens/s and throughput.
#[test]
fn eval_language_model_reports_every_part() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data, run) = (tmp.path().join("model"), tmp.path().join("data"), tmp.path().join("run"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_model(&model);
    counting_data(&data);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    kiln(&[
        "train",
        "--model",
        &s(&model),
        "--data",
        &s(&data),
        "--out",
        &s(&run),
        "--steps",
        "40",
        "--lr",
        "3e-2",
        "--eval-every",
        "0",
        "--lora-dropout",
        "0",
        "--max-len",
        "24",
        "--json",
    ]);
    // The validation windows with a group each: starts below 40 and from 40 on.
    let valid = std::fs::read_to_string(data.join("valid.jsonl")).unwrap();
    let test: String = valid
        .lines()
        .enumerate()
        .map(|(i, l)| format!("{}, \"group\": \"{}\"}}\n", l.trim_end_matches('}'), if i < 8 { "low" } else { "high" }))
        .collect();
    std::fs::write(data.join("test.jsonl"), test).unwrap();
    let pairs = tmp.path().join("pairs.txt");
    std::fs::write(&pairs, "w8,w9\n").unwrap();
    let out = tmp.path().join("eval");
    let r = eval_report(
        &[
            "--model",
            &s(&model),
            "--lora",
            &s(&run.join("adapter")),
            "--data",
            &s(&data.join("test.jsonl")),
            "--group-by",
            "group",
            "--swap-terms",
            &s(&pairs),
            "--gen-tokens",
            "4",
            "--samples",
            "100",
            "--latency-runs",
            "2",
            "--warmup",
            "1",
            "--batch-sizes",
            "1,4",
        ],
        &out,
    );
    assert_eq!(r["task"], "language-model");
    assert_eq!(r["examples"], 16);
    assert_eq!(r["max_len"], 24, "the run's settings.json gives --max-len");
    let l = &r["language_model"];
    let (loss, ppl) = (l["loss"].as_f64().unwrap(), l["perplexity"].as_f64().unwrap());
    assert!(loss.is_finite() && (ppl - loss.exp()).abs() < 1e-6 * ppl, "{l}");
    let samples = l["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 16);
    let matches = samples
        .iter()
        .filter(|s| {
            s["output"].as_str().unwrap().split_whitespace().eq(s["reference"].as_str().unwrap().split_whitespace())
        })
        .count();
    let gen_ = &l["generation"];
    assert_eq!(gen_["examples"], 16);
    assert!((gen_["exact_match"].as_f64().unwrap() - matches as f64 / 16.0).abs() < 1e-12, "{gen_}");
    assert!(gen_["char_error_rate"].as_f64().unwrap() >= 0.0 && gen_["unit_error_rate"].as_f64().unwrap() >= 0.0);

    let g = &r["groups"];
    assert_eq!((g["rows"][0]["group"].as_str(), g["rows"][0]["examples"].as_u64()), (Some("high"), Some(8)));
    let row = &g["rows"][1]["metrics"];
    assert!((row["perplexity"].as_f64().unwrap() - row["loss"].as_f64().unwrap().exp()).abs() < 1e-9);
    let metrics: Vec<&str> = g["gaps"].as_array().unwrap().iter().map(|x| x["metric"].as_str().unwrap()).collect();
    assert_eq!(metrics, ["loss", "exact_match"]);

    // w8 and w9 are in the prompts of the windows starting at 5..=9 (the valid ones: 5).
    let cf = &r["counterfactual"];
    assert_eq!(cf["examples_with_terms"], 1);
    assert_eq!(cf["overall"]["variants"], 1);
    assert!(cf["rule"].as_str().unwrap().contains("greedy completion"));

    let edge = r["edge_cases"].as_array().unwrap();
    let empty = edge.iter().find(|e| e["name"] == "empty").unwrap();
    assert!(empty["error"].as_str().unwrap().contains("prompt is empty"), "{empty}");
    let long = edge.iter().find(|e| e["name"] == "longer than the model's maximum").unwrap();
    assert!(long["note"].as_str().unwrap().contains("prompt truncated from"), "{long}");
    assert!(long["output"].is_string(), "{long}");
    assert_eq!(long["tokens"], 20, "24 tokens less the 4 new ones");

    let lat = &r["latency"];
    let gen_ = &lat["generation"];
    assert_eq!(gen_["ttft"]["runs"], 2);
    assert!(gen_["ttft"]["p50_ms"].as_f64().unwrap() <= gen_["total"]["p50_ms"].as_f64().unwrap());
    assert!(gen_["tokens_per_second"].as_f64().unwrap() > 0.0, "{gen_}");
    assert_eq!(lat["throughput"].as_array().unwrap().len(), 2);
    assert!(out.join("groups.png").is_file() && out.join("latency.png").is_file());
}

/// Bad inputs to `kiln eval` stop it with a message naming the file and line, or what to do.
#[test]
fn eval_errors_name_the_problem() {
    let (tmp, model, data) = bert_workspace();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let fail = |args: &[&str]| -> String {
        let mut all = vec!["eval"];
        all.extend(args);
        let out = Command::new(env!("CARGO_BIN_EXE_kiln")).args(&all).env("XDG_RUNTIME_DIR", "/tmp").output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"w4\", \"label\": \"pos\"}\n{\"text\": 5}\n").unwrap();
    let test = s(&data.join("test.jsonl"));
    let m = s(&model);
    let err = fail(&["--model", &m, "--data", &s(&bad), "--no-counterfactual"]);
    assert!(err.contains("bad.jsonl") && err.contains("line 2"), "{err}");
    let pairs = tmp.path().join("pairs.txt");
    std::fs::write(&pairs, "he,she\nlonely\n").unwrap();
    let err = fail(&["--model", &m, "--data", &test, "--swap-terms", &s(&pairs)]);
    assert!(err.contains("pairs.txt") && err.contains("line 2"), "{err}");
    let cases = tmp.path().join("cases.jsonl");
    std::fs::write(&cases, "{\"name\": \"no text\"}\n").unwrap();
    let err = fail(&["--model", &m, "--data", &test, "--no-counterfactual", "--edge-cases", &s(&cases)]);
    assert!(err.contains("cases.jsonl") && err.contains("line 1") && err.contains("`text`"), "{err}");
    // An encoder without a trained head, and an adapter whose base is not here.
    let err = fail(&["--model", &m, "--data", &test, "--no-counterfactual"]);
    assert!(err.contains("classifier.weight") && err.contains("classification head"), "{err}");
    let adapter = tmp.path().join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    std::fs::write(
        adapter.join("adapter_config.json"),
        "{\"peft_type\": \"LORA\", \"task_type\": \"SEQ_CLS\", \"base_model_name_or_path\": \"/nowhere/minilm\"}",
    )
    .unwrap();
    let err = fail(&["--model", &s(&adapter), "--data", &test, "--no-counterfactual"]);
    assert!(err.contains("/nowhere/minilm") && err.contains("--model BASE --lora"), "{err}");
    let err = fail(&["--model", &m, "--data", &test, "--batch-sizes", "1,x"]);
    assert!(err.contains("--batch-sizes"), "{err}");
}

/// LoRA on a base quantized on load (`--quantize q4_0`): the error per tensor type and the
/// validation perplexity before and after are reported, the memory table is printed, the
/// adapter learns, generation runs on the quantized base; a budget the run cannot fit is
/// refused before any work, saying what to lower.
#[test]
fn train_on_a_quantized_base_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data, run) = (tmp.path().join("model"), tmp.path().join("data"), tmp.path().join("run"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_model(&model);
    counting_data(&data);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (m, d, r) = (s(&model), s(&data), s(&run));
    let common = [
        "train",
        "--model",
        &m,
        "--data",
        &d,
        "--quantize",
        "q4_0",
        "--steps",
        "60",
        "--batch-size",
        "8",
        "--lr",
        "3e-2",
        "--eval-every",
        "0",
        "--lora-dropout",
        "0",
    ];
    let (_, err) = kiln(&[&common[..], &["--out", &r]].concat());
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
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    let q = &report["quantize"];
    let (before, after) = (q["val_ppl_f32"].as_f64().unwrap(), q["val_ppl_quantized"].as_f64().unwrap());
    assert!(before > 1.0 && (after / before - 1.0).abs() < 0.2, "perplexity {before} -> {after}");
    assert!(q["report"]["by_type"]["q_proj"]["max_abs"].as_f64().unwrap() > 0.0);
    assert!(report["memory_estimate_bytes"].as_u64().unwrap() > 0);
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("settings.json")).unwrap()).unwrap();
    assert_eq!(settings["base_quantized"]["q4_0"][0], 12);
    let evals = report["evals"].as_array().unwrap();
    let last_val = evals.last().unwrap()[1].as_f64().unwrap();
    let first_val = q["val_loss_quantized"].as_f64().unwrap();
    assert!(last_val < first_val - 0.5, "validation loss fell on the quantized base: {first_val} -> {evals:?}");

    // Refused before training: the budget is far below the estimate.
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([&common[..], &["--out", &s(&tmp.path().join("run2")), "--gpu-memory", "0"]].concat())
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("lower --batch-size (now 8)") && err.contains("--gpu-memory"), "{err}");
    assert!(!tmp.path().join("run2/metrics.jsonl").exists(), "refused before the run started");
}

/// The lines of a study's trials.jsonl, each without its wall time.
fn study_log(study: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(study.join("trials.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

/// `kiln tune` on the tiny BERT (head strategy) with successive halving 4,2,16 over 4 trials:
/// all 4 train 4 steps, the 2 best continue to 8, the best of those to 16. Checks that each rung
/// keeps the right trials and that the logged objectives are the runs' own best validations;
/// that running the command again trains nothing, and that a study whose last results were lost
/// (as in a kill) retrains only those and logs the same results; that `best.toml` trains the
/// best trial again to exactly its score; and that another space is refused.
#[test]
fn tune_halving_keeps_the_best_resumes_and_its_best_config_reproduces() {
    let (tmp, model, data) = bert_workspace();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let space = tmp.path().join("space.toml");
    std::fs::write(
        &space,
        format!(
            "[base]\nmodel = {:?}\ndata = {:?}\nstrategy = \"head\"\nbatch_size = 8\n\n[params]\n\
             lr = {{ log_uniform = [1e-3, 0.3] }}\ndropout = {{ uniform = [0.0, 0.3] }}\n",
            s(&model),
            s(&data)
        ),
    )
    .unwrap();
    let study = tmp.path().join("study");
    let tune = [
        "tune",
        "--space",
        &s(&space),
        "--study",
        &s(&study),
        "--trials",
        "4",
        "--halving",
        "4,2,16",
        "--seed",
        "5",
        "--metric",
        "val-loss",
        "--json",
    ];
    let (out, _) = kiln(&tune);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    let log = study_log(&study);

    // (trial, rung) -> (objective, status, steps).
    let results = |log: &[serde_json::Value], rung: u64| -> Vec<(u64, f64, String, u64)> {
        log.iter()
            .filter(|r| r["event"] == "rung" && r["rung"] == rung)
            .map(|r| {
                (
                    r["trial"].as_u64().unwrap(),
                    r["objective"].as_f64().unwrap(),
                    r["status"].as_str().unwrap().into(),
                    r["steps"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    // The k best (lowest validation loss, ties to the earlier trial), in trial order.
    let best = |rs: &[(u64, f64, String, u64)], k: usize| -> Vec<u64> {
        let mut r = rs.to_vec();
        r.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let mut top: Vec<u64> = r.iter().take(k).map(|x| x.0).collect();
        top.sort();
        top
    };
    let (r0, r1, r2) = (results(&log, 0), results(&log, 1), results(&log, 2));
    assert_eq!(r0.len(), 4, "{log:?}");
    assert!(r0.iter().all(|r| r.2 == "paused" && r.3 == 4), "{r0:?}");
    let mut distinct: Vec<f64> = r0.iter().map(|r| r.1).collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "the ranking is not decided by ties: {r0:?}");
    assert_eq!(r1.iter().map(|r| r.0).collect::<Vec<_>>(), best(&r0, 2), "rung 1 keeps the 2 best of rung 0");
    assert_eq!(r2.iter().map(|r| r.0).collect::<Vec<_>>(), best(&r1, 1), "rung 2 keeps the best of rung 1");
    assert_eq!((r2[0].2.as_str(), r2[0].3), ("complete", 16));

    // Each logged objective is the trial's best validation loss up to that rung (metrics.jsonl
    // has it as an f32), and a pruned trial trained no step past its rung.
    for (trial, objective, _, steps) in r0.iter().chain(&r1) {
        let run = study.join(format!("trials/{trial:04}"));
        let events = curve(&run);
        let best_loss = events
            .iter()
            .filter(|e| e["event"] == "eval" && e["step"].as_u64().unwrap() <= *steps)
            .map(|e| e["val_loss"].as_f64().unwrap() as f32)
            .fold(f32::INFINITY, f32::min);
        // As f32: the losses are f32, and JSON readers may differ in the last bit of an f64.
        assert_eq!(*objective as f32, best_loss, "trial {trial} at step {steps}");
        let trained = events.iter().filter(|e| e["event"] == "step").count() as u64;
        let last = [&r0, &r1, &r2].iter().flat_map(|r| r.iter()).filter(|r| r.0 == *trial).map(|r| r.3).max().unwrap();
        assert_eq!(trained, last, "trial {trial}");
    }
    assert_eq!(summary["best"]["trial"].as_u64(), Some(r2[0].0));
    assert_eq!(summary["compute"]["steps"], 2 * 4 + 8 + 16);
    assert_eq!(summary["compute"]["all_trials_to_max_steps"], 4 * 16);
    for f in ["study.json", "results.md", "results.json", "best.toml", "study.png"] {
        assert!(study.join(f).is_file(), "missing {f}");
    }
    let md = std::fs::read_to_string(study.join("results.md")).unwrap();
    assert!(md.contains("| rank | trial | dropout | lr | val_loss |") && md.contains("pruned at step 4"), "{md}");

    // The same command again: nothing is trained.
    let metrics_len =
        |t: u64| std::fs::read_to_string(study.join(format!("trials/{t:04}/metrics.jsonl"))).unwrap().len();
    let before: Vec<usize> = (0..4).map(metrics_len).collect();
    kiln(&tune);
    assert_eq!(study_log(&study), log);
    assert_eq!((0..4).map(metrics_len).collect::<Vec<_>>(), before, "no trial trained again");

    // Lose the last two results, as a kill between a trial's end and its log line would: only
    // those are redone, from the trials' checkpoints, with the same results.
    let text = std::fs::read_to_string(study.join("trials.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(study.join("trials.jsonl"), lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    kiln(&tune);
    assert_eq!(study_log(&study), log, "the resumed study logs what the uninterrupted one did");

    // best.toml trains the best trial again, to exactly its score.
    let repro = tmp.path().join("repro");
    let (out, _) = kiln(&["train", "--config", &s(&study.join("best.toml")), "--out", &s(&repro), "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["best"]["value"].as_f64(), Some(r2[0].1), "{report}");
    assert_eq!(report["steps"], 16);

    // Another space in the same study folder is refused.
    std::fs::write(&space, std::fs::read_to_string(&space).unwrap().replace("0.3]", "0.5]")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln")).args(tune).env("XDG_RUNTIME_DIR", "/tmp").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("space file's contents changed"), "{err}");
}

/// Bad search spaces fail before any training, naming the file, the key and what was expected.
#[test]
fn tune_refuses_bad_spaces_naming_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let space = tmp.path().join("space.toml");
    for (text, extra, want) in [
        ("[params]\nlr = { log_uniform = [0, 0.1] }", &[][..], "`params.lr`: `log_uniform`: low must be above 0"),
        ("[params]\nlr = { uniform = [0.2, 0.1] }", &[], "low 0.2 must not exceed high 0.1"),
        ("[params]\nlearning_rate = { uniform = [0.1, 0.2] }", &[], "`params.learning_rate`: `kiln train` has no flag"),
        ("[params]\nbatch_size = { choice = [] }", &[], "`params.batch_size`: `choice` is empty"),
        ("[params]\nlr = { uniform = [0.1, 0.2], step = 2 }", &[], "`params.lr`: unknown key `step`"),
        ("[params]\nlora_r = { choice = [\"big\"] }", &[], "`params.lora_r` = \"big\""),
        ("[params]\nlr = { uniform = [0.1, 0.2] }", &["--", "--lr", "0.1"], "`--lr` after `--` is also searched"),
        ("[params]\nlr = { uniform = [0.1, 0.2] }", &["--halving", "3,1,9"], "eta 1"),
        (
            "[params]\nlr = { uniform = [0.1, 0.2] }",
            &["--halving", "30,3,90", "--", "--eval-every", "20"],
            "let --eval-every",
        ),
    ] {
        std::fs::write(&space, text).unwrap();
        let mut args: Vec<String> =
            ["tune", "--space", space.to_str().unwrap(), "--study", tmp.path().join("s").to_str().unwrap()]
                .map(String::from)
                .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = Command::new(env!("CARGO_BIN_EXE_kiln")).args(&args).env("XDG_RUNTIME_DIR", "/tmp").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{text:?} {extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        if !text.contains("--") && extra.is_empty() {
            assert!(err.contains("space.toml"), "{text}: the file is named: {err}");
        }
    }
    assert!(!tmp.path().join("s/trials").exists(), "nothing trained");
}

/// `kiln bench --step` with a profile: the JSON has the step's figures, and the profile's
/// dispatches add up to the step's counted ones.
#[test]
fn bench_step_profiles_a_training_step() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("profile.png");
    let png_arg = png.to_string_lossy().to_string();
    let (stdout, _) = kiln(&[
        "bench",
        "--step",
        "minilm",
        "--scale",
        "small",
        "--warmup",
        "1",
        "--steps",
        "1",
        "--profile",
        "--plot",
        &png_arg,
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let fig = &doc["figure"];
    let dispatches = fig["dispatches_per_step"].as_u64().unwrap();
    assert!(dispatches > 50, "a 2-layer LoRA step is many dispatches: {dispatches}");
    assert!(fig["median_ms"].as_f64().unwrap() > 0.0 && fig["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(fig["record_us_per_dispatch"].as_f64().unwrap() > 0.0);
    let loss = fig["steps"][0]["loss"].as_f64().unwrap();
    assert!((loss - 2f64.ln()).abs() < 0.2, "two labels, random weights: loss near ln 2, got {loss}");
    let profile = &doc["profiles"][0];
    let by_family: u64 =
        profile["by_family"].as_array().unwrap().iter().map(|g| g["dispatches"].as_u64().unwrap()).sum();
    assert_eq!(by_family, dispatches);
    assert!(std::fs::metadata(&png).unwrap().len() > 1000, "the PNG was written");
}
