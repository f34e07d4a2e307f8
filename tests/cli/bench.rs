//! `kiln bench --step`: a training step's figures and its profile.

use super::kiln;

/// `kiln bench --step` with a profile: the JSON has the step's figures, and the profile's
/// dispatches add up to the step's counted ones.
#[test]
fn bench_step_profiles_a_training_step() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("profile.png");
    let doc = kiln("bench")
        .args(["--step", "minilm", "--scale", "small", "--warmup", "1", "--steps", "1", "--profile"])
        .flag("plot", &png)
        .json();
    let fig = &doc["figure"];
    let dispatches = fig["dispatches_per_step"].as_u64().unwrap();
    assert!(dispatches > 50, "a 2-layer LoRA step is many dispatches: {dispatches}");
    assert!(fig["median_ms"].as_f64().unwrap() > 0.0 && fig["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(fig["record_us_per_dispatch"].as_f64().unwrap() > 0.0);
    let loss = fig["steps"][0]["loss"].as_f64().unwrap();
    assert!((loss - 2f64.ln()).abs() < 0.2, "two labels, random weights: loss near ln 2, got {loss}");
    let profile = &doc["profiles"][0];
    let by_family: u64 =
        profile["by_family"].as_array().unwrap().iter().map(|g| g["dispatches"].as_u64().unwrap()).sum();
    assert_eq!(by_family, dispatches);
    assert!(std::fs::metadata(&png).unwrap().len() > 1000, "the PNG was written");
}
