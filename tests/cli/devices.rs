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
/// has subgroups, and epilogues fused on a GPU, separate on a CPU adapter; the environment's
/// overrides show there too.
#[test]
fn devices_name_the_kernel_paths() {
    let paths = |reductions: &str, epilogues: &str| {
        let doc = kiln("devices").env("KILN_REDUCTIONS", reductions).env("KILN_EPILOGUES", epilogues).json();
        let adapters = doc.as_array().unwrap_or_else(|| panic!("not a list: {doc}")).clone();
        assert!(!adapters.is_empty(), "no adapter listed: {doc}");
        adapters
    };
    for a in paths("", "") {
        let kernels: Vec<&str> = a["kernels"]
            .as_array()
            .unwrap_or_else(|| panic!("no kernels: {a}"))
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        let features = a["features"].as_array().unwrap();
        let subgroups = features.iter().any(|f| f.as_str().unwrap().starts_with("subgroups "));
        let reductions = if subgroups { "subgroup reductions" } else { "barrier reductions" };
        let epilogues = if a["device_type"] == "Cpu" { "separate matmul epilogues" } else { "fused matmul epilogues" };
        assert_eq!(kernels, [reductions, epilogues], "{a}");
    }
    for a in paths("barrier", "fused") {
        assert_eq!(a["kernels"], serde_json::json!(["barrier reductions", "fused matmul epilogues"]), "{a}");
    }
}
