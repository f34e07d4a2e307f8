//! `kiln train` with the memory savers: a bf16 base kept bf16 (`--base-dtype`), gradient
//! checkpointing (`--grad-checkpoint`) and sequence packing (`--pack`). Checkpointing changes
//! nothing but memory: the same losses step for step. Bad combinations name the flag.

use super::{Workspace, bert_workspace, counting_data, kiln, lm_run, lm_workspace, mean, read_json, values};

fn bf16_workspace() -> Workspace {
    Workspace::new(|m| super::common::tiny_model_of("llama_bf16_tiny", m), counting_data)
}

#[test]
fn bf16_base_with_and_without_checkpointing_trains_the_same() {
    let ws = bf16_workspace();
    let mut runs = Vec::new();
    for on in [false, true] {
        let run = ws.path(if on { "ckpt" } else { "plain" });
        let (_, stderr) = kiln("train")
            .model(&ws.model)
            .data(&ws.data)
            .out(&run)
            .args(["--steps", "12", "--batch-size", "4", "--lr", "1e-2", "--lora-dropout", "0.1"])
            .args(["--target-modules", "all-linear", "--base-dtype", "auto", "--eval-every", "0"])
            .args([format!("--grad-checkpoint={on}")])
            .run();
        // The table shows the 16-bit weights, and the checkpointed activations beside the plain.
        assert!(stderr.contains("weights 16-bit"), "{stderr}");
        assert!(stderr.contains("14 linear weights kept bf16"), "{stderr}");
        let settings = read_json(&run.join("settings.json"));
        let mem = &settings["memory_estimate"];
        assert_eq!(mem["grad_checkpoint"], on);
        assert!(mem["weights_16bit"].as_u64().unwrap() > 0 && mem["weights_quantized"] == 0);
        if on {
            assert!(stderr.contains("(without checkpointing"), "{stderr}");
            assert!(mem["activations"].as_u64() < mem["activations_plain"].as_u64());
        }
        assert_eq!(settings["base_quantized"]["bf16"][0], 14);
        runs.push(values(&run, "step", "loss"));
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
    let ws = bf16_workspace();
    kiln("train")
        .model(&ws.model)
        .data(&ws.data)
        .out(&ws.path("r"))
        .args(["--steps", "1", "--quantize", "q4_0", "--base-dtype", "bf16"])
        .fails_naming(&["--quantize", "--base-dtype"]);
}

/// `kiln train --pack` learns the counting task with several examples per row (the 7-token
/// examples share rows of 32), and says how many tokens it trained on.
#[test]
fn packed_training_learns() {
    let ws = lm_workspace();
    let run = ws.path("run");
    lm_run(&ws, &run)
        .args(["--steps", "40", "--batch-size", "2", "--max-len", "32", "--pack", "--lora-dropout", "0"])
        .args(["--eval-every", "0", "--target-modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"])
        .json();
    let steps = values(&run, "step", "loss");
    assert!(mean(&steps[35..]) < 0.6 * mean(&steps[..5]), "training loss fell: {steps:?}");
    // Two rows of up to 32 tokens hold 8 of the 7-token examples: 56 real tokens per step,
    // where unpacked 2 examples (14 tokens) would be.
    let tokens = values(&run, "step", "tokens");
    assert!(tokens[0] >= 42.0, "{tokens:?}");
    assert_eq!(read_json(&run.join("settings.json"))["train"]["pack"], 32);
}

/// `--pack` is for language models: a classifier run says so, naming the flag.
#[test]
fn pack_with_a_classifier_is_refused_by_name() {
    let ws = bert_workspace();
    kiln("train").model(&ws.model).data(&ws.data).out(&ws.path("r")).on("pack").fails_naming(&["--pack", "classifier"]);
}
