//! `kiln bench --step`: a training step's figures and its profile.

use super::kiln;

/// `kiln bench --step` with a profile: the JSON has the step's figures, the profile's
/// dispatches add up to the step's counted ones, and the second step creates no buffer and no
/// bind group (the optimizer's moments and norms are made in buffers of their own, so they never
/// hold a temporary that the next step wants back from the pool).
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
    let second = &fig["steps"][0]["counts"];
    assert_eq!(second["buffers_created"], 0, "the second step: {second}");
    assert_eq!(second["bind_groups_created"], 0, "the second step: {second}");
    let loss = fig["steps"][0]["loss"].as_f64().unwrap();
    assert!((loss - 2f64.ln()).abs() < 0.2, "two labels, random weights: loss near ln 2, got {loss}");
    let profile = &doc["profiles"][0];
    let by_family: u64 =
        profile["by_family"].as_array().unwrap().iter().map(|g| g["dispatches"].as_u64().unwrap()).sum();
    assert_eq!(by_family, dispatches);
    assert!(std::fs::metadata(&png).unwrap().len() > 1000, "the PNG was written");
}

/// `kiln bench --only` the CNN kernels: convolution (forward, dX, dW, depthwise), batch norm
/// and its backward, max-pool and its backward, global average pooling, each with a positive
/// time and its GFLOP/s (convolutions) or GB/s (the memory-bound rest).
#[test]
fn bench_rows_of_the_cnn_kernels() {
    let doc = kiln("bench").args(["--scale", "small", "--only", "conv2d,batch_norm,max_pool,global_avg_pool"]).json();
    let rows = doc["figures"].as_array().unwrap_or_else(|| panic!("no figures: {doc}"));
    let kernels: Vec<&str> = rows.iter().map(|r| r["kernel"].as_str().unwrap()).collect();
    for k in [
        "conv2d",
        "conv2d_dx",
        "conv2d_dw",
        "batch_norm",
        "batch_norm_bwd",
        "max_pool",
        "max_pool_bwd",
        "global_avg_pool",
    ] {
        assert!(kernels.contains(&k), "{k} missing from {kernels:?}");
    }
    assert!(rows.iter().any(|r| r["shape"].as_str().unwrap().starts_with("dw 3x3")), "no depthwise row");
    for r in rows {
        assert!(r["median_ms"].as_f64().unwrap() > 0.0, "{r}");
        let figure = if r["kernel"].as_str().unwrap().starts_with("conv2d") && r["bound"] == "Compute" {
            "gflops"
        } else {
            "gbps"
        };
        assert!(r[figure].as_f64().unwrap() > 0.0, "{figure} of {r}");
    }
}

/// `kiln bench --only matmul_split_k,matmul_whole`: each of the steps' starved products split
/// (a GPU's default policy) and whole, with the adapter's split-K policy and tiles named.
#[test]
fn bench_rows_of_split_k() {
    let doc = kiln("bench").args(["--scale", "small", "--only", "matmul_split_k,matmul_whole"]).json();
    let rows = doc["figures"].as_array().unwrap_or_else(|| panic!("no figures: {doc}"));
    let shapes = kiln::bench::split_k_shapes().len();
    for kernel in ["matmul_split_k", "matmul_whole"] {
        let times: Vec<f64> =
            rows.iter().filter(|r| r["kernel"] == kernel).map(|r| r["median_ms"].as_f64().unwrap()).collect();
        assert_eq!(times.len(), shapes, "{kernel} rows in {doc}");
        assert!(times.iter().all(|&t| t > 0.0), "{kernel}: {times:?}");
    }
    for key in ["split_k", "matmul_tile", "matmul_tile_shallow"] {
        assert!(doc[key].is_string(), "no {key} in {doc}");
    }
}

/// `--tune-size` must make a product deeper than the shallow class, or --tune would tune the
/// deep tile on a shallow product: refused before anything runs.
#[test]
fn bench_tune_refuses_a_shallow_size() {
    let msg = kiln("bench").args(["--tune", "--tune-size", "16"]).fails_naming(&["--tune-size", "16"]);
    assert!(msg.contains("too small"), "{msg}");
}

/// `--precision`: the bench header names the precision in use; f16 where the adapter has no
/// cooperative matrices is refused, naming the flag and what the adapter lacks; and an unknown
/// precision is refused by clap.
#[test]
fn bench_names_and_checks_the_precision() {
    let doc = kiln("bench").args(["--scale", "small", "--only", "copy", "--precision", "f32"]).json();
    assert_eq!(doc["precision"], "f32 matmuls", "{doc}");
    // Whether the adapter bench ran on lists cooperative matrices, as `kiln devices` says.
    let adapter = doc["adapter"].as_str().unwrap().to_string();
    let devices = kiln("devices").json();
    let listed = devices.as_array().unwrap().iter().find(|a| adapter.starts_with(a["name"].as_str().unwrap()));
    let listed = listed.unwrap_or_else(|| panic!("{adapter} is not in {devices}"));
    let coop = listed["features"].as_array().unwrap().iter().any(|f| f == "cooperative-matrix");
    let f16 = kiln("bench").args(["--scale", "small", "--only", "copy", "--precision", "f16"]);
    if coop {
        assert!(f16.json()["precision"].as_str().unwrap().starts_with("f16 matmuls"));
    } else {
        let msg = f16.fails_naming(&["--precision", "f16"]);
        assert!(msg.contains("cooperative matrices") && msg.contains("--precision f32"), "{msg}");
    }
    kiln("bench").args(["--precision", "bf16"]).fails_naming(&["--precision", "bf16"]);
}
