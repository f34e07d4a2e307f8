//! `kiln predict` end to end: its predictions equal what `kiln eval` computes on the same inputs
//! (the tiny BERT with a LoRA adapter and BERT's pooler, the tiny Llama with an adapter, and a
//! tiny image run's test split against the run's own test scores); labels are not needed; csv
//! out; texts longer than --max-len reported; an existing --out refused; bad input named.

use std::path::Path;

use super::{bert_workspace, classifier_run, kiln, lm_run, lm_workspace, read_json, read_jsonl};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The workspace's tiny BERT (`model`) with a pooler (the `bert_tiny` fixture's, scaled to
/// transformers' initial size) in `dir`, for `--pooling pooler`.
fn with_pooler(model: &Path, dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for f in std::fs::read_dir(model).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    let read = |p: &Path| std::fs::read(p).unwrap();
    let (mine, fixture_bytes) =
        (read(&model.join("model.safetensors")), read(&fixture("bert_tiny").join("model.safetensors")));
    let mut tensors = Vec::new();
    for (bytes, pooler) in [(&mine, false), (&fixture_bytes, true)] {
        for (name, v) in safetensors::SafeTensors::deserialize(bytes).unwrap().tensors() {
            if name.contains("pooler") != pooler {
                continue;
            }
            let scale = if pooler { 0.1 } else { 1.0 };
            let data = v.data().chunks_exact(4).map(|b| scale * f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            tensors.push((name.to_string(), data, v.shape().to_vec()));
        }
    }
    kiln::formats::safetensors::save_safetensors(&dir.join("model.safetensors"), &tensors, None).unwrap();
    dir.to_path_buf()
}

/// The confusion matrix (rows: given label) of predictions against the labels they carried.
fn confusion(preds: &[serde_json::Value], labels: &[&str]) -> Vec<Vec<u64>> {
    let id = |l: &serde_json::Value| labels.iter().position(|x| l == x).unwrap();
    let mut m = vec![vec![0; labels.len()]; labels.len()];
    for p in preds {
        m[id(&p["given"])][id(&p["label"])] += 1;
    }
    m
}

fn matrix(v: &serde_json::Value) -> Vec<Vec<u64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()).collect()
}

/// The tiny BERT trained with LoRA on BERT's own pooler (`--pooling pooler`, the fixture has the
/// pooler's weights): predictions on the labelled test file equal `kiln eval`'s scores (the
/// confusion matrix exactly, the mean log-loss to 1e-5); the same texts without labels give the
/// same predictions; csv out; truncation reported with the lines; --out and bad input checked.
#[test]
fn text_classifier_predictions_equal_eval() {
    let ws = bert_workspace();
    let base = with_pooler(&ws.model, &ws.path("bert-pooler"));
    let run = ws.path("run");
    let train = classifier_run(&ws, &run, "lora").model(&base).flag("pooling", "pooler");
    train.args(["--epochs", "2", "--lr", "1e-2", "--eval-every", "0"]).json();
    // The adapter names its base as given (no repo id known), carries the pooler whole, and its
    // README shows PEFT's class.
    let cfg = read_json(&run.join("adapter/adapter_config.json"));
    assert_eq!(cfg["base_model_name_or_path"], base.display().to_string());
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["bert.pooler.dense", "classifier"]));
    let readme = std::fs::read_to_string(run.join("adapter/README.md")).unwrap();
    assert!(readme.contains("AutoPeftModelForSequenceClassification"), "{readme}");

    let test = ws.data.join("test.jsonl");
    let eval = kiln("eval")
        .model(&run)
        .data(&test)
        .out(&ws.path("eval"))
        .args(["--no-latency", "--no-counterfactual", "--no-edge-cases", "--no-plots"])
        .json();
    let out = ws.path("preds.jsonl");
    let s = kiln("predict").model(&run).data(&test).out(&out).flag("batch-size", "5").json();
    assert_eq!(
        (s["task"].as_str(), s["examples"].as_u64(), s["given"].as_u64()),
        (Some("classification"), Some(32), Some(32))
    );
    assert!(s["per_second"].as_f64().unwrap() > 0.0 && s["batch_size"] == 5, "{s}");
    let preds = read_jsonl(&out);
    assert_eq!(preds.len(), 32);
    let labels: Vec<&str> =
        eval["classification"]["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(confusion(&preds, &labels), matrix(&eval["classification"]["metrics"]["confusion"]));
    let loss =
        preds.iter().map(|p| -p["probs"][p["given"].as_str().unwrap()].as_f64().unwrap().ln()).sum::<f64>() / 32.0;
    let want = eval["classification"]["loss"].as_f64().unwrap();
    println!("predict log-loss {loss:.7}, eval {want:.7}");
    assert!((loss - want).abs() < 1e-5, "predict's log-loss {loss} vs eval's {want}");
    for (i, p) in preds.iter().enumerate() {
        assert_eq!(p["line"], i + 1);
        let total: f64 = labels.iter().map(|l| p["probs"][*l].as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-9 && p["truncated"] == false, "{p}");
    }

    // No labels at all, from the adapter folder, to csv: the same labels.
    let texts = ws.path("texts.jsonl");
    let lines: String = preds
        .iter()
        .zip(std::fs::read_to_string(&test).unwrap().lines())
        .map(|(_, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{}\n", serde_json::json!({"text": v["text"]}))
        })
        .collect();
    std::fs::write(&texts, lines).unwrap();
    let csv = ws.path("preds.csv");
    kiln("predict").model(&run.join("adapter")).data(&texts).out(&csv).run();
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows[0], format!("line,label,p_{},p_{},truncated", labels[0], labels[1]));
    for (row, p) in rows[1..].iter().zip(&preds) {
        assert_eq!(row.split(',').nth(1).unwrap(), p["label"].as_str().unwrap());
    }

    // An existing --out needs --overwrite; then texts past --max-len 6 are cut and named.
    kiln("predict").model(&run).data(&texts).out(&csv).fails_naming(&["--out", "--overwrite"]);
    let long = ws.path("long.jsonl");
    std::fs::write(&long, "{\"text\": \"w10 w11\"}\n{\"text\": \"w10 w20 w21 w22 w23 w24 w25 w10\"}\n").unwrap();
    let s = kiln("predict").model(&run).data(&long).out(&csv).on("overwrite").flag("max-len", "6").json();
    assert_eq!((s["truncated"].as_u64(), &s["truncated_lines"]), (Some(1), &serde_json::json!([2])), "{s}");
    let (stdout, _) = kiln("predict").model(&run).data(&long).out(&ws.path("p2.jsonl")).flag("max-len", "6").run();
    assert!(
        stdout.contains("truncated 1 inputs longer than 6 tokens (lines 2)") && stdout.contains("inputs/s"),
        "{stdout}"
    );

    // Bad input: the file and the line.
    std::fs::write(&long, "{\"text\": \"w10\"}\n{\"body\": \"w10\"}\n").unwrap();
    kiln("predict").model(&run).data(&long).out(&ws.path("p3.jsonl")).fails_naming(&["long.jsonl", "line 2", "`text`"]);
    assert!(!ws.path("p3.jsonl").exists());
    // A checkpoint without BERT's pooler cannot use it.
    classifier_run(&ws, &ws.path("nopooler"), "head")
        .flag("pooling", "pooler")
        .fails_naming(&["pooler.dense.weight", "--pooling"]);
}

