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
}
