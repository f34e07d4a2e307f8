//! `kiln eval` of a sequence classifier on labelled texts: the scores (per class, confusion,
//! calibration) and what the shared parts need (swaps, edge cases, timings).

use std::path::{Path, PathBuf};

use super::classifier::{ClassifierEval, Scored};
use super::counterfactual::{self, PairIndex, TermPair};
use super::edge_cases::{self, EdgeCase, EdgeResult};
use super::family::{Family, Head, Parts, Scoring, classifier_group_rows, limit, run_settings, term_pairs};
use super::report::{CounterfactualReport, GroupReport, LatencyReport};
use super::settings::EvalSettings;
use super::slices::{SliceMetric, read_column};
use crate::data::classify::{self, LabelSet};
use crate::data::encode::{encoder_tokenizer, pad_id};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::models::classifier::{Pooling, SequenceClassifier};

/// A classifier scored on labelled texts.
pub struct ClassifierFamily<'a> {
    ev: ClassifierEval<'a>,
    examples: Vec<classify::Example>,
    scored: Scored,
    max_positions: usize,
}

impl ClassifierFamily<'_> {
    fn texts(&self) -> Vec<&str> {
        self.examples.iter().map(|e| e.text.as_str()).collect()
    }
}

/// Loads the classifier and scores the test set.
pub fn score_classifier<'a>(
    s: &EvalSettings,
    gpu: &'a Gpu,
    data: &Path,
    base: PathBuf,
    adapter: Option<PathBuf>,
    (labels, pooling): (Vec<String>, Pooling),
    run: Option<PathBuf>,
) -> Result<(ClassifierFamily<'a>, Scoring)> {
    let mut parts = Parts::new();
    let examples = limit(classify::read_examples(data)?, s.limit);
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let pairs = if s.no_counterfactual { None } else { Some(term_pairs(s, &texts)?) };
    let label_set = LabelSet { names: labels.clone() };
    let gold = label_set.ids(&examples, &data.display().to_string())?;
    let groups = match &s.group_by {
        Some(col) => limit(read_column(data, col)?, s.limit),
        None => Vec::new(),
    };
    let model = parts.run("load", || {
        let mut m = SequenceClassifier::load(gpu, &base, labels.clone(), pooling, s.seed)?;
        if let Some(a) = &adapter {
            m.load_adapter(gpu, a)?;
        }
        Ok(m)
    })?;
    let max_positions = model.body.config.max_position_embeddings;
    let max_len = s
        .max_len
        .or_else(|| run_settings(&run).and_then(|r| r["max_len"].as_u64()).map(|x| x as usize))
        .unwrap_or(128)
        .min(max_positions);
    let tokenizer = encoder_tokenizer(&base, max_len)?;
    let pad = pad_id(&tokenizer);
    let ev = ClassifierEval { gpu, model, tokenizer, max_len, pad, batch: s.batch_size };
    let mut peak = gpu.allocated_bytes();

    let items = ev.encode(&texts)?;
    let truncated = items.iter().filter(|e| e.ids.len() >= max_len).count();
    let scored: Scored = parts.run("scores", || ev.score(&items, gold.clone()))?;
    peak = peak.max(gpu.allocated_bytes());
    let mut report = Head {
        task: "classification",
        model: &base,
        adapter: adapter.as_deref(),
        data,
        examples: texts.len(),
        max_len,
        max_positions,
        truncated,
    }
    .report(gpu);
    report.classification = Some(ev.scores(&scored)?);
    let family = ClassifierFamily { ev, examples, scored, max_positions };
    let group_column = s.group_by.clone();
    Ok((family, Scoring { parts, peak, pairs, group_column, groups, report }))
}

impl Family for ClassifierFamily<'_> {
    fn slice_metrics(&self) -> Vec<SliceMetric> {
        let n = self.examples.len();
        vec![SliceMetric {
            name: "accuracy".into(),
            num: self.scored.correct(),
            den: vec![1.0; n],
            higher_is_better: true,
            gap: true,
        }]
    }

    fn complete_group_rows(&self, report: &mut GroupReport, groups: &[Option<String>]) -> Result<()> {
        classifier_group_rows(report, groups, &self.scored.gold, &self.scored.pred)
    }

    fn counterfactual(&self, pairs: &[TermPair], source: &str, s: &EvalSettings) -> Result<CounterfactualReport> {
        let texts = self.texts();
        let index = PairIndex::new(pairs);
        let visible = |t: &str| self.ev.visible_bytes(t);
        let (variants, with_terms) = counterfactual::variants(&texts, &visible, &index, s.max_swaps);
        let outcomes = self.ev.counterfactuals(&texts, &variants)?;
        let rule = "A flip is a change of the predicted class; the change is the new probability of the class predicted before the swap minus the old. Terms past the tokens the model reads are not counted.".to_string();
        Ok(counterfactual::summarize(&index, &variants, &outcomes, &texts, source.to_string(), rule, with_terms, 5))
    }

    fn edge_cases(&self, user: &[EdgeCase]) -> Vec<EdgeResult> {
        let mut cases = edge_cases::builtin(self.max_positions + 64);
        cases.extend_from_slice(user);
        cases.iter().map(|c| self.ev.edge_case(c)).collect()
    }

    fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    fn latency(&self, s: &EvalSettings, peak: &mut u64) -> Result<LatencyReport> {
        let texts = self.texts();
        let single = self.ev.single_latency(&texts, s.warmup, s.latency_runs, peak)?;
        let throughput = self.ev.throughput(&texts, &s.batch_sizes, s.throughput_batches, s.warmup > 0, peak)?;
        Ok(LatencyReport { warmup_runs: s.warmup, single: Some(single), throughput, generation: None })
    }
}
