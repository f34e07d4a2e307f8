//! The command line end to end on the tiny Llama fixture: `kiln train` writes its run folder
//! and learns, `kiln generate` runs with the adapter, `kiln export --merge` writes a model that
//! loads back with the adapter's logits.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use kiln::gpu::AdapterChoice;
use kiln::models::{LmInput, load_causal_lm, peft};
use tokenizers::Tokenizer;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;

/// A copy of the fixture model with a word-level tokenizer `w0 .. w95` (id = number).
fn tiny_model(dir: &Path) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_tiny");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), dir.join(f)).unwrap();
    }
    let vocab: HashMap<String, u32> = (0..96).map(|i| (format!("w{i}"), i)).collect();
    let model = WordLevel::builder().vocab(vocab.into_iter().collect()).unk_token("w0".into()).build().unwrap();
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    tok.save(dir.join("tokenizer.json"), false).unwrap();
}

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
        "metrics.jsonl",
        "report.json",
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
    peft::load_adapter(&gpu, with_adapter.as_mut(), &run.join("adapter")).unwrap();
    let want = with_adapter.all_logits(&gpu, &input).unwrap().to_f32_vec(&gpu).unwrap();
    let got = load_causal_lm(&gpu, &merged).unwrap().all_logits(&gpu, &input).unwrap().to_f32_vec(&gpu).unwrap();
    let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(err < 1e-4, "merged model logits differ from base + adapter by {err}");
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
