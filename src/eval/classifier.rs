//! `kiln eval` on a sequence classifier: probabilities of texts, the scores, the swapped and
//! edge-case inputs, and the timings. The CLI assembles the report from these.

use std::time::Instant;

use tokenizers::Tokenizer;

use super::calibration::{expected_calibration_error, softmax};
use super::counterfactual::{Outcome, Variant};
use super::edge_cases::{EdgeCase, EdgeResult};
use super::latency::{Percentiles, ThroughputPoint};
use super::report::ClassificationScores;
use crate::data::encode::{Encoded, encode_texts, make_input};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::metrics::Metrics;
use crate::models::classifier::SequenceClassifier;
use crate::train::classify::predict;

pub struct ClassifierEval<'g> {
    pub gpu: &'g Gpu,
    pub model: SequenceClassifier,
    /// Truncates to `max_len` tokens.
    pub tokenizer: Tokenizer,
    pub max_len: usize,
    pub pad: u32,
    pub batch: usize,
}

/// Each example's gold class, predicted class and class probabilities.
pub struct Scored {
    pub gold: Vec<usize>,
    pub pred: Vec<usize>,
    pub probs: Vec<Vec<f64>>,
}

impl Scored {
    pub fn correct(&self) -> Vec<f64> {
        self.gold.iter().zip(&self.pred).map(|(g, p)| (g == p) as u8 as f64).collect()
    }
}

/// Per-class scores, the confusion matrix, the mean loss of the gold labels and the expected
/// calibration error of scored examples (text or image classifiers alike).
pub fn classification_scores(labels: &[String], s: &Scored) -> Result<ClassificationScores> {
    let metrics = Metrics::compute(&s.gold, &s.pred, labels.len())?;
    let loss =
        s.gold.iter().zip(&s.probs).map(|(&g, p)| -p[g].max(1e-300).ln()).sum::<f64>() / s.gold.len().max(1) as f64;
    let confidence: Vec<f64> = s.probs.iter().zip(&s.pred).map(|(p, &c)| p[c]).collect();
    let correct: Vec<bool> = s.gold.iter().zip(&s.pred).map(|(g, p)| g == p).collect();
    Ok(ClassificationScores {
        labels: labels.to_vec(),
        metrics,
        loss,
        calibration: expected_calibration_error(&confidence, &correct, 15),
    })
}

pub fn argmax(p: &[f64]) -> usize {
    p.iter().enumerate().fold(0, |best, (i, &x)| if x > p[best] { i } else { best })
}

