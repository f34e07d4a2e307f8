//! Per-group scores (`--group-by COLUMN`) and the largest gap between groups of each metric.

use std::collections::BTreeMap;

use super::bootstrap::{Contributions, group_gap};
use super::report::{GroupReport, GroupRow};

/// A metric that is a ratio of per-example sums (see [`super::bootstrap`]).
pub struct SliceMetric {
    pub name: String,
    pub num: Vec<f64>,
    pub den: Vec<f64>,
    pub higher_is_better: bool,
    /// Report its largest gap with a bootstrap interval.
    pub gap: bool,
}

pub struct GapSettings {
    pub resamples: usize,
    pub seed: u64,
    pub threshold: f64,
}

/// Each group's metrics and the gaps; examples without a group are left out. None when no
/// example has a group.
pub fn group_report(
    column: &str,
    groups: &[Option<String>],
    metrics: &[SliceMetric],
    settings: &GapSettings,
) -> Option<GroupReport> {
    let names: Vec<String> = {
        let mut n: Vec<String> = groups.iter().flatten().cloned().collect();
        n.sort();
        n.dedup();
        n
    };
    if names.is_empty() {
        return None;
    }
    let keep: Vec<usize> = (0..groups.len()).filter(|&i| groups[i].is_some()).collect();
    let group: Vec<usize> =
        keep.iter().map(|&i| names.binary_search(groups[i].as_ref().expect("kept")).expect("a known group")).collect();
    let mut rows: Vec<GroupRow> =
        names.iter().map(|g| GroupRow { group: g.clone(), examples: 0, metrics: BTreeMap::new() }).collect();
    for &g in &group {
        rows[g].examples += 1;
    }
    let mut gaps = Vec::new();
    for m in metrics {
        let num: Vec<f64> = keep.iter().map(|&i| m.num[i]).collect();
        let den: Vec<f64> = keep.iter().map(|&i| m.den[i]).collect();
        let c = Contributions { group: &group, num: &num, den: &den, names: &names };
        for v in c.values() {
            let row = rows.iter_mut().find(|r| r.group == v.group).expect("a known group");
            row.metrics.insert(m.name.clone(), v.value);
        }
        if m.gap
            && let Some(g) =
                group_gap(&c, &m.name, m.higher_is_better, settings.resamples, settings.seed, settings.threshold)
        {
            gaps.push(g);
        }
    }
    Some(GroupReport { column: column.to_string(), rows, gaps })
}

/// The `group` (or another column) of each line of a jsonl or csv data file, in the order the
/// readers return examples (blank lines skipped).
pub fn read_column(path: &std::path::Path, column: &str) -> crate::Result<Vec<Option<String>>> {
    let mut out = Vec::new();
    if path.extension().is_some_and(|e| e == "csv") {
        let file = std::fs::File::open(path).map_err(|e| crate::Error::io(path, e))?;
        let mut reader = csv::Reader::from_reader(std::io::BufReader::new(file));
        let header =
            reader.headers().map_err(|e| crate::Error::Parse { path: path.into(), message: e.to_string() })?.clone();
        let col = header.iter().position(|h| h.trim_start_matches('\u{feff}').trim() == column);
        for row in reader.records() {
            let row = row.map_err(|e| crate::Error::Parse { path: path.into(), message: e.to_string() })?;
            out.push(col.and_then(|c| row.get(c)).filter(|v| !v.is_empty()).map(str::to_string));
        }
        return Ok(out);
    }
    crate::data::for_each_line(path, |line_no, line| {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| crate::data::line_error(path, line_no, format!("invalid JSON ({e})")))?;
        out.push(match v.get(column) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        });
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_rows_and_gaps() {
        let g = |s: &str| Some(s.to_string());
        let groups = [g("easy"), g("easy"), g("hard"), g("hard"), None];
        let acc = SliceMetric {
            name: "accuracy".into(),
            num: vec![1.0, 1.0, 0.0, 1.0, 0.0],
            den: vec![1.0; 5],
            higher_is_better: true,
            gap: true,
        };
        let r =
            group_report("group", &groups, &[acc], &GapSettings { resamples: 200, seed: 1, threshold: 0.05 }).unwrap();
        assert_eq!(r.rows.len(), 2);
        assert_eq!((r.rows[0].examples, r.rows[0].metrics["accuracy"]), (2, 1.0));
        assert_eq!(r.rows[1].metrics["accuracy"], 0.5);
        assert!((r.gaps[0].gap - 0.5).abs() < 1e-12 && r.gaps[0].flagged && r.gaps[0].worst == "hard");
        assert!(group_report("group", &[None], &[], &GapSettings { resamples: 1, seed: 0, threshold: 0.0 }).is_none());
    }
}
