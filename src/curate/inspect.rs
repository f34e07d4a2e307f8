//! `kiln data inspect`: what is in one or more data files, and what is wrong with them. Counts and
//! label balance per file; token lengths; empty texts and junk; exact duplicates (after
//! normalisation) and near duplicates (MinHash + LSH); duplicate clusters whose labels disagree;
//! and leakage, duplicates that cross files (train/valid/test) or groups (e.g. corpus folders).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tokenizers::Tokenizer;

use super::cluster::clusters;
use super::junk::{Junk, detect_junk};
use super::minhash::{NearDupConfig, NearPair, near_duplicate_pairs};
use super::normalize::normalize;
use super::rows::DataFile;
use crate::error::{Error, Result};

/// A row: its file (index into the inspected files) and row index, and its line for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RowId {
    pub file: usize,
    pub row: usize,
    pub line: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct LengthStats {
    pub min: usize,
    pub median: usize,
    pub p95: usize,
    pub max: usize,
    pub mean: f64,
    /// Rows longer than the model's maximum (truncated in training).
    pub over_max: usize,
    pub max_len: usize,
    /// `(from, to, count)`: tokens in `[from, to)`, bins doubling from 16.
    pub histogram: Vec<(usize, usize, usize)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    pub name: String,
    pub rows: usize,
    /// Rows per label (unlabelled rows are not counted).
    pub labels: BTreeMap<String, usize>,
    pub unlabelled: usize,
    /// Largest label count over the smallest (None with fewer than two labels).
    pub imbalance_ratio: Option<f64>,
    /// Empty or whitespace-only texts.
    pub empty: Vec<RowId>,
    pub junk: Vec<(RowId, Junk)>,
    pub token_lengths: Option<LengthStats>,
}

