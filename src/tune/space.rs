//! The search space of a tuning study, read from TOML:
//!
//! ```toml
//! [base]                       # fixed settings of every trial: the keys of `kiln train --config`
//! task = "spamassassin"
//! strategy = "head"
//!
//! [params]                     # what is searched: one distribution per `kiln train` flag
//! lr = { log_uniform = [1e-4, 1e-1] }
//! dropout = { uniform = [0.0, 0.3] }
//! lora_r = { int = [4, 32] }
//! batch_size = { choice = [8, 16, 32] }
//! warmup_ratio = { uniform = [0.0, 0.2], points = 5 }   # points: values per axis of a grid
//! ```
//!
//! Every key is checked against `kiln train`'s flags up front, and every bound is checked for
//! sense, so a typo fails at once with the file and key named instead of after an hour of trials.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// One parameter's distribution.
#[derive(Clone, Debug, PartialEq)]
pub enum Dist {
    Uniform {
        low: f64,
        high: f64,
    },
    /// Uniform in log space: each decade equally likely (learning rates, weight decay).
    LogUniform {
        low: f64,
        high: f64,
    },
    /// Integers in `low..=high`, each equally likely.
    Int {
        low: i64,
        high: i64,
    },
    /// One of a list of values (strings, numbers or booleans).
    Choice(Vec<Value>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// The `kiln train` flag, with underscores (`lr`, `lora_r`, `batch_size`).
    pub name: String,
    pub dist: Dist,
    /// Values per axis when the grid sampler spreads a range (choices use every value).
    pub points: usize,
}

/// Values per axis of a grid over a range when the file gives no `points`.
pub const DEFAULT_GRID_POINTS: usize = 3;

/// A trial's sampled values, by parameter name (sorted, as in the file's `[params]`).
pub type Params = BTreeMap<String, Value>;

#[derive(Clone, Debug)]
pub struct Space {
    pub path: PathBuf,
    /// In name order (TOML tables are read sorted), so sampling is in a stable order.
    pub params: Vec<Param>,
    /// Fixed settings: `kiln train` flags as `--config` would give them.
    pub base: toml::Table,
    /// A fingerprint of the file's meaning (its parsed contents), stored in the study so a
    /// resume with another space is refused.
    pub fingerprint: String,
}

/// Flags a trial's settings may not set: the study owns the run folder and its lifecycle.
const RESERVED: &[&str] = &["out", "resume", "config", "json", "halt_after"];

impl Space {
    /// Reads and checks a space file; `train_flags` are the flags `kiln train` takes (with
    /// underscores), so unknown names are refused here.
    pub fn read(path: &Path, train_flags: &[String]) -> Result<Space> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Space::parse(path, &text, train_flags)
    }

    pub fn parse(path: &Path, text: &str, train_flags: &[String]) -> Result<Space> {
        let bad = |key: &str, message: String| Error::Parse {
            path: path.to_path_buf(),
            message: format!("`{key}`: {message}"),
        };
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| Error::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        let known_flag = |key: &str, where_: &str| -> Result<()> {
            if RESERVED.contains(&key) {
                return Err(bad(&format!("{where_}.{key}"), "is set by `kiln tune` for each trial".into()));
            }
            if !train_flags.iter().any(|f| f == key) {
                return Err(bad(
                    &format!("{where_}.{key}"),
                    format!("`kiln train` has no flag --{} (see `kiln train --help`)", key.replace('_', "-")),
                ));
            }
            Ok(())
        };
        let mut base = toml::Table::new();
        let mut params = Vec::new();
        for (key, value) in &table {
            match (key.as_str(), value) {
                ("base", toml::Value::Table(t)) => {
                    for k in t.keys() {
                        known_flag(&k.replace('-', "_"), "base")?;
                    }
                    base = t.clone();
                }
                ("params", toml::Value::Table(t)) => {
                    for (name, spec) in t {
                        let name = name.replace('-', "_");
                        known_flag(&name, "params")?;
                        params.push(parse_param(&name, spec).map_err(|m| bad(&format!("params.{name}"), m))?);
                    }
                }
                ("base" | "params", _) => return Err(bad(key, "expected a table ([base] or [params])".into())),
                _ => {
                    return Err(bad(
                        key,
                        "unknown key: a space file has [base] (fixed train settings) and [params] (what is searched)"
                            .into(),
                    ));
                }
            }
        }
        if params.is_empty() {
            return Err(Error::Parse {
                path: path.to_path_buf(),
                message: "no [params]: nothing to search (e.g. `lr = { log_uniform = [1e-4, 1e-2] }`)".into(),
            });
        }
        for p in &params {
            if base.keys().any(|k| k.replace('-', "_") == p.name) {
                return Err(bad(&format!("base.{}", p.name), "is also in [params]; keep it in one of them".into()));
            }
        }
        params.sort_by(|a, b| a.name.cmp(&b.name));
        // The parsed contents, not the bytes: comments and spacing may change between runs.
        let mut h = crate::util::Hash64::default();
        h.bytes(toml::to_string(&table).unwrap_or_default().as_bytes());
        let fingerprint = format!("{:016x}", h.0);
        Ok(Space { path: path.to_path_buf(), params, base, fingerprint })
    }

