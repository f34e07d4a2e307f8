//! The command line with `--dora` (PEFT's `use_dora`) and `--pack` (sequence packing) on the
//! tiny Llama fixture, and their refusals with the wrong kind of run.

mod common;

use std::path::Path;
use std::process::Command;

use common::{tiny_bert, tiny_model};
use kiln::gpu::AdapterChoice;
use kiln::models::{LmInput, load_causal_lm};

/// Counting tasks: prompt `w{s} w{s+1} w{s+2}`, completion the next three numbers.
fn counting_data(dir: &Path) {
    let line = |s: usize| {
        let w = |k: usize| format!("w{}", 3 + (s + k) % 90);
        format!("{{\"prompt\": \"{} {} {}\", \"completion\": \" {} {} {}\"}}\n", w(0), w(1), w(2), w(3), w(4), w(5))
    };
    std::fs::write(dir.join("train.jsonl"), (0..80).filter(|s| s % 5 != 0).map(line).collect::<String>()).unwrap();
    std::fs::write(dir.join("valid.jsonl"), (0..80).filter(|s| s % 5 == 0).map(line).collect::<String>()).unwrap();
}

fn run_kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).env("XDG_RUNTIME_DIR", "/tmp").output().unwrap()
}

fn kiln(args: &[&str]) -> (String, String) {
    let out = run_kiln(args);
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
    assert!(out.status.success(), "kiln {args:?} failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// (model dir, data dir) in `tmp`.
fn workspace(tmp: &Path) -> (String, String) {
    let (model, data) = (tmp.join("model"), tmp.join("data"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_model(&model);
    counting_data(&data);
    (model.to_str().unwrap().to_string(), data.to_str().unwrap().to_string())
}

fn step_losses(run: &Path) -> Vec<f64> {
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "step")
        .map(|e| e["loss"].as_f64().unwrap())
        .collect()
}

/// `kiln train --dora` (with the default LoRA dropout, so PEFT's dropout form of DoRA runs)
/// learns, saves a PEFT DoRA adapter, and `kiln export --merge` folds it into weights that give
/// the adapter's logits.
#[test]
fn dora_trains_saves_and_merges() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, d) = workspace(tmp.path());
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    kiln(&[
        "train",
        "--model",
        &m,
        "--data",
        &d,
        "--out",
        r,
        "--steps",
        "60",
        "--batch-size",
        "8",
        "--lr",
        "3e-2",
        "--eval-every",
        "0",
        "--lora-r",
        "8",
        "--dora",
        "--json",
        "--target-modules",
        "q_proj,v_proj,down_proj",
    ]);
    let steps = step_losses(&run);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(mean(&steps[50..]) < 0.6 * mean(&steps[..5]), "training loss fell: {steps:?}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["use_dora"], true);
    let bytes = std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let magnitudes: Vec<String> =
        st.names().into_iter().filter(|n| n.ends_with(".lora_magnitude_vector")).map(String::from).collect();
    assert_eq!(magnitudes.len(), 6, "one magnitude per adapted layer: {magnitudes:?}");

    let merged = tmp.path().join("merged");
    let adapter = run.join("adapter");
    kiln(&["export", "--merge", "--model", &m, "--lora", adapter.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    let gpu = kiln::Gpu::new(&AdapterChoice::from_flag_or_env(None)).expect("GPU tests need an adapter");
    let input = LmInput::new(&gpu, vec![10, 11, 12, 13, 14], 1, 5, None).unwrap();
    let mut with_adapter = load_causal_lm(&gpu, Path::new(&m)).unwrap();
    with_adapter.load_adapter(&gpu, &adapter).unwrap();
    let want = with_adapter.all_logits(&gpu, &input).unwrap().to_f32_vec(&gpu).unwrap();
    let got = load_causal_lm(&gpu, &merged).unwrap().all_logits(&gpu, &input).unwrap().to_f32_vec(&gpu).unwrap();
    let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(err < 1e-4, "merged DoRA model logits differ from base + adapter by {err}");
}

/// `--dora` adapts LoRA: a classifier trained another way says so, naming the flag.
#[test]
fn dora_without_lora_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (tmp.path().join("model"), tmp.path().join("data"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_bert(&model);
    std::fs::write(
        data.join("train.jsonl"),
        "{\"text\": \"w10 w11\", \"label\": \"a\"}\n{\"text\": \"w12\", \"label\": \"b\"}\n",
    )
    .unwrap();
    let out = run_kiln(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--strategy",
        "head",
        "--dora",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--dora") && err.contains("lora"), "{err}");
}

/// `kiln train --pack` learns the counting task with several examples per row (the 7-token
/// examples share rows of 32), and says how many tokens it trained on.
#[test]
fn packed_training_learns() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, d) = workspace(tmp.path());
    let run = tmp.path().join("run");
    let (out, _) = kiln(&[
        "train",
        "--model",
        &m,
        "--data",
        &d,
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "40",
        "--batch-size",
        "2",
        "--max-len",
        "32",
        "--pack",
        "--lr",
        "3e-2",
        "--lora-dropout",
        "0",
        "--eval-every",
        "0",
        "--json",
        "--target-modules",
        "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    ]);
    let steps = step_losses(&run);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(mean(&steps[35..]) < 0.6 * mean(&steps[..5]), "training loss fell: {steps:?}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    // Two rows of up to 32 tokens hold 8 of the 7-token examples: 56 real tokens per step,
    // where unpacked 2 examples (14 tokens) would be.
    assert!(first["tokens"].as_u64().unwrap() >= 42, "{first}");
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("settings.json")).unwrap()).unwrap();
    assert_eq!(settings["train"]["pack"], 32, "{settings}");
    assert!(!out.is_empty());
}

/// `--pack` is for language models: a classifier run says so, naming the flag.
#[test]
fn pack_with_a_classifier_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (tmp.path().join("model"), tmp.path().join("data"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_bert(&model);
    std::fs::write(
        data.join("train.jsonl"),
        "{\"text\": \"w10 w11\", \"label\": \"a\"}\n{\"text\": \"w12\", \"label\": \"b\"}\n",
    )
    .unwrap();
    let out = run_kiln(&["train", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--pack"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--pack") && err.contains("classifier"), "{err}");
}
