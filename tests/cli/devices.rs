//! `kiln devices`: every adapter with its limits and the features faster kernels could use.

use super::kiln;

/// The JSON lists each adapter with a `features` list drawn from the four kiln reports, and
/// the table gives each adapter a `features:` line.
#[test]
fn devices_list_each_adapters_features() {
    let doc = kiln("devices").json();
    let adapters = doc.as_array().unwrap_or_else(|| panic!("not a list: {doc}"));
    assert!(!adapters.is_empty(), "no adapter listed: {doc}");
    for a in adapters {
        let features = a["features"].as_array().unwrap_or_else(|| panic!("no features list: {a}"));
        for f in features {
            let f = f.as_str().unwrap();
            let known =
                f.starts_with("subgroups ") || ["shader-f16", "timestamp-query", "cooperative-matrix"].contains(&f);
            assert!(known, "unexpected feature `{f}` in {a}");
        }
    }
    let (table, _) = kiln("devices").run();
    assert_eq!(table.matches("    features: ").count(), adapters.len(), "{table}");
    assert_eq!(table.matches("    kernels: ").count(), adapters.len(), "{table}");
}

/// Each adapter says which kernel paths kiln picks on it: subgroup reductions exactly where it
/// has subgroups, epilogues fused on a GPU and separate on a CPU adapter, and split-K on a GPU
/// only (with no tuned policy cached), and f16 for a frozen base's products where it can run;
/// the environment's overrides show there too.
#[test]
fn devices_name_the_kernel_paths() {
    // A cache folder that does not exist: no tuned split-K policy.
    let cache = std::env::temp_dir().join(format!("kiln-no-cache-{}", std::process::id()));
    let paths = |reductions: &str, epilogues: &str, split_k: &str| {
        let doc = kiln("devices")
            .env("KILN_REDUCTIONS", reductions)
            .env("KILN_EPILOGUES", epilogues)
            .env("KILN_SPLIT_K", split_k)
            .env("KILN_CACHE", &cache)
            .json();
        let adapters = doc.as_array().unwrap_or_else(|| panic!("not a list: {doc}")).clone();
        assert!(!adapters.is_empty(), "no adapter listed: {doc}");
        adapters
    };
    for a in paths("", "", "") {
        let kernels: Vec<&str> = a["kernels"]
            .as_array()
            .unwrap_or_else(|| panic!("no kernels: {a}"))
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        let features = a["features"].as_array().unwrap();
        let subgroups = features.iter().any(|f| f.as_str().unwrap().starts_with("subgroups "));
        let reductions = if subgroups { "subgroup reductions" } else { "barrier reductions" };
        let cpu = a["device_type"] == "Cpu";
        let epilogues = if cpu { "separate matmul epilogues" } else { "fused matmul epilogues" };
        let split_k = if cpu { "no split-K" } else { "split-K below 256 workgroups (K ranges ≥ 128)" };
        assert_eq!(kernels[..3], [reductions, epilogues, split_k], "{a}");
        // A frozen base's products: f16 on a GPU with cooperative matrices, else f32 and why.
        let coop = features.iter().any(|f| f == "cooperative-matrix");
        let precision = kernels.get(3).unwrap_or_else(|| panic!("no precision: {a}"));
        if coop && !cpu {
            assert!(precision.starts_with("f16 matmuls for frozen-base products (cooperative matrices "), "{a}");
        } else if coop {
            assert!(precision.starts_with("f32 matmuls (--precision f16 would run cooperative matrices "), "{a}");
        } else {
            assert!(precision.starts_with("f32 matmuls (no f16: the adapter has no "), "{a}");
        }
    }
    for a in paths("barrier", "fused", "64,32") {
        let want = ["barrier reductions", "fused matmul epilogues", "split-K below 64 workgroups (K ranges ≥ 32)"];
        assert_eq!(a["kernels"].as_array().unwrap()[..3], serde_json::json!(want).as_array().unwrap()[..], "{a}");
    }
    for a in paths("", "", "off") {
        assert_eq!(a["kernels"][2], "no split-K", "{a}");
    }
}
