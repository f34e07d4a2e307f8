//! `kiln eval` on a causal LM: the loss of each record, greedy completions of prompts scored
//! against their references, the swapped and edge-case prompts, and generation timings.

use std::time::Instant;

use super::counterfactual::{Outcome, Variant};
use super::edge_cases::{EdgeCase, EdgeResult};
use super::latency::{Percentiles, ThroughputPoint};
use super::report::GenerationTiming;
use crate::data::lm::{Example, Message, Record, Role, make_batches, tokenize};
use crate::error::{Error, Result};
use crate::generate::{Sampling, generate};
use crate::gpu::Gpu;
use crate::models::load::LoadedLm;
use crate::train::lm::eval_loss;

pub struct LmEval<'g> {
    pub gpu: &'g Gpu,
    pub lm: LoadedLm,
    /// Tokens per scored record and per prompt plus its completion.
    pub max_len: usize,
    /// New tokens per greedy completion.
    pub gen_tokens: usize,
}

/// A greedy completion and how long it took.
pub struct Completion {
    pub text: String,
    pub new_tokens: usize,
    pub ttft: f64,
    pub total: f64,
}

/// Levenshtein distance between two sequences.
pub fn edit_distance<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(x != y)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

impl LmEval<'_> {
    pub fn max_positions(&self) -> usize {
        self.lm.model.shape().max_positions
    }

    pub fn tokenize(&self, r: &Record) -> Result<Example> {
        tokenize(r, &self.lm.tokenizer, &self.lm.format, self.max_len)
    }

    /// The summed loss of an example's trained tokens and their count.
    pub fn loss(&self, ex: &Example) -> Result<(f64, usize)> {
        if ex.target_count() == 0 {
            return Ok((0.0, 0));
        }
        let (mean, n) = eval_loss(
            self.gpu,
            self.lm.model.as_ref(),
            &make_batches(std::slice::from_ref(ex), 1, self.lm.pad, None)?,
        )?;
        Ok((mean as f64 * n as f64, n))
    }

    /// The prompt the model completes, the reference completion, and the prompt as text: a
    /// completion record's prompt; a chat's turns before its last assistant message; a text's
    /// first half (at most 32 tokens), continued with no reference.
    pub fn prompt(&self, r: &Record) -> Result<(Vec<u32>, Option<String>, String)> {
        match r {
            Record::Completion { prompt, completion } => {
                Ok((self.lm.prompt_ids(prompt)?, Some(completion.clone()), prompt.clone()))
            }
            Record::Chat(messages) => {
                let last = messages.iter().rposition(|m| m.role == Role::Assistant).unwrap_or(messages.len());
                let shown = messages[..last].iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join(" / ");
                let text = self.lm.format.render_chat(&messages[..last], true)?;
                Ok((self.lm.chat_prompt_ids(&text)?, messages.get(last).map(|m| m.content.clone()), shown))
            }
            Record::Text(text) => {
                let ids = self.lm.encode_prompt(text)?;
                let keep = (ids.len() / 2).clamp(1, 32).min(ids.len());
                let shown = self
                    .lm
                    .tokenizer
                    .decode(&ids[..keep], true)
                    .map_err(|e| Error::invalid("decode", e.to_string()))?;
                Ok((ids[..keep].to_vec(), None, shown))
            }
        }
    }

    /// The greedy completion of `ids` (up to `max_new` tokens; `stop` ends it early).
    pub fn complete(&self, ids: &[u32], max_new: usize, stop: &[u32]) -> Result<Completion> {
        let t0 = Instant::now();
        let mut ttft = None;
        let mut out = generate(self.gpu, self.lm.model.as_ref(), ids, max_new, Sampling::greedy(), stop, &mut |_| {
            ttft.get_or_insert_with(|| t0.elapsed().as_secs_f64());
            Ok(())
        })?;
        let total = t0.elapsed().as_secs_f64();
        let new_tokens = out.len();
        if out.last().is_some_and(|t| stop.contains(t)) {
            out.pop();
        }
        let text = self.lm.tokenizer.decode(&out, true).map_err(|e| Error::invalid("decode", e.to_string()))?;
        Ok(Completion { text: text.trim().to_string(), new_tokens, ttft: ttft.unwrap_or(total), total })
    }

    /// A record with its prompt (or text) replaced.
    pub fn with_text(r: &Record, text: &str, swap: &dyn Fn(&str) -> String) -> Record {
        match r {
            Record::Completion { completion, .. } => {
                Record::Completion { prompt: text.to_string(), completion: swap(completion) }
            }
            Record::Text(_) => Record::Text(text.to_string()),
            Record::Chat(m) => Record::Chat(m.iter().map(|m| Message::new(m.role, swap(&m.content))).collect()),
        }
    }

    /// Flip = the greedy completion of the swapped prompt differs from the original's
    /// completion with the same swap applied (so "Mary ... her" → "John ... his" is no flip);
    /// change = the swapped record's loss per token minus the original's (its reference
    /// swapped too). Text records have no completion: only their loss change is measured.
    pub fn counterfactuals(
        &self,
        records: &[Record],
        variants: &[Variant],
        swap_of: &dyn Fn(usize, &str) -> String,
        known: &[Option<(Option<String>, f64)>],
    ) -> Result<Vec<Outcome>> {
        // Each original's completion and loss per token, from the scores when they have them.
        let mut cache: std::collections::HashMap<usize, (Option<String>, f64)> =
            known.iter().enumerate().filter_map(|(i, k)| Some((i, k.clone()?))).collect();
        let mut out = Vec::with_capacity(variants.len());
        for v in variants {
            let r = &records[v.example];
            if let std::collections::hash_map::Entry::Vacant(slot) = cache.entry(v.example) {
                let completion = match r {
                    Record::Text(_) => None,
                    _ => Some(self.complete(&self.prompt(r)?.0, self.gen_tokens, &self.lm.stop)?.text),
                };
                let (sum, n) = self.loss(&self.tokenize(r)?)?;
                slot.insert((completion, sum / n.max(1) as f64));
            }
            let (before, loss_before) = cache[&v.example].clone();
            let swap = |s: &str| swap_of(v.pair, s);
            let swapped = Self::with_text(r, &v.text, &swap);
            let (sum, n) = self.loss(&self.tokenize(&swapped)?)?;
            let change = sum / n.max(1) as f64 - loss_before;
            let outcome = match before {
                Some(before) => {
                    let after = self.complete(&self.prompt(&swapped)?.0, self.gen_tokens, &self.lm.stop)?.text;
                    let expected = swap(&before);
                    Outcome { flipped: after.trim() != expected.trim(), change, before: expected, after }
                }
                None => Outcome {
                    flipped: false,
                    change,
                    before: format!("loss {loss_before:.3}"),
                    after: format!("loss {:.3}", loss_before + change),
                },
            };
            out.push(outcome);
        }
        Ok(out)
    }

    /// The case as a prompt (a user turn with a chat template) and its greedy completion. A
    /// prompt that leaves no room for `gen_tokens` within `--max-len` is cut, and the note says so.
    pub fn edge_case(&self, case: &EdgeCase) -> EdgeResult {
        let mut r = EdgeResult::new(case);
        let result = (|| -> Result<()> {
            let mut ids = self.lm.prompt_ids(&case.text)?;
            r.tokens_before_truncation = Some(ids.len());
            let limit = self.max_len.min(self.max_positions()).saturating_sub(self.gen_tokens);
            if ids.len() > limit {
                // Cut the text, not the template around it, so the prompt still ends where the
                // answer starts.
                let text_ids = self
                    .lm
                    .tokenizer
                    .encode(case.text.as_str(), false)
                    .map_err(|e| Error::invalid("tokenize", e.to_string()))?;
                let keep = text_ids.get_ids().len().saturating_sub(ids.len() - limit);
                let cut = self
                    .lm
                    .tokenizer
                    .decode(&text_ids.get_ids()[..keep], false)
                    .map_err(|e| Error::invalid("decode", e.to_string()))?;
                let before = ids.len();
                ids = self.lm.prompt_ids(&cut)?;
                r.note = Some(format!(
                    "prompt truncated from {before} to {} tokens to leave {} for the answer (--max-len {}; the model's maximum is {} positions)",
                    ids.len(),
                    self.gen_tokens,
                    self.max_len,
                    self.max_positions()
                ));
            }
            r.tokens = Some(ids.len());
            let c = self.complete(&ids, self.gen_tokens, &self.lm.stop)?;
            r.output = Some(if c.text.is_empty() { "(empty: the model ended at once)".into() } else { c.text });
            Ok(())
        })();
        if let Err(e) = result {
            r.error = Some(e.to_string());
        }
        r
    }

    /// One record's loss at a time, end to end, cycling through `examples`.
    pub fn single_latency(
        &self,
        examples: &[Example],
        warmup: usize,
        runs: usize,
        peak: &mut u64,
    ) -> Result<Percentiles> {
        let mut times = Vec::with_capacity(runs);
        for i in 0..warmup + runs {
            let t0 = Instant::now();
            self.loss(&examples[i % examples.len()])?;
            if i >= warmup {
                times.push(t0.elapsed().as_secs_f64());
            }
            *peak = (*peak).max(self.gpu.allocated_bytes());
        }
        Ok(Percentiles::of(&times))
    }

    /// Time to first token and decode rate: `runs` generations of exactly `gen_tokens` tokens
    /// (stop tokens ignored so every run decodes as many), cycling through `prompts`.
    pub fn generation_timing(
        &self,
        prompts: &[Vec<u32>],
        warmup: usize,
        runs: usize,
        peak: &mut u64,
    ) -> Result<GenerationTiming> {
        let (mut ttft, mut total, mut rates) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..warmup + runs {
            let c = self.complete(&prompts[i % prompts.len()], self.gen_tokens, &[])?;
            if i >= warmup {
                ttft.push(c.ttft);
                total.push(c.total);
                if c.new_tokens > 1 && c.total > c.ttft {
                    rates.push((c.new_tokens - 1) as f64 / (c.total - c.ttft));
                }
            }
            *peak = (*peak).max(self.gpu.allocated_bytes());
        }
        rates.sort_by(f64::total_cmp);
        Ok(GenerationTiming {
            new_tokens: self.gen_tokens,
            ttft: Percentiles::of(&ttft),
            total: Percentiles::of(&total),
            tokens_per_second: super::latency::percentile(&rates, 50.0),
            prompt_tokens: prompts[0].len(),
        })
    }

    /// Scored tokens per second for each batch size (teacher-forced forward passes).
    pub fn throughput(
        &self,
        examples: &[Example],
        sizes: &[usize],
        batches: usize,
        warmup: bool,
        peak: &mut u64,
    ) -> Result<Vec<ThroughputPoint>> {
        let mut out = Vec::new();
        for &b in sizes {
            let rows: Vec<Example> = (0..b).map(|i| examples[i % examples.len()].clone()).collect();
            let tokens: usize = rows.iter().map(|e| e.ids.len()).sum();
            let batch = make_batches(&rows, b, self.lm.pad, None)?;
            let point = ThroughputPoint::measure(b, tokens, batches, warmup, || {
                eval_loss(self.gpu, self.lm.model.as_ref(), &batch)?;
                Ok(())
            })?;
            *peak = (*peak).max(self.gpu.allocated_bytes());
            out.push(point);
        }
        Ok(out)
    }

    /// Whether the format wraps prompts in a chat template.
    pub fn is_chat(&self) -> bool {
        self.lm.format.is_chat()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn edit_distance_by_hand() {
        assert_eq!(super::edit_distance(&['k', 'i', 't', 't', 'e', 'n'], &['s', 'i', 't', 't', 'i', 'n', 'g']), 3);
        assert_eq!(super::edit_distance::<u8>(&[], &[1, 2]), 2);
    }
}