impl ClassifierEval<'_> {
    pub fn max_positions(&self) -> usize {
        self.model.body.config.max_position_embeddings
    }

    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Encoded>> {
        encode_texts(&self.tokenizer, texts, self.max_len)
    }

    /// Class probabilities of each encoded text.
    pub fn probabilities(&self, items: &[Encoded]) -> Result<Vec<Vec<f64>>> {
        let p = predict(self.gpu, &self.model, items, None, self.batch, self.pad)?;
        Ok(p.logits.chunks(self.model.num_labels()).map(softmax).collect())
    }

    pub fn score(&self, items: &[Encoded], gold: Vec<usize>) -> Result<Scored> {
        let probs = self.probabilities(items)?;
        let pred = probs.iter().map(|p| argmax(p)).collect();
        Ok(Scored { gold, pred, probs })
    }

    pub fn scores(&self, s: &Scored) -> Result<ClassificationScores> {
        classification_scores(&self.model.labels, s)
    }

    /// Bytes of `text` the model reads: up to the end of its last token after truncation.
    pub fn visible_bytes(&self, text: &str) -> usize {
        match self.tokenizer.encode(text, true) {
            Ok(enc) => enc.get_offsets().iter().map(|o| o.1).max().unwrap_or(0).min(text.len()),
            Err(_) => text.len(),
        }
    }

    /// Flip = the predicted class changes; change = the new probability of the class predicted
    /// before the swap, minus the old.
    pub fn counterfactuals(&self, texts: &[&str], variants: &[Variant]) -> Result<Vec<Outcome>> {
        let mut needed: Vec<usize> = variants.iter().map(|v| v.example).collect();
        needed.sort();
        needed.dedup();
        let originals = self.probabilities(&self.encode(&needed.iter().map(|&i| texts[i]).collect::<Vec<_>>())?)?;
        let swapped =
            self.probabilities(&self.encode(&variants.iter().map(|v| v.text.as_str()).collect::<Vec<_>>())?)?;
        let labels = &self.model.labels;
        Ok(variants
            .iter()
            .zip(swapped)
            .map(|(v, after)| {
                let before = &originals[needed.binary_search(&v.example).expect("scored")];
                let (b, a) = (argmax(before), argmax(&after));
                Outcome {
                    flipped: a != b,
                    change: after[b] - before[b],
                    before: format!("{} {:.3}", labels[b], before[b]),
                    after: format!("{} {:.3}", labels[a], after[a]),
                }
            })
            .collect())
    }

    /// Each case's prediction, or the error it gave; the input's token count before and after
    /// truncation.
    pub fn edge_case(&self, case: &EdgeCase) -> EdgeResult {
        let mut r = EdgeResult::new(case);
        let mut full = self.tokenizer.clone();
        let _ = full.with_truncation(None);
        let before = full.encode(case.text.as_str(), true).map(|e| e.get_ids().len());
        let result = self.encode(&[case.text.as_str()]).and_then(|items| {
            let n = items[0].ids.len();
            Ok((n, self.probabilities(&items)?.remove(0)))
        });
        match result {
            Ok((n, p)) => {
                let c = argmax(&p);
                r.tokens = Some(n);
                r.output = Some(self.model.labels[c].clone());
                r.probability = Some(p[c]);
                if let Ok(b) = before {
                    r.tokens_before_truncation = Some(b);
                    if b > n {
                        r.note = Some(format!(
                            "truncated from {b} to {n} tokens (--max-len {}; the model's maximum is {} positions)",
                            self.max_len,
                            self.max_positions()
                        ));
                    }
                }
                if case.text.trim().is_empty() {
                    r.note = Some("no text: the model sees only its special tokens".into());
                }
            }
            Err(e) => r.error = Some(e.to_string()),
        }
        r
    }

    /// One text at a time, end to end (tokenize, forward, read back), cycling through `texts`:
    /// `warmup` untimed runs, then `runs` timed ones.
    pub fn single_latency(&self, texts: &[&str], warmup: usize, runs: usize, peak: &mut u64) -> Result<Percentiles> {
        let mut times = Vec::with_capacity(runs);
        for i in 0..warmup + runs {
            let text = texts[i % texts.len()];
            let t0 = Instant::now();
            let items = self.encode(&[text])?;
            let refs: Vec<&Encoded> = items.iter().collect();
            self.model.predict(self.gpu, &make_input(self.gpu, &refs, self.pad)?)?;
            if i >= warmup {
                times.push(t0.elapsed().as_secs_f64());
            }
            *peak = (*peak).max(self.gpu.allocated_bytes());
        }
        Ok(Percentiles::of(&times))
    }

    /// Examples per second for each batch size: `texts` cycled to fill the batch, one untimed
    /// batch when `warmup`, then `batches` timed ones.
    pub fn throughput(
        &self,
        texts: &[&str],
        sizes: &[usize],
        batches: usize,
        warmup: bool,
        peak: &mut u64,
    ) -> Result<Vec<ThroughputPoint>> {
        let items = self.encode(texts)?;
        let mut out = Vec::new();
        for &b in sizes {
            let batch: Vec<&Encoded> = (0..b).map(|i| &items[i % items.len()]).collect();
            let tokens: usize = batch.iter().map(|e| e.ids.len()).sum();
            let point = ThroughputPoint::measure(b, tokens, batches, warmup, || {
                self.model.predict(self.gpu, &make_input(self.gpu, &batch, self.pad)?)?;
                Ok(())
            })?;
            *peak = (*peak).max(self.gpu.allocated_bytes());
            out.push(point);
        }
        Ok(out)
    }
}
