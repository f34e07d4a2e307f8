//! `kiln eval` on a trained classifier and a trained LM: every part of the report, and bad
//! inputs named.

use std::path::Path;

use super::{Kiln, bert_workspace, classifier_run, kiln, lm_run, lm_workspace, read_json};

/// Runs `kiln eval ... --out OUT --json`; its report, checked to be the one written to OUT.
pub fn eval_report(eval: Kiln, out: &Path) -> serde_json::Value {
    let report = eval.out(out).json();
    let written = read_json(&out.join("report.json"));
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
    let ws = bert_workspace();
    let run = ws.path("run");
    classifier_run(&ws, &run, "lora")
        .args(["--epochs", "6", "--lr", "1e-2", "--lora-dropout", "0", "--eval-every", "0"])
        .json();
    // The marker words swap the class; w94 and w95 never occur.
    let pairs = ws.path("pairs.txt");
    std::fs::write(&pairs, "w10,w60\nw94\tw95\n").unwrap();
    let cases = ws.path("cases.jsonl");
    std::fs::write(&cases, "{\"text\": \"w10 w10 w10\", \"name\": \"only markers\"}\n").unwrap();
    let out = ws.path("eval");
    let test = ws.data.join("test.jsonl");
    let r = eval_report(
        kiln("eval")
            .model(&run.join("adapter"))
            .data(&test)
            .flag("group-by", "group")
            .flag("swap-terms", &pairs)
            .flag("edge-cases", &cases)
            .args(["--latency-runs", "3", "--warmup", "1", "--batch-sizes", "1,2,4"]),
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
    let head = ws.path("run-head");
    classifier_run(&ws, &head, "head").args(["--epochs", "30", "--lr", "1e-2", "--eval-every", "0"]).json();
    let r = eval_report(
        kiln("eval").model(&head.join("model")).data(&test).args([
            "--no-counterfactual",
            "--no-edge-cases",
            "--no-latency",
            "--no-plots",
        ]),
        &ws.path("eval-head"),
    );
    assert!(r["classification"]["metrics"]["accuracy"].as_f64().unwrap() >= 0.9, "{r}");
    assert!(
        r["latency"].is_null() && r["edge_cases"].is_null() && r["counterfactual"].is_null() && r["groups"].is_null()
    );
    assert!(!ws.path("eval-head/latency.png").exists());
}

/// `kiln eval` on the tiny Llama with a (briefly trained) adapter: loss and perplexity, greedy
/// completions scored against the references (exact match equals the share of samples that
/// match), per-group loss and exact match with gaps, counterfactual swaps in prompts, prompt
/// edge cases (an empty prompt is an error in the report, not a crash; a long one is cut and
/// says so), time to first token, tokens/s and throughput.
#[test]
fn eval_language_model_reports_every_part() {
    let ws = lm_workspace();
    let run = ws.path("run");
    lm_run(&ws, &run).args(["--steps", "40", "--eval-every", "0", "--lora-dropout", "0", "--max-len", "24"]).json();
    // The validation windows with a group each: starts below 40 and from 40 on.
    let valid = std::fs::read_to_string(ws.data.join("valid.jsonl")).unwrap();
    let test: String = valid
        .lines()
        .enumerate()
        .map(|(i, l)| format!("{}, \"group\": \"{}\"}}\n", l.trim_end_matches('}'), if i < 8 { "low" } else { "high" }))
        .collect();
    std::fs::write(ws.data.join("test.jsonl"), test).unwrap();
    let pairs = ws.path("pairs.txt");
    std::fs::write(&pairs, "w8,w9\n").unwrap();
    let out = ws.path("eval");
    let r = eval_report(
        kiln("eval")
            .model(&ws.model)
            .flag("lora", run.join("adapter"))
            .data(&ws.data.join("test.jsonl"))
            .flag("group-by", "group")
            .flag("swap-terms", &pairs)
            .args(["--gen-tokens", "4", "--samples", "100", "--latency-runs", "2", "--warmup", "1"])
            .args(["--batch-sizes", "1,4"]),
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
    let ws = bert_workspace();
    // A classifier with a trained head (one step), so each bad file below is the only fault.
    let run = ws.path("run");
    classifier_run(&ws, &run, "head").args(["--steps", "1", "--eval-every", "0"]).json();
    let bad = ws.path("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"w4\", \"label\": \"pos\"}\n{\"text\": 5}\n").unwrap();
    let eval = |model: &Path, data: &Path| kiln("eval").model(model).data(data);
    let test = ws.data.join("test.jsonl");
    eval(&run, &bad).on("no-counterfactual").fails_naming(&["bad.jsonl", "line 2"]);
    let pairs = ws.path("pairs.txt");
    std::fs::write(&pairs, "he,she\nlonely\n").unwrap();
    eval(&run, &test).flag("swap-terms", &pairs).fails_naming(&["pairs.txt", "line 2"]);
    let cases = ws.path("cases.jsonl");
    std::fs::write(&cases, "{\"name\": \"no text\"}\n").unwrap();
    eval(&run, &test).on("no-counterfactual").flag("edge-cases", &cases).fails_naming(&[
        "cases.jsonl",
        "line 1",
        "`text`",
    ]);
    // An encoder without a trained head, and an adapter whose base is not here.
    eval(&ws.model, &test).on("no-counterfactual").fails_naming(&["classifier.weight", "classification head"]);
    let adapter = ws.path("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    std::fs::write(
        adapter.join("adapter_config.json"),
        "{\"peft_type\": \"LORA\", \"task_type\": \"SEQ_CLS\", \"base_model_name_or_path\": \"/nowhere/minilm\"}",
    )
    .unwrap();
    eval(&adapter, &test).on("no-counterfactual").fails_naming(&["/nowhere/minilm", "--model BASE --lora"]);
    eval(&ws.model, &test).flag("batch-sizes", "1,x").fails_naming(&["--batch-sizes"]);
}
