//! Data curation: finding texts that should not be trained on twice, or at all, and the
//! `kiln data inspect`, `clean` and `split` built on it.
//!
//! - [`normalize`]: the normal form for exact duplicates (case and whitespace folded) and its
//!   stable 64-bit [`content_hash`].
//! - [`exact`]: [`exact_duplicates`], each text's first copy by normal form.
//! - [`minhash`]: near duplicates by MinHash signatures over word shingles, LSH candidates and
//!   an exact Jaccard check: [`near_duplicate_pairs`], [`signatures`], [`jaccard`].
//! - [`lsh`]: how bands × rows are chosen ([`lsh_params`]) and candidates bucketed.
//! - [`cluster`]: [`clusters`] groups pairs into connected components (union-find).
//! - [`junk`]: [`detect_junk`] flags empty, binary, base64, markup-only and mojibake texts.
//! - [`synthetic`]: a seeded corpus with planted near duplicates for benchmarks.
//! - [`rows`]: the rows of jsonl/csv files as read (line numbers, original form) and written back.
//! - [`inspect`]: every finding over a set of files: balance, lengths, junk, duplicates, label
//!   conflicts, leakage across files and groups; [`report`] renders it.
//! - [`clean`] and [`split`]: new files without the findings, and group-aware splits.
//! - [`suspicious`]: mislabelled rows by out-of-fold head fits on encoder features.
//! - [`image_dups`]: the same findings for images: exact and near duplicates (dHash), label
//!   conflicts and leakage across lists and groups.
//!
//! Everything here runs on the CPU, is deterministic for a given input and seed, and spreads the
//! per-text work over all cores with scoped std threads.
//!
//! ```
//! use kiln::curate::{clusters, near_duplicate_pairs, NearDupConfig};
//! let texts = ["The cat sat on the mat today", "the  CAT sat on the mat today", "Something else"];
//! let pairs = near_duplicate_pairs(&texts, &NearDupConfig::default()).unwrap();
//! assert_eq!((pairs[0].a, pairs[0].b, pairs[0].jaccard), (0, 1, 1.0));
//! assert_eq!(clusters(texts.len(), &pairs), vec![0, 0, 2]);
//! ```

pub mod clean;
pub mod cluster;
pub mod exact;
mod hash;
pub mod image_dups;
pub mod inspect;
pub mod junk;
pub mod lsh;
pub mod minhash;
pub mod normalize;
mod parallel;
pub mod report;
pub mod rows;
pub mod split;
pub mod suspicious;
pub mod synthetic;

pub use cluster::clusters;
pub use exact::exact_duplicates;
pub use junk::{Junk, detect_junk};
pub use lsh::lsh_params;
pub use minhash::{MAX_NUM_PERM, NearDupConfig, NearPair, jaccard, near_duplicate_pairs, signatures};
pub use normalize::{content_hash, normalize};
pub use synthetic::{SyntheticCorpus, synthetic_corpus};
