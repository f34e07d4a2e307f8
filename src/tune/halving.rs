//! Successive halving (Jamieson & Talwalkar 2016), synchronous: every trial trains to the first
//! rung's step count, the best `1/eta` of those still running continue to the next rung
//! (`eta` times as many steps), and so on up to `max_steps`. Every trial is configured with the
//! full `max_steps` budget from the start, so its learning-rate schedule does not depend on
//! where it is paused; pausing is a checkpoint, continuing is `--resume`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Halving {
    pub min_steps: usize,
    pub eta: usize,
    pub max_steps: usize,
}

impl Halving {
    pub fn new(min_steps: usize, eta: usize, max_steps: usize) -> Result<Halving> {
        if min_steps == 0 || eta < 2 || max_steps < min_steps {
            return Err(Error::invalid(
                "--halving",
                format!(
                    "min_steps {min_steps}, eta {eta}, max_steps {max_steps}: need min_steps ≥ 1, eta ≥ 2, \
                     max_steps ≥ min_steps"
                ),
            ));
        }
        Ok(Halving { min_steps, eta, max_steps })
    }

    /// `min_steps,eta,max_steps` as `--halving` takes it.
    pub fn parse(s: &str) -> Result<Halving> {
        let parts: Vec<usize> =
            s.split(',').map(|p| p.trim().parse::<usize>()).collect::<std::result::Result<_, _>>().map_err(|e| {
                Error::invalid("--halving", format!("`{s}`: {e}; expected min_steps,eta,max_steps (e.g. 100,3,900)"))
            })?;
        match parts[..] {
            [min, eta, max] => Halving::new(min, eta, max),
            _ => Err(Error::invalid("--halving", format!("`{s}`: expected min_steps,eta,max_steps (e.g. 100,3,900)"))),
        }
    }

    /// The step counts at which trials are compared: min_steps·eta^k below max_steps, then
    /// max_steps.
    pub fn rungs(&self) -> Vec<usize> {
        let mut r = Vec::new();
        let mut s = self.min_steps;
        while s < self.max_steps {
            r.push(s);
            s = s.saturating_mul(self.eta);
        }
        r.push(self.max_steps);
        r
    }

    /// How many of `running` trials continue past a rung: the best 1/eta, at least one.
    pub fn keep(&self, running: usize) -> usize {
        if running == 0 { 0 } else { (running / self.eta).max(1) }
    }
}

/// Which trials continue: the `keep` best of `candidates` (trial, loss with lower better),
/// ties to the earlier trial; returned in trial order.
pub fn promote(candidates: &[(usize, f64)], keep: usize) -> Vec<usize> {
    let mut ranked = candidates.to_vec();
    ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let mut chosen: Vec<usize> = ranked.iter().take(keep).map(|c| c.0).collect();
    chosen.sort();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_grow_by_eta_and_end_at_the_budget() {
        assert_eq!(Halving::new(10, 3, 90).unwrap().rungs(), [10, 30, 90]);
        assert_eq!(Halving::new(10, 3, 100).unwrap().rungs(), [10, 30, 90, 100]);
        assert_eq!(Halving::new(10, 2, 10).unwrap().rungs(), [10]);
        assert_eq!(Halving::parse("4, 2, 16").unwrap().rungs(), [4, 8, 16]);
        for bad in ["4,1,16", "0,2,8", "8,2,4", "4,2", "a,b,c"] {
            let e = Halving::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("--halving"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_best_third_continues() {
        let h = Halving::new(10, 3, 90).unwrap();
        assert_eq!((h.keep(9), h.keep(4), h.keep(2), h.keep(0)), (3, 1, 1, 0));
        let c = [(0, 0.5), (1, 0.1), (2, f64::NAN), (3, 0.3), (4, 0.1), (5, 0.9)];
        assert_eq!(promote(&c, 3), [1, 3, 4]);
        assert_eq!(promote(&c, 1), [1]);
    }
}
