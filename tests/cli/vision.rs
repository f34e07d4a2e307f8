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
    // The driver's resume for an image task: the data order and each image's crops are replayed;
    // under `--bn train` the checkpoints keep BN's running statistics, which the validation
    // scores (and the saved model) use.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    stripes(&data, 8);
    for bn in ["frozen", "train"] {
        let train = |out: &Path| {
            image_run(&fixture("resnet18_tiny"), &data, out)
                .args(["--strategy", "full", "--batch-size", "4", "--steps", "6", "--eval-every", "2"])
                .args(["--valid-frac", "0.25", "--seed", "1", "--bn", bn])
        };
        let whole_dir = tmp.path().join(format!("whole-{bn}"));
        let whole = train(&whole_dir).json();
        let halted = tmp.path().join(format!("halted-{bn}"));
        train(&halted).flag("halt-after", "4").fails_naming(&["halted after step 4"]);
        let resumed = kiln("train").flag("resume", &halted).json();
        for key in ["last_loss", "evals", "valid", "test"] {
            assert_eq!(whole[key], resumed[key], "--bn {bn}, {key}: {whole}\n{resumed}");
        }
        // The saved running statistics are the same too.
        let stats = |dir: &Path| {
            let bytes = std::fs::read(dir.join("model/model.safetensors")).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            st.tensor("layer4.1.bn2.running_var").unwrap().data().to_vec()
        };
        assert_eq!(stats(&whole_dir), stats(&halted), "--bn {bn}");
    }
}

