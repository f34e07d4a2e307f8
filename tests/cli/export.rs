//! Train, then `kiln generate` with the adapter and `kiln export --merge`: the merged model loads
//! back with the adapter's logits. On the tiny Llama, with the model's chat template, and on
//! Phi-3 with every linear adapted.

use std::path::Path;

use kiln::gpu::AdapterChoice;
use kiln::models::{LmInput, load_causal_lm};

use super::{Kiln, Workspace, kiln, lm_run, lm_workspace, lm_workspace_of, max_abs_diff, mean, read_json, values};

/// The attention and MLP projections of the Llama fixtures.
const ALL_LLAMA_LINEARS: &str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";

/// 100 steps of rank-8 adapters on every linear of the tiny Llama, validating every
/// `eval_every` steps: long enough for the adapter to learn its task.
fn long_run(ws: &Workspace, run: &Path, eval_every: &str) -> Kiln {
    lm_run(ws, run)
        .args(["--steps", "100", "--batch-size", "8", "--lora-r", "8", "--lora-dropout", "0"])
        .flag("eval-every", eval_every)
        .flag("target-modules", ALL_LLAMA_LINEARS)
}

/// `kiln generate` with the adapter on a counting prompt, then `kiln export --merge` into
/// `merged`, whose logits must equal base + adapter's; the generated text and the merged type.
fn generate_and_export(ws: &Workspace, adapter: &Path, merged: &Path) -> (String, String) {
    let (out, _) = kiln("generate")
        .model(&ws.model)
        .flag("lora", adapter)
        .args(["--prompt", "w10 w11 w12", "--max-tokens", "3"])
        .run();
    kiln("export --merge").model(&ws.model).flag("lora", adapter).out(merged).run();
    (out, assert_merged_matches(&ws.model, adapter, merged))
}

/// Loads `model` with the adapter and the merged export; their logits on a few ids must agree.
/// Returns the merged model's type.
fn assert_merged_matches(model: &Path, adapter: &Path, merged: &Path) -> String {
    let gpu = kiln::Gpu::new(&AdapterChoice::from_flag_or_env(None)).expect("GPU tests need an adapter");
    let input = LmInput::new(&gpu, vec![10, 11, 12, 13, 14], 1, 5, None).unwrap();
    let mut with_adapter = load_causal_lm(&gpu, model).unwrap();
    with_adapter.load_adapter(&gpu, adapter).unwrap();
    let want = with_adapter.all_logits(&gpu, &input).unwrap().to_f32_vec(&gpu).unwrap();
    let exported = load_causal_lm(&gpu, merged).unwrap();
    let got = exported.all_logits(&gpu, &input).unwrap().to_f32_vec(&gpu).unwrap();
    let err = max_abs_diff(&want, &got);
    assert!(err < 1e-4, "merged model logits differ from base + adapter by {err}");
    exported.model_type().to_string()
}

#[test]
fn train_generate_export_end_to_end() {
    let ws = lm_workspace();
    let (run, merged) = (ws.path("run"), ws.path("merged"));
    long_run(&ws, &run, "25").json();

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
    let steps = values(&run, "step", "loss");
    let evals = values(&run, "eval", "val_loss");
    assert_eq!(steps.len(), 100);
    assert_eq!(evals.len(), 5, "evaluations before training, at steps 25, 50, 75 and the end: {evals:?}");
    // A random tiny model with rank-4 adapters: the loss falls steadily, not to zero.
    assert!(mean(&steps[90..]) < 0.5 * mean(&steps[..5]), "training loss fell: {steps:?}");
    assert!(evals[4] < evals[0] - 1.0, "validation loss fell: {evals:?}");
    let cfg = read_json(&run.join("adapter/adapter_config.json"));
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 8);

    let (out, _) = generate_and_export(&ws, &run.join("adapter"), &merged);
    // The adapter learned to count: the continuation starts with the next number. (A word-level
    // tokenizer decodes the new words without the space before them.)
    assert!(out.starts_with("w10 w11 w12w13"), "{out}");
}

