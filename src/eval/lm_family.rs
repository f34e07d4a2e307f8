//! `kiln eval` of a causal language model on records: loss and perplexity, greedy completions
//! scored against references, and what the shared parts need (swaps, edge cases, timings).

use std::path::{Path, PathBuf};

use super::counterfactual::{self, PairIndex, TermPair};
use super::edge_cases::{self, EdgeCase, EdgeResult};
use super::family::{Family, Head, Parts, Scoring, limit, run_settings, term_pairs};
use super::language_model::{LmEval, edit_distance};
use super::report::{CounterfactualReport, GenerationScores, GroupReport, LatencyReport, LmScores, Sample};
use super::settings::EvalSettings;
use super::slices::{SliceMetric, read_column};
use crate::data::cmudict::PronunciationScore;
use crate::data::lm::{self, Record};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::models::load::load_lm;

/// A causal LM scored on records: loss and perplexity, greedy completions.
pub struct LmFamily<'a> {
    ev: LmEval<'a>,
    records: Vec<Record>,
    examples: Vec<lm::Example>,
    /// Each record's summed loss and its number of targets.
    losses: Vec<(f64, usize)>,
    /// Each record's exact match (NaN: no reference, or not generated) and its completion.
    exact: Vec<f64>,
    completions: Vec<Option<String>>,
    /// Whether completions were scored against references (exact match is then a group metric).
    generated: bool,
    max_len: usize,
}

/// Loads the language model and scores the test set: loss, and greedy completions.
pub fn score_lm<'a>(
    s: &EvalSettings,
    gpu: &'a Gpu,
    data: &Path,
    path: PathBuf,
    adapter: Option<PathBuf>,
    run: Option<PathBuf>,
) -> Result<(LmFamily<'a>, Scoring)> {
    let mut parts = Parts::new();
    let records = limit(lm::read_jsonl(data)?, s.limit);
    let groups = match &s.group_by {
        Some(col) => limit(read_column(data, col)?, s.limit),
        None => Vec::new(),
    };
    let prompt_texts: Vec<&str> = records.iter().map(prompt_text).collect();
    let pairs = if s.no_counterfactual { None } else { Some(term_pairs(s, &prompt_texts)?) };
    let lm = parts.run("load", || {
        let mut lm = load_lm(gpu, &path)?;
        if let Some(a) = &adapter {
            lm.model.load_adapter(gpu, a)?;
        }
        Ok(lm)
    })?;
    let max_positions = lm.model.shape().max_positions;
    let max_len = s
        .max_len
        .or_else(|| run_settings(&run).and_then(|r| r["max_len"].as_u64()).map(|x| x as usize))
        .unwrap_or(256)
        .min(max_positions);
    let ev = LmEval { gpu, lm, max_len, gen_tokens: s.gen_tokens };
    let mut peak = gpu.allocated_bytes();

    let examples: Vec<lm::Example> = records.iter().map(|r| ev.tokenize(r)).collect::<Result<_>>()?;
    let truncated = examples.iter().filter(|e| e.truncated).count();
    let losses: Vec<(f64, usize)> =
        parts.run("loss", || examples.iter().map(|e| ev.loss(e)).collect::<Result<Vec<_>>>())?;
    peak = peak.max(gpu.allocated_bytes());
    let (sum, tokens) = losses.iter().fold((0.0, 0), |(s, n), &(a, b)| (s + a, n + b));
    let loss = if tokens > 0 { sum / tokens as f64 } else { f64::NAN };

    // Greedy completions of every prompt with a reference (and a few text continuations).
    let mut exact = vec![f64::NAN; records.len()];
    let mut completions: Vec<Option<String>> = vec![None; records.len()];
    let mut samples = Vec::new();
    let generation = if s.no_generate {
        None
    } else {
        parts.run("generation", || {
            let (mut score, mut chars, mut ref_chars, mut n) = (PronunciationScore::default(), 0usize, 0usize, 0usize);
            for (i, r) in records.iter().enumerate() {
                let (ids, reference, prompt) = ev.prompt(r)?;
                if reference.is_none() && samples.len() >= s.samples {
                    continue;
                }
                let c = ev.complete(&ids, s.gen_tokens, &ev.lm.stop)?;
                completions[i] = Some(c.text.clone());
                if let Some(reference) = &reference {
                    let reference = reference.trim();
                    score.add(&c.text, reference);
                    exact[i] = crate::data::cmudict::exact_match(&c.text, reference) as u8 as f64;
                    let (a, b): (Vec<char>, Vec<char>) = (c.text.chars().collect(), reference.chars().collect());
                    chars += edit_distance(&a, &b);
                    ref_chars += b.len();
                    n += 1;
                }
                if samples.len() < s.samples {
                    samples.push(Sample { prompt, reference, output: c.text });
                }
            }
            Ok((n > 0).then(|| GenerationScores {
                examples: n,
                max_new_tokens: s.gen_tokens,
                exact_match: score.exact_match_rate(),
                unit_error_rate: score.phoneme_error_rate(),
                char_error_rate: chars as f64 / ref_chars.max(1) as f64,
            }))
        })?
    };
    peak = peak.max(gpu.allocated_bytes());
    let mut report = Head {
        task: "language-model",
        model: &path,
        adapter: adapter.as_deref(),
        data,
        examples: records.len(),
        max_len,
        max_positions,
        truncated,
    }
    .report(gpu);
    let generated = generation.is_some();
    report.language_model = Some(LmScores { loss, perplexity: loss.exp(), tokens, generation, samples });
    let family = LmFamily { ev, records, examples, losses, exact, completions, generated, max_len };
    let group_column = s.group_by.clone();
    Ok((family, Scoring { parts, peak, pairs, group_column, groups, report }))
}