/// `kiln eval` on an image run: the run's own test split (its data/test.jsonl, with the
/// groups of the list it was trained on) scores exactly as the run scored it; per class,
/// confusion, per-group gaps, the built-in image edge cases, latency and throughput per batch
/// size, the plots; a folder of class folders as the test set; text-only flags refused.
#[test]
fn eval_of_an_image_run_reports_every_part() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("images");
    let files = stripes(&data, 10);
    let mut csv = String::from("image,label,group\n");
    for (i, (p, class)) in files.iter().enumerate() {
        let rel = p.strip_prefix(&data).unwrap().display().to_string();
        csv.push_str(&format!("{rel},{class},{}\n", if i % 3 == 0 { "third" } else { "rest" }));
    }
    let list = data.join("all.csv");
    std::fs::write(&list, &csv).unwrap();
    let run = tmp.path().join("head");
    let trained = image_run(&fixture("resnet18_tiny"), &list, &run)
        .args(["--strategy", "head", "--epochs", "20", "--lr", "3e-2", "--batch-size", "8"])
        .args(["--valid-frac", "0.2", "--test-frac", "0.4", "--seed", "3"])
        .json();

    let out = tmp.path().join("eval");
    let r = kiln("eval")
        .model(&run)
        .data(&run.join("data"))
        .out(&out)
        .args(["--latency-runs", "3", "--warmup", "1", "--batch-sizes", "1,2,4", "--bootstrap", "50"])
        .json();
    assert_eq!(read_json(&out.join("report.json"))["examples"], r["examples"]);
    assert_eq!(r["task"], "image-classification");
    assert_eq!(r["examples"], trained["test"]["count"], "{r}");
    assert_eq!(r["image"]["crop"], 32);
    let m = &r["classification"]["metrics"];
    // The same model, transform and images as the run's own test scoring.
    assert_eq!(m["accuracy"], trained["test"]["accuracy"], "{m}\n{}", trained["test"]);
    assert_eq!(m["per_class"].as_array().unwrap().len(), 2);
    let confusion: u64 = m["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(Some(confusion), r["examples"].as_u64());
    // Groups from the list's `group` column, unasked; each with accuracy and macro-F1.
    let g = &r["groups"];
    assert_eq!(g["column"], "group");
    let names: Vec<&str> = g["rows"].as_array().unwrap().iter().map(|row| row["group"].as_str().unwrap()).collect();
    assert_eq!(names, ["rest", "third"], "{g}");
    for row in g["rows"].as_array().unwrap() {
        assert!(row["metrics"]["accuracy"].is_number() && row["metrics"]["macro_f1"].is_number(), "{row}");
    }
    assert_eq!(g["gaps"][0]["metric"], "accuracy");
    let cases = r["edge_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for c in cases {
        assert!(c["output"].is_string() && c["error"].is_null(), "{c}");
    }
    let l = &r["latency"];
    assert_eq!(l["single"]["runs"], 3);
    let batches: Vec<u64> = l["throughput"].as_array().unwrap().iter().map(|p| p["batch"].as_u64().unwrap()).collect();
    assert_eq!(batches, [1, 2, 4]);
    assert!(l["throughput"].as_array().unwrap().iter().all(|p| p["examples_per_second"].as_f64().unwrap() > 0.0));
    for f in ["confusion.png", "groups.png", "latency.png", "throughput.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("centre crop 32×32") && md.contains("images/s") && md.contains("long strip"), "{md}");

    // The saved model/ on a folder of class folders: every image, no groups.
    let r = kiln("eval")
        .model(&run.join("model"))
        .data(&data)
        .out(&tmp.path().join("folder"))
        .args(["--no-latency", "--no-edge-cases", "--no-plots"])
        .json();
    assert_eq!(r["examples"], 20);
    assert!(r["groups"].is_null() && r["latency"].is_null());

    let cases = tmp.path().join("cases.jsonl");
    std::fs::write(&cases, "{\"text\": \"hi\"}\n").unwrap();
    kiln("eval")
        .model(&run)
        .data(&list)
        .out(&tmp.path().join("bad"))
        .flag("edge-cases", &cases)
        .fails_naming(&["--edge-cases"]);
}

/// `kiln train --task fashion-mnist` from a cache already holding the Debian package's IDX
/// files (tiny ones written here: 40 training and 20 test images, each class its own grey
/// level): the images are written out once as PNG lists, validation is cut from train, the
/// test set is the official one, and the ten class names are the data set's.
#[test]
fn fashion_mnist_task_from_a_tiny_idx_cache() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let idx_dir = cache.join("fashion-mnist-0.0~git20200523.55506a9-1/usr/share/datasets/fashion-mnist");
    std::fs::create_dir_all(&idx_dir).unwrap();
    let idx = |dims: &[usize], data: &[u8]| -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        for &d in dims {
            out.extend((d as u32).to_be_bytes());
        }
        out.extend_from_slice(data);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&out).unwrap();
        enc.finish().unwrap()
    };
    for (prefix, n) in [("train", 40usize), ("t10k", 20)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let pixels: Vec<u8> = labels.iter().flat_map(|&l| (0..28 * 28).map(move |p| l * 25 + (p % 5) as u8)).collect();
        std::fs::write(idx_dir.join(format!("{prefix}-images-idx3-ubyte.gz")), idx(&[n, 28, 28], &pixels)).unwrap();
        std::fs::write(idx_dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), idx(&[n], &labels)).unwrap();
    }
    let run = tmp.path().join("run");
    let r = kiln("train")
        .env("KILN_CACHE", &cache)
        .flag("task", "fashion-mnist")
        .model(&fixture("resnet18_tiny"))
        .out(&run)
        .args(["--image-size", "32", "--strategy", "head", "--epochs", "2", "--valid-frac", "0.25"])
        .json();
    assert_eq!(r["test"]["count"], 20, "{r}");
    let settings = read_json(&run.join("settings.json"));
    assert_eq!(settings["examples"]["train"], 30);
    assert_eq!(settings["examples"]["valid"], 10);
    let labels: Vec<&str> = settings["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(labels.len(), 10);
    assert!(labels.contains(&"Ankle boot") && labels.contains(&"T-shirt/top"), "{labels:?}");
    let pngs = cache.join("fashion-mnist-png-0.0~git20200523.55506a9-1");
    assert!(pngs.join("images/test/00019.png").is_file() && pngs.join("train.csv").is_file());

    // A broken label file is named.
    std::fs::remove_dir_all(&pngs).unwrap();
    std::fs::write(idx_dir.join("t10k-labels-idx1-ubyte.gz"), idx(&[20], &[11; 20])).unwrap();
    kiln("train")
        .env("KILN_CACHE", &cache)
        .flag("task", "fashion-mnist")
        .model(&fixture("resnet18_tiny"))
        .out(&tmp.path().join("bad"))
        .args(["--image-size", "32", "--strategy", "head", "--epochs", "1"])
        .fails_naming(&["t10k-labels-idx1-ubyte.gz", "label 11"]);
}