/// Two distinct texts that are near duplicates.
#[derive(Clone, Debug, Serialize)]
pub struct DuplicatePair {
    pub a: RowId,
    pub b: RowId,
    /// Jaccard similarity of their shingle sets.
    pub jaccard: f64,
    pub exact: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub files: Vec<FileReport>,
    pub near: NearDupConfig,
    /// Groups of rows with the same normalised text (two or more rows).
    pub exact_duplicates: Vec<Vec<RowId>>,
    /// Near-duplicate pairs of distinct texts (one row stands for each exact group).
    pub near_duplicates: Vec<DuplicatePair>,
    /// Duplicate clusters (exact and near, transitively) whose rows carry more than one label.
    pub label_conflicts: Vec<Vec<RowId>>,
    /// Rows duplicating (exactly or nearly, through their cluster) a row of an earlier file.
    pub file_leaks: Vec<Leak>,
    /// Rows duplicating a row of another group (the `group` field) that comes before them.
    pub group_leaks: Vec<Leak>,
    /// Every row, files in order.
    #[serde(skip)]
    pub rows: Vec<RowId>,
    /// The exact-duplicate group of each row of `rows`: the index of its group's first row, or
    /// its own index when no other row has its normalised text.
    #[serde(skip)]
    pub exact_of: Vec<usize>,
    /// The duplicate cluster of each row of `rows`: the index (into `rows`) of its first member.
    #[serde(skip)]
    pub cluster: Vec<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Leak {
    pub row: RowId,
    /// The earlier row it duplicates.
    pub with: RowId,
    /// Whether the two are the same text after normalisation.
    pub exact: bool,
}

impl Inspection {
    /// Rows that are a copy of an earlier row (exact groups count all but their first).
    pub fn redundant_exact(&self) -> usize {
        self.exact_duplicates.iter().map(|g| g.len() - 1).sum()
    }
}

/// Inspects `files` together: duplicates and leaks are found across all of them.
pub fn inspect(files: &[DataFile], near: &NearDupConfig, tokens: Option<(&Tokenizer, usize)>) -> Result<Inspection> {
    let ids: Vec<RowId> = files
        .iter()
        .enumerate()
        .flat_map(|(f, file)| file.rows.iter().enumerate().map(move |(r, x)| RowId { file: f, row: r, line: x.line }))
        .collect();
    let row = |id: &RowId| &files[id.file].rows[id.row];
    let mut reports = Vec::new();
    for (f, file) in files.iter().enumerate() {
        reports.push(file_report(f, file, tokens)?);
    }

    // Exact duplicates: rows with the same normalised text. Empty texts are findings of their own.
    let normalized: Vec<String> = ids.iter().map(|id| normalize(&row(id).text)).collect();
    let mut by_text: HashMap<&str, Vec<usize>> = HashMap::new();
    for (k, text) in normalized.iter().enumerate() {
        if !text.is_empty() {
            by_text.entry(text.as_str()).or_default().push(k);
        }
    }
    let mut exact_groups: Vec<Vec<usize>> = by_text.into_values().filter(|g| g.len() > 1).collect();
    exact_groups.sort();

    // Near duplicates among distinct texts: one representative per exact group.
    let mut representative: Vec<usize> = (0..ids.len()).collect();
    for g in &exact_groups {
        for &k in g {
            representative[k] = g[0];
        }
    }
    let distinct: Vec<usize> =
        (0..ids.len()).filter(|&k| representative[k] == k && !normalized[k].is_empty()).collect();
    let texts: Vec<&str> = distinct.iter().map(|&k| row(&ids[k]).text.as_str()).collect();
    let near_pairs: Vec<NearPair> = near_duplicate_pairs(&texts, near)?
        .into_iter()
        .map(|p| NearPair { a: distinct[p.a], b: distinct[p.b], jaccard: p.jaccard })
        .collect();

    let near_duplicates: Vec<DuplicatePair> = near_pairs
        .iter()
        .map(|p| DuplicatePair { a: ids[p.a], b: ids[p.b], jaccard: p.jaccard, exact: false })
        .collect();

    // Clusters over exact and near links (transitively): what a group-aware split keeps together.
    let mut links: Vec<NearPair> = near_pairs.clone();
    for g in &exact_groups {
        links.extend(g[1..].iter().map(|&k| NearPair { a: g[0], b: k, jaccard: 1.0 }));
    }
    let cluster = clusters(ids.len(), &links);
    let mut by_cluster: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (k, &c) in cluster.iter().enumerate() {
        by_cluster.entry(c).or_default().push(k);
    }
    let by_cluster: Vec<Vec<usize>> = by_cluster.into_values().filter(|m| m.len() > 1).collect();
    let label_conflicts: Vec<Vec<RowId>> = by_cluster
        .iter()
        .filter(|members| {
            let mut labels: Vec<&str> = members.iter().filter_map(|&k| row(&ids[k]).label.as_deref()).collect();
            labels.sort();
            labels.dedup();
            labels.len() > 1
        })
        .map(|members| members.iter().map(|&k| ids[k]).collect())
        .collect();

    // Leaks: a row whose cluster holds a row of an earlier file (or of another group, earlier in
    // the cluster), so each copy after the first counts once.
    let mut file_leaks = Vec::new();
    let mut group_leaks = Vec::new();
    for members in &by_cluster {
        for (i, &k) in members.iter().enumerate() {
            let exact_with = |j: usize| representative[j] == representative[k];
            if let Some(&j) = members.iter().find(|&&j| ids[j].file < ids[k].file) {
                file_leaks.push(Leak { row: ids[k], with: ids[j], exact: exact_with(j) });
            }
            let group = row(&ids[k]).group.as_deref();
            if let Some(&j) = members[..i].iter().find(|&&j| group.is_some() && row(&ids[j]).group.as_deref() != group)
            {
                group_leaks.push(Leak { row: ids[k], with: ids[j], exact: exact_with(j) });
            }
        }
    }

    Ok(Inspection {
        files: reports,
        near: near.clone(),
        exact_duplicates: exact_groups.iter().map(|g| g.iter().map(|&k| ids[k]).collect()).collect(),
        near_duplicates,
        label_conflicts,
        file_leaks,
        group_leaks,
        rows: ids,
        exact_of: representative,
        cluster,
    })
}

fn file_report(f: usize, file: &DataFile, tokens: Option<(&Tokenizer, usize)>) -> Result<FileReport> {
    let mut labels = BTreeMap::new();
    let (mut unlabelled, mut empty, mut junk) = (0, Vec::new(), Vec::new());
    for (r, row) in file.rows.iter().enumerate() {
        let id = RowId { file: f, row: r, line: row.line };
        match &row.label {
            Some(l) => *labels.entry(l.clone()).or_insert(0) += 1,
            None => unlabelled += 1,
        }
        match detect_junk(&row.text) {
            Some(Junk::Empty) => empty.push(id),
            Some(j) => junk.push((id, j)),
            None => {}
        }
    }
    let counts: Vec<usize> = labels.values().copied().collect();
    let imbalance_ratio = match (counts.iter().max(), counts.iter().min()) {
        (Some(&max), Some(&min)) if counts.len() > 1 => Some(max as f64 / min as f64),
        _ => None,
    };
    let token_lengths = match tokens {
        Some((tok, max_len)) => Some(length_stats(file, tok, max_len)?),
        None => None,
    };
    Ok(FileReport {
        name: file.name(),
        rows: file.rows.len(),
        labels,
        unlabelled,
        imbalance_ratio,
        empty,
        junk,
        token_lengths,
    })
}

/// Token counts of every row (special tokens included, no truncation).
fn length_stats(file: &DataFile, tok: &Tokenizer, max_len: usize) -> Result<LengthStats> {
    let mut lengths = Vec::with_capacity(file.rows.len());
    for row in &file.rows {
        let enc = tok
            .encode(row.text.as_str(), true)
            .map_err(|e| Error::invalid("tokenize", format!("{} line {}: {e}", file.path.display(), row.line)))?;
        lengths.push(enc.len());
    }
    let mut sorted = lengths.clone();
    sorted.sort_unstable();
    let at = |q: f64| sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);
    let max = sorted.last().copied().unwrap_or(0);
    let mut histogram = Vec::new();
    let (mut from, mut to) = (0, 16);
    loop {
        let count = lengths.iter().filter(|&&n| n >= from && n < to).count();
        histogram.push((from, to, count));
        if to > max {
            break;
        }
        (from, to) = (to, to * 2);
    }
    Ok(LengthStats {
        min: sorted.first().copied().unwrap_or(0),
        median: at(0.5),
        p95: at(0.95),
        max,
        mean: lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64,
        over_max: lengths.iter().filter(|&&n| n > max_len).count(),
        max_len,
        histogram,
    })
}
