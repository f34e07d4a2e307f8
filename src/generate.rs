//! Text generation with a KV cache: the prompt runs once, then one position per new token.
//! Greedy, or sampling with temperature, top-k and top-p (nucleus), seeded.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::models::{CausalLm, LmInput};
use crate::nn::{KvCache, Rng};

#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: all).
    pub top_p: f32,
    pub seed: u64,
}

impl Sampling {
    pub fn greedy() -> Self {
        Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

/// Generates up to `max_new` tokens after `prompt`, stopping after any token in `stop` (which is
/// returned). `on_token` sees each new token as it comes (for streaming output).
pub fn generate(
    gpu: &Gpu,
    model: &dyn CausalLm,
    prompt: &[u32],
    max_new: usize,
    sampling: Sampling,
    stop: &[u32],
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::invalid("generate", "the prompt is empty"));
    }
    let shape = model.shape();
    let capacity = (prompt.len() + max_new).min(shape.max_positions);
    if prompt.len() >= capacity {
        return Err(Error::invalid(
            "generate",
            format!(
                "the prompt's {} tokens leave no room in the model's {} positions",
                prompt.len(),
                shape.max_positions
            ),
        ));
    }
    let mut cache = KvCache::new(gpu, shape.layers, 1, capacity, shape.kv_heads, shape.head_dim)?;
    let mut rng = Rng::new(sampling.seed);
    let mut out = Vec::new();
    let mut next_input = prompt.to_vec();
    while cache.len + next_input.len() <= capacity && out.len() < max_new {
        // Crossing LongRoPE's original context re-encodes every position (as transformers'
        // Phi-3 does): the cached keys are stale, so the whole sequence goes in again.
        if let Some(switch) = model.rope_switch()
            && cache.len > 0
            && cache.len <= switch
            && cache.len + next_input.len() > switch
        {
            next_input = prompt.iter().chain(&out).copied().collect();
            cache.len = 0;
        }
        let n = next_input.len();
        let input = LmInput::new(gpu, next_input, 1, n, None)?;
        let logits = model.last_logits(gpu, &input, Some(&cache))?.to_f32_vec(gpu)?;
        cache.len += n;
        let token = pick(&logits, sampling, &mut rng);
        out.push(token);
        on_token(token)?;
        if stop.contains(&token) {
            break;
        }
        next_input = vec![token];
    }
    Ok(out)
}

/// Chooses the next token from one row of logits.
pub fn pick(logits: &[f32], s: Sampling, rng: &mut Rng) -> u32 {
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if s.top_k > 0 {
        order.truncate(s.top_k);
    }
    let max = logits[order[0]];
    let mut probs: Vec<f64> = order.iter().map(|&i| (((logits[i] - max) / s.temperature) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                acc += p;
                acc >= s.top_p as f64
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
        order.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut u = rng.next_f64();
    for (i, p) in probs.iter().enumerate() {
        if u < *p {
            return order[i] as u32;
        }
        u -= p;
    }
    order[probs.len() - 1] as u32
}

pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_and_top_p() {
        let logits = [0.0, 3.0, 1.0, 2.9];
        let mut rng = Rng::new(1);
        assert_eq!(pick(&logits, Sampling::greedy(), &mut rng), 1);
        // top_k = 1 is greedy whatever the temperature.
        let s = Sampling { temperature: 5.0, top_k: 1, top_p: 1.0, seed: 0 };
        assert!((0..50).all(|_| pick(&logits, s, &mut rng) == 1));
        // top_p small keeps only the most likely token.
        let s = Sampling { temperature: 1.0, top_k: 0, top_p: 0.01, seed: 0 };
        assert!((0..50).all(|_| pick(&logits, s, &mut rng) == 1));
        // top_k = 2 draws only the two best, both of them.
        let s = Sampling { temperature: 1.0, top_k: 2, top_p: 1.0, seed: 0 };
        let drawn: std::collections::BTreeSet<u32> = (0..200).map(|_| pick(&logits, s, &mut rng)).collect();
        assert_eq!(drawn, [1, 3].into_iter().collect());
    }
}
