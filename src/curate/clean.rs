//! `kiln data clean`: new files without the rows an inspection found wanting, and a log that
//! names every row removed and why, so nothing is lost silently. The input is never touched.
//!
//! In order: empty, junk, too short and too long rows go; label conflicts are resolved by the
//! chosen rule; duplicates (exact, or near through their cluster) keep their first row in file
//! order, so list files by priority (train first: a test row that copies a training row is the
//! one removed); then the first file (the training set) may be rebalanced.

use std::collections::BTreeMap;

use serde::Serialize;
use tokenizers::Tokenizer;

use super::inspect::{Inspection, RowId};
use super::junk::{Junk, detect_junk};
use super::rows::{DataFile, Row};
use crate::error::{Error, Result};
use crate::util::SplitMix64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dedupe {
    /// Keep duplicates.
    None,
    /// Drop rows whose normalised text equals an earlier row's.
    Exact,
    /// Also drop rows in the near-duplicate cluster of an earlier row.
    Near,
}

/// What to do with duplicates that carry different labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Conflicts {
    /// Keep the rows whose label the cluster's majority has; drop all on a tie.
    Majority,
    /// Drop every row of the cluster.
    Drop,
    /// Leave them (deduplication then keeps the first row).
    Keep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rebalance {
    /// Repeat rows of the smaller classes (drawn with the seed) up to the largest class.
    Oversample,
    /// Drop rows of the larger classes (drawn with the seed) down to the smallest class.
    Undersample,
}

#[derive(Clone, Debug, Serialize)]
pub struct CleanConfig {
    pub dedupe: Dedupe,
    pub drop_junk: bool,
    /// Rows whose trimmed text has fewer characters go (0 keeps all).
    pub min_chars: usize,
    /// Rows with more tokens go (needs a tokenizer).
    pub max_tokens: Option<usize>,
    pub conflicts: Conflicts,
    pub rebalance: Option<Rebalance>,
    pub seed: u64,
}

/// One removed row, with its reason and, for a duplicate, the row kept in its place.
#[derive(Clone, Debug, Serialize)]
pub struct Removed {
    pub file: String,
    pub line: usize,
    pub reason: String,
    pub kept: Option<String>,
    pub label: Option<String>,
    pub text: String,
}

pub struct Cleaned {
    pub files: Vec<DataFile>,
    pub removed: Vec<Removed>,
    /// Rows added by oversampling, per label.
    pub added: BTreeMap<String, usize>,
}

