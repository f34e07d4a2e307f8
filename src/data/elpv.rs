//! ELPV: electroluminescence photos of solar cells (Deitsch et al., the `elpv-dataset` wheel on
//! PyPI; data CC-BY-NC-SA-4.0): 2,624 300×300 grayscale cells from 44 modules, each with the
//! probability that it is defective (0, 1/3, 2/3 or 1, from experts) and its type (mono or
//! poly). kiln's task: defective (p ≥ 0.5) or functional, the cell type as the group.
//!
//! The split avoids near-duplicate leakage between modules' neighbouring cells: the module of a
//! cell is not given, but the files are in module order (runs of one type in multiples of 60, the
//! cells of a 6×10 module), so the cells are cut into blocks of 60 consecutive cells of one type,
//! and whole blocks go to train, validation or test (about 60/20/20 of each type's blocks,
//! shuffled by the seed). Cells of one module, photographed together and alike, therefore
//! never sit on both sides of a split.

use std::path::Path;

use super::classify::{Example, Splits};
use crate::error::{Error, Result};
use crate::util::SplitMix64;

/// Cells per block: one 6×10 module.
pub const BLOCK: usize = 60;
/// Shares of each type's blocks in validation and test.
pub const VALID_FRAC: f64 = 0.2;
pub const TEST_FRAC: f64 = 0.2;

pub const DEFECTIVE: &str = "defective";
pub const FUNCTIONAL: &str = "functional";

/// Every cell of `data_dir` (the package's `data/`, holding labels.csv and images/) as an
/// example whose text is the image's path, in file order.
pub fn read(data_dir: &Path) -> Result<Vec<Example>> {
    let labels = data_dir.join("labels.csv");
    let text = std::fs::read_to_string(&labels).map_err(|e| Error::io(&labels, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let bad = |m: String| Error::Parse { path: labels.clone(), message: format!("line {}: {m}", i + 1) };
        let [path, p, kind] = fields[..] else {
            return Err(bad(format!("expected `path probability type`, found {} fields", fields.len())));
        };
        let p: f64 = p.parse().map_err(|_| bad(format!("defect probability `{p}` is not a number")))?;
        if !(0.0..=1.0).contains(&p) || !["mono", "poly"].contains(&kind) {
            return Err(bad(format!("probability {p} or type `{kind}` out of range (0..1, mono|poly)")));
        }
        let label = if p >= 0.5 { DEFECTIVE } else { FUNCTIONAL };
        out.push(Example {
            text: data_dir.join(path).display().to_string(),
            label: label.into(),
            group: Some(kind.into()),
            line: i + 1,
        });
    }
    if out.is_empty() {
        return Err(Error::Parse { path: labels, message: "no cells".into() });
    }
    Ok(out)
}

/// The module blocks: runs of one type in file order, cut every [`BLOCK`] cells.
pub fn blocks(cells: &[Example]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=cells.len() {
        if i == cells.len() || cells[i].group != cells[start].group || i - start == BLOCK {
            out.push(start..i);
            start = i;
        }
    }
    out
}

/// Whole blocks into train / valid / test, per type, by the seed (see the module doc).
pub fn split(cells: Vec<Example>, seed: u64) -> Splits {
    let mut split_of = vec![0u8; cells.len()];
    let all = blocks(&cells);
    let mut rng = SplitMix64::new(seed ^ 0xE1B5);
    for kind in ["mono", "poly"] {
        let mut mine: Vec<&std::ops::Range<usize>> =
            all.iter().filter(|b| cells[b.start].group.as_deref() == Some(kind)).collect();
        rng.shuffle(&mut mine);
        let n = mine.len();
        let n_valid = ((n as f64 * VALID_FRAC).round() as usize).max(1).min(n.saturating_sub(2));
        let n_test = ((n as f64 * TEST_FRAC).round() as usize).max(1).min(n.saturating_sub(1 + n_valid));
        for (k, b) in mine.iter().enumerate() {
            let s = if k < n_valid {
                1
            } else if k < n_valid + n_test {
                2
            } else {
                0
            };
            split_of[(*b).clone()].iter_mut().for_each(|x| *x = s);
        }
    }
    let mut splits = Splits::default();
    for (e, s) in cells.into_iter().zip(split_of) {
        match s {
            1 => splits.valid.push(e),
            2 => splits.test.push(e),
            _ => splits.train.push(e),
        }
    }
    splits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_threshold_and_blocks_stay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        // 3 mono modules, then 5 poly ones (one short: 30 cells).
        for i in 0..(3 * 60 + 4 * 60 + 30) {
            let kind = if i < 180 { "mono" } else { "poly" };
            let p = ["0.0", "0.3333333333333333", "0.6666666666666666", "1.0"][i % 4];
            text.push_str(&format!("images/cell{:04}.png  {p}  {kind}\n", i + 1));
        }
        std::fs::write(dir.path().join("labels.csv"), &text).unwrap();
        let cells = read(dir.path()).unwrap();
        assert_eq!(cells.len(), 450);
        assert_eq!((cells[1].label.as_str(), cells[2].label.as_str()), (FUNCTIONAL, DEFECTIVE));
        assert_eq!(cells[0].group.as_deref(), Some("mono"));
        let b = blocks(&cells);
        assert_eq!(b.len(), 8);
        assert_eq!(b[7], 420..450);
        let s = split(cells.clone(), 3);
        assert_eq!(s.train.len() + s.valid.len() + s.test.len(), 450);
        // Every block lies in one split, and each type has cells in each split.
        let where_ = |e: &Example| {
            [&s.train, &s.valid, &s.test].iter().position(|set| set.iter().any(|x| x.text == e.text)).unwrap()
        };
        for r in &b {
            let first = where_(&cells[r.start]);
            assert!(cells[r.clone()].iter().all(|e| where_(e) == first), "block {r:?} is split");
        }
        for set in [&s.train, &s.valid, &s.test] {
            assert!(set.iter().any(|e| e.group.as_deref() == Some("poly")));
            assert!(set.iter().any(|e| e.group.as_deref() == Some("mono")));
        }
        assert_eq!(split(cells, 3).test, s.test, "same seed, same split");
        std::fs::write(dir.path().join("labels.csv"), "images/a.png 2.0 mono\n").unwrap();
        let e = read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("labels.csv") && e.contains("line 1"), "{e}");
    }
}