/// A 36×32 image of 9×8 blocks of random grey levels (horizontal neighbours at least 12 apart,
/// so its dHash is stable under small changes), from `seed`, brightened by `plus`.
fn blocks(seed: u64, plus: u8) -> image::RgbImage {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        20 + (s % 200) as u8
    };
    let mut levels = [[0u8; 9]; 8];
    for row in &mut levels {
        for x in 0..9 {
            row[x] = loop {
                let v = next();
                if x == 0 || (v as i32 - row[x - 1] as i32).abs() >= 12 {
                    break v;
                }
            };
        }
    }
    image::RgbImage::from_fn(36, 32, |x, y| image::Rgb([levels[(y / 4) as usize][(x / 4) as usize] + plus; 3]))
}

/// `kiln data inspect` on an image folder with train/ and test/: exact copies (same pixels in
/// another file), a brightened near duplicate, leaks from train into test and the label
/// conflict of a copy filed under another class are all found, and fresh images are not.
#[test]
fn data_inspect_finds_duplicate_and_leaked_images() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("cells");
    for dir in ["train/a", "train/b", "test/a", "test/b"] {
        std::fs::create_dir_all(d.join(dir)).unwrap();
    }
    for i in 0..12u64 {
        blocks(i, 0).save(d.join(format!("train/{}/img{i:02}.png", if i < 6 { "a" } else { "b" }))).unwrap();
    }
    blocks(0, 0).save(d.join("train/a/copy00.png")).unwrap();
    blocks(1, 5).save(d.join("test/a/brighter01.png")).unwrap();
    blocks(100, 0).save(d.join("test/a/fresh.png")).unwrap();
    blocks(2, 0).save(d.join("test/b/copy02.png")).unwrap();
    blocks(101, 0).save(d.join("test/b/fresh.png")).unwrap();

    let report = tmp.path().join("inspect.md");
    let r = kiln("data inspect").args([&d]).flag("report", &report).json();
    let names: Vec<&str> = r["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert!(names.len() == 2 && names[0].ends_with("/train") && names[1].ends_with("/test"), "{names:?}");
    assert_eq!(r["files"][0]["images"], 13);
    assert_eq!(r["files"][1]["sizes"]["36×32"], 4);
    let file_of = |v: &serde_json::Value| v["path"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    let mut exact: Vec<Vec<String>> = r["exact_duplicates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_array().unwrap().iter().map(file_of).collect())
        .collect();
    exact.sort();
    assert_eq!(exact, [vec!["copy00.png", "img00.png"], vec!["img02.png", "copy02.png"]], "{r}");
    let near: Vec<(String, String)> =
        r["near_duplicates"].as_array().unwrap().iter().map(|p| (file_of(&p["a"]), file_of(&p["b"]))).collect();
    assert_eq!(near, [("img01.png".to_string(), "brighter01.png".to_string())], "{r}");
    let mut leaks: Vec<(String, bool)> = r["file_leaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (file_of(&l["image"]), l["exact"].as_bool().unwrap()))
        .collect();
    leaks.sort();
    assert_eq!(leaks, [("brighter01.png".to_string(), false), ("copy02.png".to_string(), true)]);
    assert_eq!(r["label_conflicts"].as_array().unwrap().len(), 1, "{r}");
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(md.contains("leaks across lists") && md.contains("brighter01.png"), "{md}");
}
