//! `kiln data`: inspect, clean and split on planted problems.

use std::path::Path;

use super::{bert_workspace, kiln, read_jsonl};

/// A word of class `pos` (w10..w39) or `neg` (w50..w79), drawn by a small LCG.
fn class_text(label: &str, seed: usize, words: usize) -> String {
    let base = if label == "pos" { 10 } else { 50 };
    let mut x = seed as u64 * 2_654_435_761 + 12345;
    (0..words)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            format!("w{}", base + (x >> 33) as usize % 30)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn jsonl_line(text: &str, label: &str) -> String {
    format!("{}\n", serde_json::json!({"text": text, "label": label}))
}

/// `kiln data inspect`, `clean` and `split` on planted problems: each is found, the cleaned files
/// lack exactly the planted rows (the log names each), the inputs are untouched, and a split keeps
/// duplicate clusters whole. `--suspicious` finds the flipped labels with the tiny BERT.
#[test]
fn data_commands_find_and_fix_planted_problems() {
    let ws = bert_workspace();
    let label = |i: usize| if i.is_multiple_of(2) { "pos" } else { "neg" };
    let mut train: Vec<String> = (0..60).map(|i| jsonl_line(&class_text(label(i), i, 40), label(i))).collect();
    let text = |i: usize| class_text(label(i), i, 40);
    let last_word_changed = |t: &str| format!("{} w95", t.rsplit_once(' ').unwrap().0);
    train.push(jsonl_line(&format!("  {}  ", text(0).to_uppercase()), "pos")); // line 61: exact copy of line 1
    train.push(jsonl_line(&last_word_changed(&text(1)), "neg")); // 62: near copy of line 2
    train.push(jsonl_line(&text(2), "neg")); // 63: line 3's text, other label
    train.push(jsonl_line(
        &"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg".repeat(3),
        "pos",
    )); // 64: a base64 blob
    train.push(jsonl_line("   ", "neg")); // 65: empty
    // 66..68: neg words, labelled pos (flipped).
    for i in [101, 103, 105] {
        train.push(jsonl_line(&class_text("neg", i, 40), "pos"));
    }
    let mut test: Vec<String> = (200..220).map(|i| jsonl_line(&class_text(label(i), i, 40), label(i))).collect();
    test.push(jsonl_line(&text(4), label(4))); // test line 21: exact copy of train line 5
    test.push(jsonl_line(&last_word_changed(&text(6)), label(6))); // 22: near copy of train line 7
    let dir = ws.path("curate");
    std::fs::create_dir_all(&dir).unwrap();
    let (train_path, test_path) = (dir.join("train.jsonl"), dir.join("test.jsonl"));
    std::fs::write(&train_path, train.concat()).unwrap();
    std::fs::write(&test_path, test.concat()).unwrap();

    let report = ws.path("report.md");
    let v = kiln("data inspect")
        .args([&train_path, &test_path])
        .model(&ws.model)
        .args(["--max-len", "32", "--suspicious"])
        .flag("report", &report)
        .json();
    let lines = |rows: &serde_json::Value| -> Vec<(u64, u64)> {
        rows.as_array().unwrap().iter().map(|r| (r["file"].as_u64().unwrap(), r["line"].as_u64().unwrap())).collect()
    };
    let exact: Vec<Vec<(u64, u64)>> = v["exact_duplicates"].as_array().unwrap().iter().map(lines).collect();
    assert_eq!(
        exact,
        vec![vec![(0, 1), (0, 61)], vec![(0, 3), (0, 63)], vec![(0, 5), (1, 21)]],
        "{}",
        v["exact_duplicates"]
    );
    let near: Vec<((u64, u64), (u64, u64))> = v["near_duplicates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let l = |r: &serde_json::Value| (r["file"].as_u64().unwrap(), r["line"].as_u64().unwrap());
            (l(&p["a"]), l(&p["b"]))
        })
        .collect();
    assert_eq!(near, vec![((0, 2), (0, 62)), ((0, 7), (1, 22))], "{}", v["near_duplicates"]);
    let conflicts: Vec<Vec<(u64, u64)>> = v["label_conflicts"].as_array().unwrap().iter().map(lines).collect();
    assert_eq!(conflicts, vec![vec![(0, 3), (0, 63)]]);
    let leaks: Vec<((u64, u64), bool)> = v["file_leaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            ((l["row"]["file"].as_u64().unwrap(), l["row"]["line"].as_u64().unwrap()), l["exact"].as_bool().unwrap())
        })
        .collect();
    assert_eq!(leaks, vec![((1, 21), true), ((1, 22), false)]);
    let f0 = &v["files"][0];
    assert_eq!(lines(&f0["empty"]), vec![(0, 65)]);
    assert_eq!(f0["junk"][0][0]["line"], 64);
    assert_eq!(f0["junk"][0][1], "base64");
    assert_eq!(f0["labels"]["pos"], 35, "{f0}");
    assert!(f0["token_lengths"]["over_max"].as_u64().unwrap() >= 60, "{f0}");
    let flagged: Vec<u64> =
        v["suspicious_labels"].as_array().unwrap().iter().map(|s| s["row"]["line"].as_u64().unwrap()).collect();
    // The flipped rows, and line 63 (line 3's pos words labelled neg), lead the list.
    let mut top = flagged[..4.min(flagged.len())].to_vec();
    top.sort();
    assert_eq!(top, vec![63, 66, 67, 68], "suspects {flagged:?}");
    let md = std::fs::read_to_string(&report).unwrap();
    for section in [
        "## Exact duplicates",
        "## Near duplicates",
        "## Duplicates whose labels disagree",
        "## Leakage across files",
        "## Empty and junk",
        "## Suspicious labels",
        "train.jsonl:66",
    ] {
        assert!(md.contains(section), "report.md lacks {section}:\n{md}");
    }

    // clean: every planted row goes, with its reason; the inputs are as they were.
    let cleaned = ws.path("cleaned");
    let (before_train, before_test) = (std::fs::read(&train_path).unwrap(), std::fs::read(&test_path).unwrap());
    kiln("data clean").args([&train_path, &test_path]).out(&cleaned).run();
    assert_eq!(std::fs::read(&train_path).unwrap(), before_train);
    assert_eq!(std::fs::read(&test_path).unwrap(), before_test);
    let log = read_jsonl(&cleaned.join("removed.jsonl"));
    let removed: Vec<(String, u64, String)> = log
        .iter()
        .map(|r| {
            (r["file"].as_str().unwrap().into(), r["line"].as_u64().unwrap(), r["reason"].as_str().unwrap().into())
        })
        .collect();
    let reason = |file: &str, line: u64| -> String {
        removed
            .iter()
            .find(|r| r.0 == file && r.1 == line)
            .map(|r| r.2.clone())
            .unwrap_or_else(|| panic!("{file}:{line} kept; removed {removed:?}"))
    };
    assert!(reason("train.jsonl", 61).starts_with("exact duplicate"));
    assert!(reason("train.jsonl", 62).starts_with("near duplicate"));
    assert!(
        reason("train.jsonl", 3).starts_with("label conflict")
            && reason("train.jsonl", 63).starts_with("label conflict")
    );
    assert!(reason("train.jsonl", 64).contains("base64"));
    assert_eq!(reason("train.jsonl", 65), "empty text");
    assert!(reason("test.jsonl", 21).starts_with("exact duplicate"));
    assert!(reason("test.jsonl", 22).starts_with("near duplicate"));
    assert_eq!(log.iter().find(|r| r["line"] == 61).unwrap()["kept"], "train.jsonl:1");
    assert_eq!(removed.len(), 8, "{removed:?}");
    let count = |p: &Path| std::fs::read_to_string(p).unwrap().lines().count();
    assert_eq!((count(&cleaned.join("train.jsonl")), count(&cleaned.join("test.jsonl"))), (68 - 6, 20));
    // Writing over an input is refused.
    kiln("data clean").args([&train_path]).out(&dir).fails_naming(&["overwrite"]);

    // Rebalancing the training file: oversampled to the larger class.
    let balanced = ws.path("balanced");
    kiln("data clean").args([cleaned.join("train.jsonl")]).out(&balanced).flag("rebalance", "oversample").run();
    let text = std::fs::read_to_string(balanced.join("train.jsonl")).unwrap();
    let pos = text.lines().filter(|l| l.contains("\"label\":\"pos\"") || l.contains("\"label\": \"pos\"")).count();
    assert_eq!(pos * 2, text.lines().count(), "{pos} pos of {}", text.lines().count());

    // split: the near-duplicate pair and the exact pair each land in one split, for any seed.
    let all = ws.path("all.jsonl");
    std::fs::write(&all, train.concat()).unwrap();
    for seed in 0..4 {
        let out_dir = ws.path(&format!("split{seed}"));
        kiln("data split")
            .args([&all])
            .out(&out_dir)
            .flag("seed", seed.to_string())
            .args(["--valid", "0.2", "--test", "0.3"])
            .run();
        let where_is = |needle: &str| -> Vec<&str> {
            ["train", "valid", "test"]
                .into_iter()
                .filter(|n| std::fs::read_to_string(out_dir.join(format!("{n}.jsonl"))).unwrap().contains(needle))
                .collect()
        };
        assert_eq!(where_is(&text_of(&train[1])[..60]).len(), 1, "seed {seed}: the near pair is split");
        let total: usize = ["train", "valid", "test"].iter().map(|n| count(&out_dir.join(format!("{n}.jsonl")))).sum();
        assert_eq!(total, train.len());
    }
}