/// The model's own chat template end to end: `kiln train` on chat records (system, user,
/// assistant; the assistant always answers `w50 w51 w52`) learns the assistant's answer, and
/// `kiln generate --chat` renders the same template and answers. A model without a template
/// says so once and refuses `--chat`.
#[test]
fn chat_template_trains_and_generates_end_to_end() {
    let ws = Workspace::new(super::common::tiny_chat_model, |data| {
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
    });
    let run = ws.path("run");
    let (_, err) = long_run(&ws, &run, "50").on("json").run();
    assert!(!err.contains("no chat template"), "{err}");
    let evals = values(&run, "eval", "val_loss");
    assert!(evals.last().unwrap() < &(evals[0] - 1.0), "validation loss on the assistant turns fell: {evals:?}");

    // The prompt is the template's: system and user turns, then the assistant header, after which
    // the adapter learned to give the assistant's answer; generation stops at <|im_end|>, the end
    // of turn read off the template.
    let adapter = run.join("adapter");
    let (out, err) = kiln("generate")
        .model(&ws.model)
        .flag("lora", &adapter)
        .on("chat")
        .args(["--system", "w1", "--prompt", "w10 w11 w12", "--max-tokens", "8"])
        .run();
    assert_eq!(out.trim(), "w50 w51 w52", "stderr {err}, evals {evals:?}");
    assert!(err.contains("[3 tokens"), "{err}");

    // `kiln eval` prompts with the template too: each held-out chat's turns before its answer.
    let r = super::eval::eval_report(
        kiln("eval").model(&ws.model).flag("lora", &adapter).data(&ws.data.join("valid.jsonl")).args([
            "--gen-tokens",
            "6",
            "--no-latency",
            "--no-edge-cases",
            "--no-counterfactual",
            "--bootstrap",
            "10",
        ]),
        &ws.path("eval"),
    );
    let generation = &r["language_model"]["generation"];
    assert_eq!(generation["exact_match"].as_f64(), Some(1.0), "{generation}");

    // Without a template: a note, once, and --chat refused by name.
    let plain = ws.path("plain");
    std::fs::create_dir_all(&plain).unwrap();
    super::common::tiny_model(&plain);
    let err = kiln("generate")
        .model(&plain)
        .on("chat")
        .args(["--prompt", "w10", "--max-tokens", "2"])
        .fails_naming(&["has no chat template; drop --chat"]);
    assert_eq!(err.matches("has no chat template; kiln uses the plain format").count(), 1, "{err}");
}

/// Phi-3 (fused qkv_proj and gate_up_proj, partial rotary, LongRoPE) through the same commands
/// with `--lora-targets all-linear`: the adapter records the expanded module names (Phi-3's
/// fused ones), generation runs, and the merged export loads back as a phi3 model with the
/// adapter's logits.
#[test]
fn phi3_all_linear_train_generate_export() {
    let ws = lm_workspace_of("phi3_tiny");
    let (run, merged) = (ws.path("run"), ws.path("merged"));
    kiln("train")
        .model(&ws.model)
        .data(&ws.data)
        .out(&run)
        .args(["--lora-targets", "all-linear", "--steps", "30", "--batch-size", "8", "--lr", "2e-2"])
        .args(["--eval-every", "30", "--lora-dropout", "0"])
        .json();
    let cfg = read_json(&run.join("adapter/adapter_config.json"));
    assert_eq!(cfg["target_modules"], serde_json::json!(["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]));
    let bytes = std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap();
    let keys = safetensors::SafeTensors::deserialize(&bytes).unwrap().names().len();
    assert_eq!(keys, 2 * 4 * 2, "A and B for 4 modules in each of 2 layers");
    let steps = values(&run, "step", "loss");
    assert!(mean(&steps[25..]) < mean(&steps[..5]), "training loss fell: {steps:?}");

    let (out, model_type) = generate_and_export(&ws, &run.join("adapter"), &merged);
    assert!(out.starts_with("w10 w11 w12"), "{out}");
    assert_eq!(model_type, "phi3");
}