impl Family for LmFamily<'_> {
    fn slice_metrics(&self) -> Vec<SliceMetric> {
        let mut metrics = vec![SliceMetric {
            name: "loss".into(),
            num: self.losses.iter().map(|l| l.0).collect(),
            den: self.losses.iter().map(|l| l.1 as f64).collect(),
            higher_is_better: false,
            gap: true,
        }];
        if self.generated {
            // Records without a reference (texts) do not count towards exact match.
            metrics.push(SliceMetric {
                name: "exact_match".into(),
                num: self.exact.iter().map(|&x| if x.is_nan() { 0.0 } else { x }).collect(),
                den: self.exact.iter().map(|&x| if x.is_nan() { 0.0 } else { 1.0 }).collect(),
                higher_is_better: true,
                gap: true,
            });
        }
        metrics
    }

    fn complete_group_rows(&self, report: &mut GroupReport, _groups: &[Option<String>]) -> Result<()> {
        for row in &mut report.rows {
            let l = row.metrics["loss"];
            row.metrics.insert("perplexity".into(), l.exp());
        }
        Ok(())
    }

    fn counterfactual(&self, pairs: &[TermPair], source: &str, s: &EvalSettings) -> Result<CounterfactualReport> {
        // What the scores already computed: each record's completion (texts have none) and loss.
        let known: Vec<Option<(Option<String>, f64)>> = self
            .records
            .iter()
            .zip(&self.completions)
            .zip(&self.losses)
            .map(|((r, c), &(sum, n))| match (r, c) {
                (Record::Text(_), _) => Some((None, sum / n.max(1) as f64)),
                (_, Some(c)) => Some((Some(c.clone()), sum / n.max(1) as f64)),
                _ => None,
            })
            .collect();
        lm_counterfactual(&self.ev, &self.records, pairs, source, s, &known)
    }

    fn edge_cases(&self, user: &[EdgeCase]) -> Vec<EdgeResult> {
        let mut cases = edge_cases::builtin(self.max_len + 64);
        cases.extend_from_slice(user);
        cases.iter().map(|c| self.ev.edge_case(c)).collect()
    }

    fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    fn latency(&self, s: &EvalSettings, peak: &mut u64) -> Result<LatencyReport> {
        let ev = &self.ev;
        let single = ev.single_latency(&self.examples, s.warmup, s.latency_runs, peak)?;
        let prompts: Vec<Vec<u32>> = self.records.iter().take(8).map(|r| Ok(ev.prompt(r)?.0)).collect::<Result<_>>()?;
        let generation =
            if s.gen_tokens > 0 { Some(ev.generation_timing(&prompts, s.warmup, s.latency_runs, peak)?) } else { None };
        let throughput = ev.throughput(&self.examples, &s.batch_sizes, s.throughput_batches, s.warmup > 0, peak)?;
        Ok(LatencyReport { warmup_runs: s.warmup, single: Some(single), throughput, generation })
    }
}

/// Swaps in the part of each record the model is prompted with (a completion's prompt, a
/// text), within the first `--max-len` tokens.
fn lm_counterfactual(
    ev: &LmEval,
    records: &[Record],
    pairs: &[TermPair],
    source: &str,
    s: &EvalSettings,
    known: &[Option<(Option<String>, f64)>],
) -> Result<CounterfactualReport> {
    let index = PairIndex::new(pairs);
    let texts: Vec<&str> = records.iter().map(prompt_text).collect();
    let visible = |t: &str| -> usize {
        match ev.lm.tokenizer.encode(t, false) {
            Ok(enc) => enc.get_offsets().iter().take(ev.max_len).map(|o| o.1).max().unwrap_or(0).min(t.len()),
            Err(_) => t.len(),
        }
    };
    let (variants, with_terms) = counterfactual::variants(&texts, &visible, &index, s.max_swaps);
    let swap_of = |pair: usize, s: &str| index.swap(s, pair);
    let outcomes = ev.counterfactuals(records, &variants, &swap_of, known)?;
    let rule = format!(
        "A flip is a greedy completion (up to {} tokens) of the swapped prompt that differs from the original prompt's completion with the same swap applied to it, so a completion that follows the swap is no flip; text records have no completion and count only the change. The change is the swapped record's loss per token minus the original's (its reference completion swapped too), in nats.",
        s.gen_tokens
    );
    Ok(counterfactual::summarize(&index, &variants, &outcomes, &texts, source.to_string(), rule, with_terms, 5))
}

/// The text of a record that swaps apply to: a completion's prompt or a text. Chat records
/// are not swapped (each of their turns would need its own variant).
fn prompt_text(r: &Record) -> &str {
    match r {
        Record::Completion { prompt, .. } => prompt.as_str(),
        Record::Text(t) => t.as_str(),
        Record::Chat(_) => "",
    }
}
