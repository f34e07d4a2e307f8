//! Forgetting in a language model, measured on retain text: how far the tuned model's next-token
//! distributions moved from the base model's (the mean KL divergence), beside the retain text's
//! perplexity. And a retain set for users who have none: samples of the base model itself.

use crate::data::lm::Example;
use crate::error::{Error, Result};
use crate::generate::{Sampling, generate};
use crate::gpu::Gpu;
use crate::models::{CausalLm, LmInput};

/// Runs `f` on the model with its LoRA adapters switched off, which is the base model (as PEFT's
/// `disable_adapter()`): no second copy of the weights is needed to compare with the base. The
/// adapters' scales are zeroed (and DoRA's magnitudes set aside, so the layer is plain W again)
/// and put back, whatever `f` returns.
pub fn with_adapters_off<R>(model: &mut dyn CausalLm, f: impl FnOnce(&dyn CausalLm) -> Result<R>) -> Result<R> {
    let mut scales = Vec::new();
    for lin in model.linears_mut() {
        if let Some(lora) = &mut lin.lora {
            scales.push((lora.scale, lora.magnitude.take()));
            lora.scale = 0.0;
        }
    }
    if scales.is_empty() {
        return Err(Error::invalid(
            "forgetting",
            "the model has no LoRA adapters to switch off: no base to compare with",
        ));
    }
    let result = f(model);
    let mut saved = scales.into_iter();
    for lin in model.linears_mut() {
        if let Some(lora) = &mut lin.lora {
            (lora.scale, lora.magnitude) = saved.next().expect("one scale per adapter");
        }
    }
    result
}

/// The mean over the retain examples' targets of KL(base ‖ tuned), in nats: the log-likelihood
/// a token drawn from the base's next-token distribution loses under the tuned model. 0 when
/// nothing moved. Examples run one at a time, so only one `[T, vocab]` pair of logits is held.
pub fn mean_kl_from_base(gpu: &Gpu, model: &mut dyn CausalLm, examples: &[Example]) -> Result<f64> {
    let (mut total, mut count) = (0.0f64, 0usize);
    for ex in examples {
        // Position t predicts token t + 1: the rows whose next token is a target.
        let rows: Vec<usize> = (0..ex.ids.len().saturating_sub(1)).filter(|&t| ex.loss_mask[t + 1]).collect();
        if rows.is_empty() {
            continue;
        }
        let logits_of = |m: &dyn CausalLm| -> Result<Vec<f32>> {
            let input = LmInput::new(gpu, ex.ids.clone(), 1, ex.ids.len(), None)?;
            m.all_logits(gpu, &input)?.to_f32_vec(gpu)
        };
        let tuned = logits_of(model)?;
        let base = with_adapters_off(model, logits_of)?;
        let vocab = tuned.len() / ex.ids.len();
        for t in rows {
            let row = t * vocab..(t + 1) * vocab;
            total += kl_divergence(&base[row.clone()], &tuned[row]);
            count += 1;
        }
    }
    if count == 0 {
        return Err(Error::invalid("forgetting", "the retain set has no target tokens to compare"));
    }
    Ok(total / count as f64)
}

/// KL(p ‖ q) in nats between the softmax distributions of two logit rows, in f64.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let log_p = log_softmax(p_logits);
    let log_q = log_softmax(q_logits);
    log_p.iter().zip(&log_q).map(|(&lp, &lq)| if lp == f64::NEG_INFINITY { 0.0 } else { lp.exp() * (lp - lq) }).sum()
}

/// log softmax of one row of logits, in f64 (the max subtracted first, so exp cannot overflow).
pub(crate) fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let log_sum = logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|&x| x as f64 - log_sum).collect()
}

/// `count` samples of the model's own distribution (temperature 1, no top-k or top-p), each
/// up to `len` new tokens after the document start `start`, ending early at a stop token (which
/// is kept). Every sampled token is a target, so the set's loss is the model's own likelihood
/// and its Fisher is the model's (rather than the empirical one of some user text).
#[allow(clippy::too_many_arguments)]
pub fn sample_retain_set(
    gpu: &Gpu,
    model: &dyn CausalLm,
    start: u32,
    stop: &[u32],
    count: usize,
    len: usize,
    seed: u64,
    on_sample: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<Vec<Example>> {
    if len == 0 {
        return Err(Error::invalid("--retain-generate", "samples need at least one token"));
    }
    let mut examples = Vec::with_capacity(count);
    for i in 0..count {
        let sampling = Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed: seed.wrapping_add(i as u64) };
        let sampled = generate(gpu, model, &[start], len, sampling, stop, &mut |_| Ok(()))?;
        let mut ids = vec![start];
        ids.extend(&sampled);
        let mut loss_mask = vec![true; ids.len()];
        loss_mask[0] = false;
        examples.push(Example { ids, loss_mask, truncated: false });
        on_sample(i + 1)?;
    }
    Ok(examples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_is_zero_for_equal_rows_and_matches_a_hand_computation() {
        assert!(kl_divergence(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]).abs() < 1e-12);
        // A shift of every logit leaves the distribution as it was.
        assert!(kl_divergence(&[1.0, 2.0, 3.0], &[11.0, 12.0, 13.0]).abs() < 1e-12);
        // p = (1/2, 1/2), q = (1/4, 3/4): ½·ln 2 + ½·ln(2/3).
        let q = [0.0f32, 3f32.ln()];
        let expected = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl_divergence(&[0.0, 0.0], &q) - expected).abs() < 1e-7);
        // A token the base rules out costs nothing; one the tuned model rules out costs a lot.
        assert!((kl_divergence(&[0.0, f32::NEG_INFINITY], &[0.0, 0.0]) - 2f64.ln()).abs() < 1e-12);
        assert!(kl_divergence(&[0.0, 0.0], &[0.0, -80.0]) > 30.0);
    }
}