/// The `text` of a jsonl line.
fn text_of(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["text"].as_str().unwrap().to_string()
}

/// `kiln data split` checks its fractions and the splits they give before writing anything:
/// each fraction in [0, 1) and finite, their sum under 1, no split asked for left empty.
#[test]
fn split_fractions_are_checked_before_anything_is_written() {
    let ws = bert_workspace();
    let input = ws.path("rows.jsonl");
    let rows: String =
        (0..6).map(|i| format!("{{\"text\": \"w{} w{}\", \"label\": \"a\"}}\n", 10 + i, 40 + i)).collect();
    std::fs::write(&input, &rows).unwrap();
    let out = ws.path("split");
    let split =
        |valid: &str, test: &str| kiln("data split").args([&input]).out(&out).flag("valid", valid).flag("test", test);
    split("0.9", "0.9").fails_naming(&["--valid 0.9 and --test 0.9", "under 1"]);
    split("-0.1", "0.2").fails_naming(&["--valid: -0.1", "[0, 1)"]);
    split("nan", "0.2").fails_naming(&["--valid: NaN"]);
    split("0.1", "1").fails_naming(&["--test: 1"]);
    split("0.05", "0.2").fails_naming(&["rows.jsonl", "the valid split would be empty"]);
    assert!(!out.exists(), "a refused split wrote {}", out.display());
    assert_eq!(std::fs::read_to_string(&input).unwrap(), rows, "the input changed");
    // A split not asked for may be empty.
    split("0", "0.5").run();
    assert_eq!(read_jsonl(&out.join("train.jsonl")).len(), 3);
}
