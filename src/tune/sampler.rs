//! Samplers: where the next trial's settings come from.
//!
//! Every proposal is a pure function of (study seed, trial index, the history of earlier
//! trials), so a resumed study proposes exactly what the uninterrupted one would have.

use serde_json::Value;

use super::space::{Dist, Param, Params, Space, round_sig};
use crate::util::SplitMix64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// Each parameter drawn independently from its distribution.
    Random,
    /// Every combination of the axes' values, in order (first parameter slowest).
    Grid,
    /// Tree-structured Parzen estimator (Optuna's default): random for the first trials, then
    /// values that are likely under the good trials and unlikely under the rest.
    Tpe,
}

/// What a sampler may learn from an earlier trial.
#[derive(Clone, Debug)]
pub struct Observation {
    pub params: Params,
    /// Lower is better (the objective, negated when higher is better).
    pub loss: f64,
    /// The highest rung it reached: a trial that went further ranks above one that did not.
    pub rung: usize,
}

/// A generator for trial `index` of a study seeded `seed`, independent of other trials' draws.
pub fn rng_for(seed: u64, index: usize) -> SplitMix64 {
    let mut mix = SplitMix64::new(seed ^ 0x7475_6e65); // "tune"
    let base = mix.next_u64();
    SplitMix64::new(base.wrapping_add((index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)))
}

/// Uniform in [0, 1), from the top 53 bits.
pub fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// One value of `p` drawn from its prior.
pub fn draw(p: &Param, rng: &mut SplitMix64) -> Value {
    match &p.dist {
        Dist::Uniform { low, high } => Value::from(round_sig(low + (high - low) * unit(rng))),
        Dist::LogUniform { low, high } => Value::from(round_sig((low.ln() + (high.ln() - low.ln()) * unit(rng)).exp())),
        Dist::Int { low, high } => Value::from(low + rng.below((high - low + 1) as usize) as i64),
        Dist::Choice(v) => v[rng.below(v.len())].clone(),
    }
}

/// Trial `index`'s settings under `kind`. `history` holds the trials before it that have a
/// result (failed ones excluded). Grid proposals past the grid's end are None.
pub fn propose(kind: SamplerKind, space: &Space, seed: u64, index: usize, history: &[Observation]) -> Option<Params> {
    let mut rng = rng_for(seed, index);
    match kind {
        SamplerKind::Random => Some(space.params.iter().map(|p| (p.name.clone(), draw(p, &mut rng))).collect()),
        SamplerKind::Grid => grid_point(space, index),
        SamplerKind::Tpe => Some(super::tpe::propose(space, &mut rng, history)),
    }
}

/// The `index`-th combination of the grid, the last parameter fastest.
pub fn grid_point(space: &Space, index: usize) -> Option<Params> {
    if index >= space.grid_size() {
        return None;
    }
    let mut rest = index;
    let mut out = Params::new();
    for p in space.params.iter().rev() {
        let values = p.grid_values();
        out.insert(p.name.clone(), values[rest % values.len()].clone());
        rest /= values.len();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn space(text: &str) -> Space {
        let flags: Vec<String> = ["lr", "batch_size", "dropout"].iter().map(|s| s.to_string()).collect();
        Space::parse(Path::new("s.toml"), text, &flags).unwrap()
    }

    #[test]
    fn random_draws_stay_in_range_and_are_seeded() {
        let s = space(
            "[params]\nlr = { log_uniform = [1e-4, 1e-1] }\nbatch_size = { choice = [8, 16] }\ndropout = { uniform = [0.1, 0.3] }",
        );
        let a: Vec<Params> = (0..200).map(|i| propose(SamplerKind::Random, &s, 7, i, &[]).unwrap()).collect();
        let b: Vec<Params> = (0..200).map(|i| propose(SamplerKind::Random, &s, 7, i, &[]).unwrap()).collect();
        assert_eq!(a, b);
        assert_ne!(a, (0..200).map(|i| propose(SamplerKind::Random, &s, 8, i, &[]).unwrap()).collect::<Vec<_>>());
        let lrs: Vec<f64> = a.iter().map(|p| p["lr"].as_f64().unwrap()).collect();
        assert!(lrs.iter().all(|&x| (1e-4..=1e-1).contains(&x)));
        // Log-uniform: about a third of the draws in each decade.
        let low_decade = lrs.iter().filter(|&&x| x < 1e-3).count();
        assert!((45..90).contains(&low_decade), "{low_decade} of 200 below 1e-3");
        assert!(a.iter().any(|p| p["batch_size"] == 8) && a.iter().any(|p| p["batch_size"] == 16));
        assert!(a.iter().all(|p| (0.1..=0.3).contains(&p["dropout"].as_f64().unwrap())));
    }

    #[test]
    fn grid_walks_every_combination_once() {
        let s = space("[params]\nlr = { log_uniform = [1e-3, 1e-1] }\nbatch_size = { choice = [8, 16] }");
        assert_eq!(s.grid_size(), 6);
        let points: Vec<Params> = (0..6).map(|i| grid_point(&s, i).unwrap()).collect();
        for i in 0..6 {
            for j in 0..i {
                assert_ne!(points[i], points[j]);
            }
        }
        assert_eq!(points[0]["batch_size"], 8);
        assert_eq!(points[0]["lr"], 1e-3);
        assert_eq!(points[1]["lr"], 1e-2);
        assert_eq!(points[3]["batch_size"], 16);
        assert!(grid_point(&s, 6).is_none());
    }
}
