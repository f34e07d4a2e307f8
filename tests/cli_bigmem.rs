//! `kiln train` with the memory savers of issue 21: a bf16 base kept bf16 (`--base-dtype`) and
//! gradient checkpointing (`--grad-checkpoint`), on the tiny bf16 Llama fixture. Checkpointing
//! changes nothing but memory: the same losses step for step. Bad combinations name the flag.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::tiny_model_of;

/// Counting tasks: prompt `w{s} w{s+1} w{s+2}`, completion the next three numbers.
fn counting_data(dir: &Path) {
    let line = |s: usize| {
        let w = |k: usize| format!("w{}", 3 + (s + k) % 90);
        format!("{{\"prompt\": \"{} {} {}\", \"completion\": \" {} {} {}\"}}\n", w(0), w(1), w(2), w(3), w(4), w(5))
    };
    std::fs::write(dir.join("train.jsonl"), (0..40).map(line).collect::<String>()).unwrap();
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).env("XDG_RUNTIME_DIR", "/tmp").output().unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn step_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "step")
        .map(|e| e["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn bf16_base_with_and_without_checkpointing_trains_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (tmp.path().join("model"), tmp.path().join("data"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_model_of("llama_bf16_tiny", &model);
    counting_data(&data);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (m, d) = (s(&model), s(&data));
    let mut runs = Vec::new();
    for ckpt in ["--grad-checkpoint=false", "--grad-checkpoint"] {
        let run = tmp.path().join(if ckpt.ends_with("false") { "plain" } else { "ckpt" });
        let r = s(&run);
        let out = kiln(&[
            "train",
            "--model",
            &m,
            "--data",
            &d,
            "--out",
            &r,
            "--steps",
            "12",
            "--batch-size",
            "4",
            "--lr",
            "1e-2",
            "--lora-dropout",
            "0.1",
            "--target-modules",
            "all-linear",
            "--base-dtype",
            "auto",
            ckpt,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        // The table shows the 16-bit weights, and the checkpointed activations beside the plain.
        assert!(stderr.contains("weights 16-bit"), "{stderr}");
        assert!(stderr.contains("14 linear weights kept bf16"), "{stderr}");
        let settings = json(&run.join("settings.json"));
        let mem = &settings["memory_estimate"];
        let on = ckpt == "--grad-checkpoint";
        assert_eq!(mem["grad_checkpoint"], on);
        assert!(mem["weights_16bit"].as_u64().unwrap() > 0 && mem["weights_quantized"] == 0);
        if on {
            assert!(stderr.contains("(without checkpointing"), "{stderr}");
            assert!(mem["activations"].as_u64() < mem["activations_plain"].as_u64());
        }
        assert_eq!(settings["base_quantized"]["bf16"][0], 14);
        runs.push(step_losses(&run));
    }
    assert_eq!(runs[0].len(), 12);
    assert!(runs[0].last() < runs[0].first(), "it learns: {:?}", runs[0]);
    // Recomputation replays the same kernels and dropout masks: the same losses.
    for (a, b) in runs[0].iter().zip(&runs[1]) {
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "plain {:?}\ncheckpointed {:?}", runs[0], runs[1]);
    }
}

#[test]
fn base_dtype_conflicts_name_the_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (tmp.path().join("model"), tmp.path().join("data"));
    for d in [&model, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    tiny_model_of("llama_bf16_tiny", &model);
    counting_data(&data);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = kiln(&[
        "train",
        "--model",
        &s(&model),
        "--data",
        &s(&data),
        "--out",
        &s(&tmp.path().join("r")),
        "--steps",
        "1",
        "--quantize",
        "q4_0",
        "--base-dtype",
        "bf16",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--quantize") && stderr.contains("--base-dtype"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
