//! `kiln train` on images end to end, on the tiny ResNet-18 and EfficientNet-Lite fixtures and
//! a few PNGs drawn here: each strategy writes its run folder, learns, scores the test set per
//! class and per group, and saves a model that `--model` loads again; a broken image is named.

use std::path::{Path, PathBuf};
use std::process::Command;

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).env("XDG_RUNTIME_DIR", "/tmp").output().unwrap()
}

fn kiln_ok(args: &[&str]) -> String {
    let out = kiln(args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kiln {args:?} failed:\n{stdout}\n{stderr}");
    format!("{stdout}\n{stderr}")
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name).display().to_string()
}

/// `n` images per class: dark horizontal stripes ("rows") or bright vertical ones ("cols"), each with its
/// own phase and noise, 40×40, as an ImageFolder under `dir` (and the paths written).
fn stripes(dir: &Path, n: usize) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    for (class, horizontal) in [("cols", false), ("rows", true)] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..n {
            let img = image::RgbImage::from_fn(40, 40, |x, y| {
                let t = if horizontal { y } else { x } as usize + i;
                let noise = ((x * 31 + y * 17 + i as u32 * 7) % 23) as u8;
                // The classes differ in brightness too, which any random body passes on.
                let base = if horizontal { 20 } else { 120 };
                let v = base + if (t / 3).is_multiple_of(2) { 100 } else { 0 } + noise;
                image::Rgb([v, v, v])
            });
            let path = dir.join(class).join(format!("{i:02}.png"));
            img.save(&path).unwrap();
            out.push((path, class));
        }
    }
    out
}

fn report(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap()
}

#[test]
fn image_folder_with_each_strategy_and_a_saved_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    stripes(&data, 12);
    let s = |p: &Path| p.display().to_string();
    let lite = fixture("efficientnet_lite_tiny");
    let common = ["--data", &s(&data), "--image-size", "32", "--batch-size", "8", "--valid-frac", "0.25"];
    let common = [&common[..], &["--test-frac", "0.25", "--eval-every", "4", "--seed", "3"]].concat();

    // head: cached features, many cheap epochs (on the ResNet: the tiny random Lite's ReLU6
    // features saturate, so its head has nothing to learn from).
    let resnet = fixture("resnet18_tiny");
    let run = tmp.path().join("head");
    let args = [&common[..], &["--model", &resnet, "--strategy", "head", "--epochs", "30", "--lr", "3e-2"]].concat();
    let out = kiln_ok(&[&["train", "--out", &s(&run)], &args[..]].concat());
    assert!(out.contains("features of") && out.contains("test set"), "{out}");
    for f in ["settings.json", "config.toml", "metrics.jsonl", "report.json", "report.md", "data/train.jsonl"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let r = report(&run);
    let (first, last) = (r["first_loss"].as_f64().unwrap(), r["last_loss"].as_f64().unwrap());
    println!("head: loss {first:.4} -> {last:.4}, test {}", r["test"]["accuracy"]);
    assert!(last < first, "head did not learn: {first} -> {last}");
    // Only the new head trains: `_fc` of [2, C] and its bias.
    let bytes = std::fs::read(run.join("model/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let c = st.tensor("fc.weight").unwrap().shape()[1] as u64;
    assert_eq!(r["trainable_parameters"].as_u64(), Some(2 * c + 2), "{r}");
    assert_eq!(r["test"]["count"], 6);

    // full with training-mode batch norm; the saved model then loads again with its own head.
    let run = tmp.path().join("full");
    let args = [&common[..], &["--model", &lite, "--strategy", "full", "--steps", "6", "--bn", "train"]].concat();
    kiln_ok(&[&["train", "--out", &s(&run)], &args[..]].concat());
    let r = report(&run);
    assert_eq!(r["trainable_parameters"], r["total_parameters"]);
    let saved = run.join("model");
    assert!(saved.join("model.safetensors").is_file() && saved.join("config.json").is_file());
    let again = tmp.path().join("again");
    let saved_arg = s(&saved);
    let args = [&common[..], &["--model", &saved_arg, "--strategy", "head", "--epochs", "1"]].concat();
    let out = kiln_ok(&[&["train", "--out", &s(&again)], &args[..]].concat());
    assert!(out.contains("the checkpoint's head"), "{out}");
}

#[test]
fn resnet_top_n_from_a_csv_with_groups_and_a_broken_image() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    let files = stripes(&data, 10);
    let mut csv = String::from("image,label,group\n");
    for (i, (p, class)) in files.iter().enumerate() {
        let rel = p.strip_prefix(&data).unwrap().display().to_string();
        csv.push_str(&format!("{rel},{class},{}\n", if i % 2 == 0 { "even" } else { "odd" }));
    }
    let list = data.join("all.csv");
    std::fs::write(&list, &csv).unwrap();
    let s = |p: &Path| p.display().to_string();
    let resnet = fixture("resnet18_tiny");
    let run = tmp.path().join("top1");
    let out = kiln_ok(&[
        "train",
        "--model",
        &resnet,
        "--data",
        &s(&list),
        "--strategy",
        "top:1",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--steps",
        "5",
        "--valid-frac",
        "0.2",
        "--test-frac",
        "0.3",
        "--lr",
        "1e-3",
        "--out",
        &s(&run),
    ]);
    let r = report(&run);
    let (trainable, total) = (r["trainable_parameters"].as_u64().unwrap(), r["total_parameters"].as_u64().unwrap());
    assert!(trainable > 0 && trainable < total, "top:1 trains {trainable} of {total}");
    let groups = r["test_group_scores"].as_object().unwrap();
    assert_eq!(groups.keys().collect::<Vec<_>>(), ["even", "odd"], "{out}");

    // A truncated PNG is named.
    std::fs::write(data.join("rows/03.png"), b"\x89PNG\r\n\x1a\nshort").unwrap();
    let out = kiln(&[
        "train",
        "--model",
        &resnet,
        "--data",
        &s(&list),
        "--image-size",
        "32",
        "--steps",
        "1",
        "--strategy",
        "full",
        "--out",
        &s(&tmp.path().join("broken")),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("03.png") && err.contains("cannot decode"), "{err}");
}
