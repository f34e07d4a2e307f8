//! `kiln tune`: successive halving keeps the best, a study resumes, its best config trains
//! again to the same score; bad spaces are refused.

use std::path::Path;

use super::{bert_workspace, curve, kiln, read_jsonl};

/// The lines of a study's trials.jsonl, each without its wall time.
fn study_log(study: &Path) -> Vec<serde_json::Value> {
    read_jsonl(&study.join("trials.jsonl"))
        .into_iter()
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("seconds");
            v
        })
        .collect()
}

/// `kiln tune` on the tiny BERT (head strategy) with successive halving 4,2,16 over 4 trials:
/// all 4 train 4 steps, the 2 best continue to 8, the best of those to 16. Checks that each rung
/// keeps the right trials and that the logged objectives are the runs' own best validations;
/// that running the command again trains nothing, and that a study whose last results were lost
/// (as in a kill) retrains only those and logs the same results; that `best.toml` trains the
/// best trial again to exactly its score; and that another space is refused.
#[test]
fn tune_halving_keeps_the_best_resumes_and_its_best_config_reproduces() {
    let ws = bert_workspace();
    let space = ws.path("space.toml");
    std::fs::write(
        &space,
        format!(
            "[base]\nmodel = {:?}\ndata = {:?}\nstrategy = \"head\"\nbatch_size = 8\n\n[params]\n\
             lr = {{ log_uniform = [1e-3, 0.3] }}\ndropout = {{ uniform = [0.0, 0.3] }}\n",
            ws.model, ws.data
        ),
    )
    .unwrap();
    let study = ws.path("study");
    let tune = kiln("tune").flag("space", &space).flag("study", &study).args([
        "--trials",
        "4",
        "--halving",
        "4,2,16",
        "--seed",
        "5",
        "--metric",
        "val-loss",
    ]);
    let summary = tune.json();
    let log = study_log(&study);

    // (trial, rung) -> (objective, status, steps).
    let results = |log: &[serde_json::Value], rung: u64| -> Vec<(u64, f64, String, u64)> {
        log.iter()
            .filter(|r| r["event"] == "rung" && r["rung"] == rung)
            .map(|r| {
                (
                    r["trial"].as_u64().unwrap(),
                    r["objective"].as_f64().unwrap(),
                    r["status"].as_str().unwrap().into(),
                    r["steps"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    // The k best (lowest validation loss, ties to the earlier trial), in trial order.
    let best = |rs: &[(u64, f64, String, u64)], k: usize| -> Vec<u64> {
        let mut r = rs.to_vec();
        r.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let mut top: Vec<u64> = r.iter().take(k).map(|x| x.0).collect();
        top.sort();
        top
    };
    let (r0, r1, r2) = (results(&log, 0), results(&log, 1), results(&log, 2));
    assert_eq!(r0.len(), 4, "{log:?}");
    assert!(r0.iter().all(|r| r.2 == "paused" && r.3 == 4), "{r0:?}");
    let mut distinct: Vec<f64> = r0.iter().map(|r| r.1).collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "the ranking is not decided by ties: {r0:?}");
    assert_eq!(r1.iter().map(|r| r.0).collect::<Vec<_>>(), best(&r0, 2), "rung 1 keeps the 2 best of rung 0");
    assert_eq!(r2.iter().map(|r| r.0).collect::<Vec<_>>(), best(&r1, 1), "rung 2 keeps the best of rung 1");
    assert_eq!((r2[0].2.as_str(), r2[0].3), ("complete", 16));

    // Each logged objective is the trial's best validation loss up to that rung (metrics.jsonl
    // has it as an f32), and a pruned trial trained no step past its rung.
    for (trial, objective, _, steps) in r0.iter().chain(&r1) {
        let run = study.join(format!("trials/{trial:04}"));
        let events = curve(&run);
        let best_loss = events
            .iter()
            .filter(|e| e["event"] == "eval" && e["step"].as_u64().unwrap() <= *steps)
            .map(|e| e["val_loss"].as_f64().unwrap() as f32)
            .fold(f32::INFINITY, f32::min);
        // As f32: the losses are f32, and JSON readers may differ in the last bit of an f64.
        assert_eq!(*objective as f32, best_loss, "trial {trial} at step {steps}");
        let trained = events.iter().filter(|e| e["event"] == "step").count() as u64;
        let last = [&r0, &r1, &r2].iter().flat_map(|r| r.iter()).filter(|r| r.0 == *trial).map(|r| r.3).max().unwrap();
        assert_eq!(trained, last, "trial {trial}");
    }
    assert_eq!(summary["best"]["trial"].as_u64(), Some(r2[0].0));
    assert_eq!(summary["compute"]["steps"], 2 * 4 + 8 + 16);
    assert_eq!(summary["compute"]["all_trials_to_max_steps"], 4 * 16);
    for f in ["study.json", "results.md", "results.json", "best.toml", "study.png"] {
        assert!(study.join(f).is_file(), "missing {f}");
    }
    let md = std::fs::read_to_string(study.join("results.md")).unwrap();
    assert!(md.contains("| rank | trial | dropout | lr | val_loss |") && md.contains("pruned at step 4"), "{md}");

    // The same command again: nothing is trained.
    let metrics_len =
        |t: u64| std::fs::read_to_string(study.join(format!("trials/{t:04}/metrics.jsonl"))).unwrap().len();
    let before: Vec<usize> = (0..4).map(metrics_len).collect();
    tune.json();
    assert_eq!(study_log(&study), log);
    assert_eq!((0..4).map(metrics_len).collect::<Vec<_>>(), before, "no trial trained again");

    // Lose the last two results, as a kill between a trial's end and its log line would: only
    // those are redone, from the trials' checkpoints, with the same results.
    let text = std::fs::read_to_string(study.join("trials.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(study.join("trials.jsonl"), lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    tune.json();
    assert_eq!(study_log(&study), log, "the resumed study logs what the uninterrupted one did");

    // best.toml trains the best trial again, to exactly its score.
    let repro = ws.path("repro");
    let report = kiln("train").flag("config", study.join("best.toml")).out(&repro).json();
    assert_eq!(report["best"]["value"].as_f64(), Some(r2[0].1), "{report}");
    assert_eq!(report["steps"], 16);

    // Another space in the same study folder is refused.
    std::fs::write(&space, std::fs::read_to_string(&space).unwrap().replace("0.3]", "0.5]")).unwrap();
    tune.on("json").fails_naming(&["space file's contents changed"]);
}

/// Bad search spaces fail before any training, naming the file, the key and what was expected.
#[test]
fn tune_refuses_bad_spaces_naming_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let space = tmp.path().join("space.toml");
    for (text, extra, want) in [
        ("[params]\nlr = { log_uniform = [0, 0.1] }", &[][..], "`params.lr`: `log_uniform`: low must be above 0"),
        ("[params]\nlr = { uniform = [0.2, 0.1] }", &[], "low 0.2 must not exceed high 0.1"),
        ("[params]\nlearning_rate = { uniform = [0.1, 0.2] }", &[], "`params.learning_rate`: `kiln train` has no flag"),
        ("[params]\nbatch_size = { choice = [] }", &[], "`params.batch_size`: `choice` is empty"),
        ("[params]\nlr = { uniform = [0.1, 0.2], step = 2 }", &[], "`params.lr`: unknown key `step`"),
        ("[params]\nlora_r = { choice = [\"big\"] }", &[], "`params.lora_r` = \"big\""),
        ("[params]\nlr = { uniform = [0.1, 0.2] }", &["--", "--lr", "0.1"], "`--lr` after `--` is also searched"),
        ("[params]\nlr = { uniform = [0.1, 0.2] }", &["--halving", "3,1,9"], "eta 1"),
        (
            "[params]\nlr = { uniform = [0.1, 0.2] }",
            &["--halving", "30,3,90", "--", "--eval-every", "20"],
            "let --eval-every",
        ),
    ] {
        std::fs::write(&space, text).unwrap();
        let err =
            kiln("tune").flag("space", &space).flag("study", tmp.path().join("s")).args(extra).fails_naming(&[want]);
        if !text.contains("--") && extra.is_empty() {
            assert!(err.contains("space.toml"), "{text}: the file is named: {err}");
        }
    }
    assert!(!tmp.path().join("s/trials").exists(), "nothing trained");
}

/// One writer per study: while another process holds the study's lock, `kiln tune` on it is
/// refused before any trial, naming the holder's pid; nothing is written into the study.
#[test]
fn a_study_in_use_is_refused_naming_the_holder() {
    let ws = bert_workspace();
    let space = ws.path("space.toml");
    let base = format!("[base]\nmodel = {:?}\ndata = {:?}\nstrategy = \"head\"\n", ws.model, ws.data);
    std::fs::write(&space, base + "\n[params]\nlr = { log_uniform = [1e-3, 0.3] }\n").unwrap();
    let study = ws.path("study");
    let held = kiln::util::lock::Lock::take(&study, "--study", "a test holding the study").unwrap();
    let err = kiln("tune").flag("space", &space).flag("study", &study).args(["--trials", "1"]).fails_naming(&[
        "--study",
        "in use by another kiln",
        &format!("pid {} ", std::process::id()),
        "a test holding the study",
    ]);
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "{err}");
    assert!(!study.exists(), "the refused study wrote {study:?}");
    drop(held);
}