    /// How many points a full grid has (capped, so a huge grid does not overflow).
    pub fn grid_size(&self) -> usize {
        self.params.iter().map(|p| p.grid_values().len()).fold(1usize, |a, n| a.saturating_mul(n))
    }
}

fn number(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Float(f) => Some(*f),
        toml::Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

/// A `[params]` entry: a table with exactly one distribution key (and optionally `points`).
fn parse_param(name: &str, spec: &toml::Value) -> std::result::Result<Param, String> {
    let shape = "expected a table with one of `log_uniform = [low, high]`, `uniform = [low, high]`, \
                 `int = [low, high]`, `choice = [v1, v2, ...]` (and optionally `points = N`)";
    let toml::Value::Table(t) = spec else { return Err(shape.into()) };
    let mut dist = None;
    let mut points = None;
    for (key, value) in t {
        let pair = || -> std::result::Result<(f64, f64), String> {
            match value.as_array().map(|a| a.iter().map(number).collect::<Option<Vec<f64>>>()) {
                Some(Some(v)) if v.len() == 2 => Ok((v[0], v[1])),
                _ => Err(format!("`{key}` expects two numbers [low, high]")),
            }
        };
        let d = match key.as_str() {
            "uniform" | "log_uniform" | "int" => {
                let (low, high) = pair()?;
                if !(low.is_finite() && high.is_finite()) || low > high {
                    return Err(format!("`{key}`: low {low} must not exceed high {high}"));
                }
                match key.as_str() {
                    "uniform" => Dist::Uniform { low, high },
                    "log_uniform" if low <= 0.0 => {
                        return Err(format!(
                            "`log_uniform`: low must be above 0 (got {low}); use `uniform` to include 0"
                        ));
                    }
                    "log_uniform" => Dist::LogUniform { low, high },
                    _ if low.fract() != 0.0 || high.fract() != 0.0 => {
                        return Err(format!("`int`: bounds must be integers (got {low}, {high})"));
                    }
                    _ => Dist::Int { low: low as i64, high: high as i64 },
                }
            }
            "choice" => {
                let items = value.as_array().ok_or("`choice` expects a list of values")?;
                if items.is_empty() {
                    return Err("`choice` is empty: give at least one value".into());
                }
                let values = items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(Value::from(s.clone())),
                        toml::Value::Integer(i) => Ok(Value::from(*i)),
                        toml::Value::Float(f) => Ok(Value::from(*f)),
                        toml::Value::Boolean(b) => Ok(Value::from(*b)),
                        _ => Err(format!("`choice`: {v} is not a string, number or boolean")),
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Dist::Choice(values)
            }
            "points" => {
                match value.as_integer() {
                    Some(n) if n >= 1 => points = Some(n as usize),
                    _ => return Err("`points` expects an integer of at least 1".into()),
                }
                continue;
            }
            other => return Err(format!("unknown key `{other}`; {shape}")),
        };
        if dist.replace(d).is_some() {
            return Err(format!("more than one distribution; {shape}"));
        }
    }
    let dist = dist.ok_or_else(|| shape.to_string())?;
    let _ = name;
    Ok(Param { name: name.to_string(), dist, points: points.unwrap_or(DEFAULT_GRID_POINTS) })
}

impl Param {
    /// The values a grid takes on this axis: every choice; `points` evenly spaced values of a
    /// range (in log space for `log_uniform`), ends included; distinct integers of an `int`.
    pub fn grid_values(&self) -> Vec<Value> {
        let spread = |lo: f64, hi: f64| -> Vec<f64> {
            let n = self.points;
            if n == 1 || lo == hi {
                return vec![if n == 1 { (lo + hi) / 2.0 } else { lo }];
            }
            (0..n).map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64).collect()
        };
        match &self.dist {
            Dist::Choice(v) => v.clone(),
            Dist::Uniform { low, high } => spread(*low, *high).into_iter().map(Value::from).collect(),
            Dist::LogUniform { low, high } => {
                spread(low.ln(), high.ln()).into_iter().map(|x| Value::from(round_sig(x.exp()))).collect()
            }
            Dist::Int { low, high } => {
                let mut v: Vec<i64> = spread(*low as f64, *high as f64).into_iter().map(|x| x.round() as i64).collect();
                v.dedup();
                v.into_iter().map(Value::from).collect()
            }
        }
    }
}

