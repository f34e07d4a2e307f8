//! `kiln train --dora` (PEFT's `use_dora`) on the tiny Llama: it learns, saves PEFT's DoRA
//! adapter, and `kiln export --merge` folds it into the weights; with another strategy than
//! LoRA it is refused by name.

use std::path::Path;

use kiln::models::{LmInput, load_causal_lm};

use super::{bert_workspace, kiln, lm_run, lm_workspace, max_abs_diff, mean, read_json, values};

/// With the default LoRA dropout, so PEFT's dropout form of DoRA runs.
#[test]
fn dora_trains_saves_and_merges() {
    let ws = lm_workspace();
    let run = ws.path("run");
    lm_run(&ws, &run)
        .args(["--steps", "60", "--batch-size", "8", "--eval-every", "0", "--lora-r", "8", "--dora"])
        .args(["--target-modules", "q_proj,v_proj,down_proj"])
        .json();
    let steps = values(&run, "step", "loss");
    assert!(mean(&steps[50..]) < 0.6 * mean(&steps[..5]), "training loss fell: {steps:?}");
    let adapter = run.join("adapter");
    assert_eq!(read_json(&adapter.join("adapter_config.json"))["use_dora"], true);
    let bytes = std::fs::read(adapter.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let magnitudes: Vec<&str> = st.names().into_iter().filter(|n| n.ends_with(".lora_magnitude_vector")).collect();
    assert_eq!(magnitudes.len(), 6, "one magnitude per adapted layer: {magnitudes:?}");

    let merged = ws.path("merged");
    kiln("export").on("merge").model(&ws.model).flag("lora", &adapter).out(&merged).run();
    let gpu = super::common::gpu();
    let input = LmInput::new(gpu, vec![10, 11, 12, 13, 14], 1, 5, None).unwrap();
    let mut with_adapter = load_causal_lm(gpu, &ws.model).unwrap();
    with_adapter.load_adapter(gpu, &adapter).unwrap();
    let want = with_adapter.all_logits(gpu, &input).unwrap().to_f32_vec(gpu).unwrap();
    let got =
        load_causal_lm(gpu, Path::new(&merged)).unwrap().all_logits(gpu, &input).unwrap().to_f32_vec(gpu).unwrap();
    let err = max_abs_diff(&want, &got);
    assert!(err < 1e-4, "merged DoRA model logits differ from base + adapter by {err}");
}

/// `--dora` adapts LoRA: a classifier trained another way says so, naming the flag.
#[test]
fn dora_without_lora_is_refused_by_name() {
    let ws = bert_workspace();
    kiln("train")
        .model(&ws.model)
        .data(&ws.data)
        .out(&ws.path("r"))
        .flag("strategy", "head")
        .on("dora")
        .fails_naming(&["--dora", "lora"]);
}