/// The tiny Llama with a LoRA adapter: each prompt's completion equals `kiln eval`'s greedy
/// sample for it, from the run folder and from base + --lora.
#[test]
fn lm_completions_equal_eval() {
    let ws = lm_workspace();
    let run = ws.path("run");
    lm_run(&ws, &run).args(["--steps", "4", "--eval-every", "0"]).json();
    let cfg = read_json(&run.join("adapter/adapter_config.json"));
    assert_eq!(cfg["base_model_name_or_path"], ws.model.display().to_string());
    let valid = ws.data.join("valid.jsonl");
    let eval = kiln("eval")
        .model(&run)
        .data(&valid)
        .out(&ws.path("eval"))
        .args(["--limit", "4", "--samples", "4", "--gen-tokens", "5"])
        .args(["--no-latency", "--no-counterfactual", "--no-edge-cases", "--no-plots"])
        .json();
    let samples = eval["language_model"]["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 4);
    for model in [
        vec!["--model".to_string(), run.display().to_string()],
        vec![
            "--model".into(),
            ws.model.display().to_string(),
            "--lora".into(),
            run.join("adapter").display().to_string(),
        ],
    ] {
        let out = ws.path("completions.jsonl");
        let s = kiln("predict")
            .args(model)
            .data(&valid)
            .out(&out)
            .on("overwrite")
            .args(["--limit", "4", "--max-tokens", "5"])
            .json();
        assert_eq!((s["task"].as_str(), s["given"].as_u64()), (Some("language-model"), Some(4)), "{s}");
        let preds = read_jsonl(&out);
        for (p, e) in preds.iter().zip(samples) {
            assert_eq!(p["completion"], e["output"], "{p} vs {e}");
            assert_eq!(p["given"], e["reference"]);
        }
    }
}

/// A tiny ResNet run on striped images: predictions on its saved test split equal the test
/// scores the run reported; a folder of images needs no list.
#[test]
fn image_predictions_equal_the_runs_test_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    for (class, horizontal) in [("cols", false), ("rows", true)] {
        std::fs::create_dir_all(images.join(class)).unwrap();
        for i in 0..8u32 {
            let img = image::RgbImage::from_fn(36, 36, |x, y| {
                let t = if horizontal { y } else { x } + i;
                let v = if horizontal { 20 } else { 120 }
                    + if (t / 3) % 2 == 0 { 100 } else { 0 }
                    + ((x * 7 + y) % 13) as u8;
                image::Rgb([v, v, v])
            });
            img.save(images.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let run = tmp.path().join("run");
    kiln("train")
        .model(&fixture("resnet18_tiny"))
        .data(&images)
        .out(&run)
        .args(["--image-size", "32", "--strategy", "head", "--epochs", "5", "--lr", "3e-2", "--batch-size", "4"])
        .args(["--valid-frac", "0.25", "--test-frac", "0.5", "--eval-every", "0", "--seed", "2"])
        .json();
    let report = read_json(&run.join("report.json"));
    let out = tmp.path().join("preds.jsonl");
    let s = kiln("predict").model(&run).data(&run.join("data/test.jsonl")).out(&out).flag("batch-size", "3").json();
    assert_eq!(s["task"], "image-classification");
    let labels: Vec<&str> = ["cols", "rows"].to_vec();
    let preds = read_jsonl(&out);
    assert_eq!(preds.len() as u64, report["test"]["count"].as_u64().unwrap());
    assert_eq!(confusion(&preds, &labels), matrix(&report["test"]["confusion"]));
    assert!(preds.iter().all(|p| p["image"].as_str().unwrap().ends_with(".png")));

    let folder = tmp.path().join("folder.csv");
    let s = kiln("predict").model(&run.join("model")).data(&images).out(&folder).json();
    assert_eq!((s["examples"].as_u64(), s["given"].as_u64()), (Some(16), Some(16)), "{s}");
    let text = std::fs::read_to_string(&folder).unwrap();
    assert!(text.starts_with("line,image,label,p_cols,p_rows,truncated,given\n"), "{text}");
}