pub fn clean(
    files: &[DataFile],
    inspection: &Inspection,
    cfg: &CleanConfig,
    tokenizer: Option<&Tokenizer>,
) -> Result<Cleaned> {
    if cfg.max_tokens.is_some() && tokenizer.is_none() {
        return Err(Error::invalid("--max-tokens", "needs the model's tokenizer (--model)"));
    }
    let ids = &inspection.rows;
    let row = |k: usize| &files[ids[k].file].rows[ids[k].row];
    let place = |id: &RowId| format!("{}:{}", files[id.file].name(), id.line);
    // Why each row (by index into `ids`) goes; the first reason found stands.
    let mut reason: Vec<Option<(String, Option<String>)>> = vec![None; ids.len()];

    for k in 0..ids.len() {
        let text = &row(k).text;
        let why = match detect_junk(text) {
            Some(Junk::Empty) => Some("empty text".to_string()),
            Some(j) if cfg.drop_junk => Some(format!("junk: {}", j.name())),
            _ if text.trim().chars().count() < cfg.min_chars => {
                Some(format!("shorter than {} characters", cfg.min_chars))
            }
            _ => match (cfg.max_tokens, tokenizer) {
                (Some(max), Some(tok)) => {
                    let n = tok
                        .encode(text.as_str(), true)
                        .map_err(|e| Error::invalid("tokenize", format!("{}: {e}", place(&ids[k]))))?
                        .len();
                    (n > max).then(|| format!("{n} tokens, more than {max}"))
                }
                _ => None,
            },
        };
        reason[k] = why.map(|w| (w, None));
    }

    // Clusters of duplicates, members in file order.
    let mut clusters: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (k, &c) in inspection.cluster.iter().enumerate() {
        clusters.entry(c).or_default().push(k);
    }
    for members in clusters.values().filter(|m| m.len() > 1) {
        let alive: Vec<usize> = members.iter().copied().filter(|&k| reason[k].is_none()).collect();
        // Label conflicts first, so deduplication keeps a row with the agreed label.
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for &k in &alive {
            if let Some(l) = row(k).label.as_deref() {
                *votes.entry(l).or_insert(0) += 1;
            }
        }
        if votes.len() > 1 && cfg.conflicts != Conflicts::Keep {
            let listed = votes.iter().map(|(l, n)| format!("{l} ×{n}")).collect::<Vec<_>>().join(", ");
            let top = votes.values().copied().max().unwrap_or(0);
            let winners: Vec<&str> = votes.iter().filter(|(_, n)| **n == top).map(|(l, _)| *l).collect();
            let majority = (cfg.conflicts == Conflicts::Majority && winners.len() == 1).then(|| winners[0].to_string());
            for &k in &alive {
                if majority.as_deref().is_none_or(|m| row(k).label.as_deref() != Some(m)) {
                    let why = match &majority {
                        Some(m) => format!("label conflict: duplicates say {listed}; the majority is {m}"),
                        None => format!("label conflict: duplicates say {listed}"),
                    };
                    reason[k] = Some((why, None));
                }
            }
        }
        if cfg.dedupe == Dedupe::None {
            continue;
        }
        let mut kept: Vec<usize> = Vec::new();
        let alive: Vec<usize> = members.iter().copied().filter(|&k| reason[k].is_none()).collect();
        for k in alive {
            // The kept row this one duplicates: exactly (same normalised text), or nearly.
            let same = kept.iter().copied().find(|&j| inspection.exact_of[j] == inspection.exact_of[k]);
            match (same, kept.first().copied()) {
                (Some(j), _) => reason[k] = Some(("exact duplicate".into(), Some(place(&ids[j])))),
                (None, Some(j)) if cfg.dedupe == Dedupe::Near => {
                    reason[k] = Some(("near duplicate".into(), Some(place(&ids[j]))));
                }
                _ => kept.push(k),
            }
        }
    }

    let mut removed = Vec::new();
    let mut kept_rows: Vec<Vec<Row>> = files.iter().map(|_| Vec::new()).collect();
    for (k, id) in ids.iter().enumerate() {
        let r = row(k);
        match &reason[k] {
            Some((why, kept)) => removed.push(Removed {
                file: files[id.file].name(),
                line: id.line,
                reason: why.clone(),
                kept: kept.clone(),
                label: r.label.clone(),
                text: r.text.clone(),
            }),
            None => kept_rows[id.file].push(r.clone()),
        }
    }

    let mut added = BTreeMap::new();
    if let (Some(how), Some(first)) = (cfg.rebalance, kept_rows.first_mut()) {
        let name = files[0].name();
        rebalance(first, how, cfg.seed, &name, &mut removed, &mut added)?;
    }
    let files = files.iter().zip(kept_rows).map(|(f, rows)| f.with_rows(rows)).collect();
    Ok(Cleaned { files, removed, added })
}

fn rebalance(
    rows: &mut Vec<Row>,
    how: Rebalance,
    seed: u64,
    file: &str,
    removed: &mut Vec<Removed>,
    added: &mut BTreeMap<String, usize>,
) -> Result<()> {
    let mut by_label: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        let Some(l) = &r.label else {
            return Err(Error::invalid(
                "--rebalance",
                format!("{file} line {}: rebalancing needs a label on every row", r.line),
            ));
        };
        by_label.entry(l.clone()).or_default().push(i);
    }
    if by_label.len() < 2 {
        return Ok(());
    }
    let mut rng = SplitMix64::new(seed);
    match how {
        Rebalance::Oversample => {
            let target = by_label.values().map(Vec::len).max().unwrap_or(0);
            for (label, members) in &by_label {
                let extra = target - members.len();
                for _ in 0..extra {
                    let copy = rows[members[rng.below(members.len())]].clone();
                    rows.push(copy);
                }
                if extra > 0 {
                    added.insert(label.clone(), extra);
                }
            }
        }
        Rebalance::Undersample => {
            let target = by_label.values().map(Vec::len).min().unwrap_or(0);
            let mut drop = vec![false; rows.len()];
            for (label, members) in &mut by_label {
                rng.shuffle(members);
                for &i in &members[target..] {
                    drop[i] = true;
                    removed.push(Removed {
                        file: file.to_string(),
                        line: rows[i].line,
                        reason: format!("undersampled: {label} cut to {target} rows"),
                        kept: None,
                        label: Some(label.clone()),
                        text: rows[i].text.clone(),
                    });
                }
            }
            let mut i = 0;
            rows.retain(|_| {
                i += 1;
                !drop[i - 1]
            });
        }
    }
    Ok(())
}
