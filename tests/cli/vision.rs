//! `kiln train` on images end to end, on the tiny ResNet-18 and EfficientNet-Lite fixtures and
//! a few PNGs drawn here: each strategy writes its run folder, learns, scores the test set per
//! class and per group, and saves a model that `--model` loads again; a broken image is named.

use std::path::{Path, PathBuf};

use super::{Kiln, kiln, read_json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// `n` images per class: dark horizontal stripes ("rows") or bright vertical ones ("cols"), each
/// with its own phase and noise, 40×40, as an ImageFolder under `dir` (and the paths written).
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

/// `kiln train` of `model` on the images `data` into `out`, at 32×32.
fn image_run(model: &Path, data: &Path, out: &Path) -> Kiln {
    kiln("train").model(model).data(data).out(out).flag("image-size", "32")
}

#[test]
fn image_folder_with_each_strategy_and_a_saved_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    stripes(&data, 12);
    let common = |k: Kiln| {
        k.args(["--batch-size", "8", "--valid-frac", "0.25", "--test-frac", "0.25", "--eval-every", "4"])
            .flag("seed", "3")
    };

    // head: cached features, many cheap epochs (on the ResNet: the tiny random Lite's ReLU6
    // features saturate, so its head has nothing to learn from).
    let run = tmp.path().join("head");
    let (stdout, stderr) = common(image_run(&fixture("resnet18_tiny"), &data, &run))
        .args(["--strategy", "head", "--epochs", "30", "--lr", "3e-2"])
        .run();
    let out = format!("{stdout}\n{stderr}");
    assert!(out.contains("features of") && out.contains("test set"), "{out}");
    for f in ["settings.json", "config.toml", "metrics.jsonl", "report.json", "report.md", "data/train.jsonl"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let r = read_json(&run.join("report.json"));
    let (first, last) = (r["first_loss"].as_f64().unwrap(), r["last_loss"].as_f64().unwrap());
    println!("head: loss {first:.4} -> {last:.4}, test {}", r["test"]["accuracy"]);
    assert!(last < first, "head did not learn: {first} -> {last}");
    // Only the new head trains: `fc` of [2, C] and its bias.
    let bytes = std::fs::read(run.join("model/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let c = st.tensor("fc.weight").unwrap().shape()[1] as u64;
    assert_eq!(r["trainable_parameters"].as_u64(), Some(2 * c + 2), "{r}");
    assert_eq!(r["test"]["count"], 6);

    // full with training-mode batch norm; the saved model then loads again with its own head.
    let run = tmp.path().join("full");
    common(image_run(&fixture("efficientnet_lite_tiny"), &data, &run))
        .args(["--strategy", "full", "--steps", "6", "--bn", "train"])
        .run();
    let r = read_json(&run.join("report.json"));
    assert_eq!(r["trainable_parameters"], r["total_parameters"]);
    let saved = run.join("model");
    assert!(saved.join("model.safetensors").is_file() && saved.join("config.json").is_file());
    let (stdout, stderr) =
        common(image_run(&saved, &data, &tmp.path().join("again"))).args(["--strategy", "head", "--epochs", "1"]).run();
    let out = format!("{stdout}\n{stderr}");
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
    let resnet = fixture("resnet18_tiny");
    let run = tmp.path().join("top1");
    let (stdout, stderr) = image_run(&resnet, &list, &run)
        .args(["--strategy", "top:1", "--batch-size", "8", "--steps", "5", "--valid-frac", "0.2"])
        .args(["--test-frac", "0.3", "--lr", "1e-3"])
        .run();
    let r = read_json(&run.join("report.json"));
    let (trainable, total) = (r["trainable_parameters"].as_u64().unwrap(), r["total_parameters"].as_u64().unwrap());
    assert!(trainable > 0 && trainable < total, "top:1 trains {trainable} of {total}");
    let groups = r["test_group_scores"].as_object().unwrap();
    assert_eq!(groups.keys().collect::<Vec<_>>(), ["even", "odd"], "{stdout}\n{stderr}");

    // A truncated PNG is named.
    std::fs::write(data.join("rows/03.png"), b"\x89PNG\r\n\x1a\nshort").unwrap();
    image_run(&resnet, &list, &tmp.path().join("broken"))
        .args(["--steps", "1", "--strategy", "full"])
        .fails_naming(&["03.png", "cannot decode"]);
}

#[test]
fn killed_and_resumed_image_run_equals_the_uninterrupted_one() {
    // The driver's resume for an image task: the data order and each image's crops are replayed.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    stripes(&data, 8);
    let train = |out: &Path| {
        image_run(&fixture("resnet18_tiny"), &data, out)
            .args(["--strategy", "full", "--batch-size", "4", "--steps", "6", "--eval-every", "2"])
            .args(["--valid-frac", "0.25", "--seed", "1"])
    };
    let whole = train(&tmp.path().join("whole")).json();
    let halted = tmp.path().join("halted");
    train(&halted).flag("halt-after", "4").fails_naming(&["halted after step 4"]);
    let resumed = kiln("train").flag("resume", &halted).json();
    for key in ["last_loss", "evals", "valid"] {
        assert_eq!(whole[key], resumed[key], "{key}: {whole}\n{resumed}");
    }
}