/// `x` to 6 significant digits: exp(ln(1e-3)) is 0.0010000000000000002, and a grid point
/// should read as the number the user meant.
pub fn round_sig(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let digits = 6 - x.abs().log10().ceil() as i32;
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// A sampled value as a `kiln train` flag value (None: a false boolean, which means no flag).
pub fn flag_value(v: &Value) -> Option<String> {
    match v {
        Value::Bool(false) => None,
        Value::Bool(true) => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Vec<String> {
        ["lr", "batch_size", "dropout", "lora_r", "strategy", "task", "warmup_ratio", "full"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn parse(text: &str) -> Result<Space> {
        Space::parse(Path::new("space.toml"), text, &flags())
    }

    #[test]
    fn parses_every_distribution_in_name_order() {
        let s = parse(
            "[base]\nstrategy = \"head\"\n[params]\nlr = { log_uniform = [1e-4, 1e-1] }\n\
             batch_size = { choice = [8, 16] }\ndropout = { uniform = [0.0, 0.3], points = 4 }\nlora_r = { int = [4, 8] }\n",
        )
        .unwrap();
        let names: Vec<&str> = s.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["batch_size", "dropout", "lora_r", "lr"]);
        assert_eq!(s.params[3].dist, Dist::LogUniform { low: 1e-4, high: 1e-1 });
        assert_eq!(s.params[2].dist, Dist::Int { low: 4, high: 8 });
        assert_eq!(s.params[1].grid_values().len(), 4);
        assert_eq!(s.params[3].grid_values(), [1e-4, 3.16228e-3, 1e-1].map(Value::from).to_vec());
        assert_eq!(s.params[2].grid_values(), [4, 6, 8].map(Value::from).to_vec());
        assert_eq!(s.grid_size(), 2 * 4 * 3 * 3);
        assert_eq!(s.base["strategy"].as_str(), Some("head"));
    }

    #[test]
    fn bad_spaces_name_the_file_the_key_and_what_was_expected() {
        for (text, want) in [
            ("[params]\nlr = { log_uniform = [0.0, 1e-2] }", "`params.lr`: `log_uniform`: low must be above 0"),
            ("[params]\nlr = { uniform = [0.1, 0.01] }", "`params.lr`: `uniform`: low 0.1 must not exceed high 0.01"),
            ("[params]\nlr = { normal = [0.1, 0.01] }", "`params.lr`: unknown key `normal`"),
            ("[params]\nbatch_size = { choice = [] }", "`params.batch_size`: `choice` is empty"),
            (
                "[params]\nlearning_rate = { uniform = [0, 1] }",
                "`params.learning_rate`: `kiln train` has no flag --learning-rate",
            ),
            ("[base]\nlrr = 1\n[params]\nlr = { uniform = [0, 1] }", "`base.lrr`: `kiln train` has no flag --lrr"),
            ("[params]\nout = { choice = [\"a\"] }", "`params.out`: is set by `kiln tune`"),
            ("[sampler]\nx = 1", "`sampler`: unknown key"),
            ("[params]\nlr = 0.1", "`params.lr`: expected a table"),
            ("[params]\nlora_r = { int = [4.5, 8] }", "`int`: bounds must be integers"),
            ("[base]\nlr = 0.1\n[params]\nlr = { uniform = [0, 1] }", "`base.lr`: is also in [params]"),
            ("[base]\nstrategy = \"head\"", "no [params]"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with("space.toml: ") && err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_fingerprint_ignores_comments_and_follows_meaning() {
        let a = parse("[params]\nlr = { uniform = [0, 1] }").unwrap();
        let b = parse("# tuned\n[params]\nlr = {uniform=[0,1]}   # the rate").unwrap();
        let c = parse("[params]\nlr = { uniform = [0, 2] }").unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
    }

    #[test]
    fn values_become_flags() {
        assert_eq!(flag_value(&Value::from(16)), Some("16".into()));
        assert_eq!(flag_value(&Value::from("top:2")), Some("top:2".into()));
        assert_eq!(flag_value(&Value::from(false)), None);
        assert_eq!(round_sig(0.0010000000000000002), 0.001);
    }
}
