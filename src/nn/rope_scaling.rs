//! RoPE scaling: the inverse frequencies and the attention factor each `rope_type` of a Hugging
//! Face config gives, computed as transformers' `ROPE_INIT_FUNCTIONS`
//! (transformers/modeling_rope_utils.py) do, in f64. `kernels::rope::RopeTables::from_inv_freq`
//! turns them into cos/sin tables.
//!
//! Config keys read (transformers 5 writes them under `rope_parameters`, older files under
//! `rope_scaling` beside a top-level `rope_theta`): `rope_type` (or `type`), `rope_theta`,
//! `partial_rotary_factor`, `factor`, `low_freq_factor`, `high_freq_factor`,
//! `original_max_position_embeddings` (a top-level key wins, as Phi-3 writes it), `short_factor`,
//! `long_factor`, `attention_factor`, `beta_fast`, `beta_slow`, `mscale`, `mscale_all_dim`,
//! `truncate`; and `max_position_embeddings`.

use std::f64::consts::PI;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// A `rope_type` and its parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Positions divided by `factor` (inv_freq / factor).
    Linear {
        factor: f64,
    },
    /// NTK-aware: the base grows once the sequence passes `max_position_embeddings`.
    Dynamic {
        factor: f64,
    },
    /// Llama 3.1/3.2: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Phi-3.5 / Phi-4-mini: per-frequency factors, `short_factor` up to the original context
    /// and `long_factor` past it.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        factor: Option<f64>,
        attention_factor: Option<f64>,
        original_max_position_embeddings: usize,
    },
    /// YaRN (Qwen's long context): NTK-by-parts interpolation and an attention factor.
    Yarn {
        factor: Option<f64>,
        attention_factor: Option<f64>,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        original_max_position_embeddings: usize,
        truncate: bool,
    },
    /// llama.cpp's `rope_freqs.weight`: inv_freq[i] = base^(−2i/rot_dim) / factors[i]. This is
    /// how GGUF files carry Llama 3's scaling (convert_hf_to_gguf.py computes the divisors from
    /// the llama3 parameters, which cannot be recovered from them).
    FreqFactors {
        factors: Vec<f64>,
    },
}

/// Everything that decides a model's rotary embedding.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    /// `rope_theta`, the base wavelength.
    pub theta: f64,
    pub head_dim: usize,
    /// Dims of each head that rotate: head_dim × `partial_rotary_factor` (even).
    pub rot_dim: usize,
    pub max_position_embeddings: usize,
    pub scaling: RopeScaling,
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

impl RopeConfig {
    /// The RoPE a Hugging Face `config.json` describes, for heads of `head_dim`. `path` names the
    /// file in errors: an unknown `rope_type`, a missing or non-positive parameter, factor lists
    /// of the wrong length, a rotary dim that is odd or zero.
    pub fn from_hf(config: &Value, head_dim: usize, path: &Path) -> Result<RopeConfig> {
        let bad = |key: &str, message: String| Error::Parse {
            path: path.to_path_buf(),
            message: format!("`{key}`: {message}"),
        };
        // transformers 5 prefers `rope_scaling` when both are given (convert_rope_params_to_dict).
        let (section, params) =
            [("rope_scaling", config.get("rope_scaling")), ("rope_parameters", config.get("rope_parameters"))]
                .into_iter()
                .find_map(|(k, v)| v.filter(|v| !v.is_null()).map(|v| (k, v.clone())))
                .unwrap_or(("rope_parameters", Value::Object(Default::default())));
        if !params.is_object() {
            return Err(bad(section, format!("expected an object, found {params}")));
        }
        let theta = num(&params, "rope_theta").or_else(|| num(config, "rope_theta")).unwrap_or(10_000.0);
        if theta.partial_cmp(&1.0) != Some(std::cmp::Ordering::Greater) {
            return Err(bad("rope_theta", format!("must be a number above 1, found {theta}")));
        }
        let partial =
            num(&params, "partial_rotary_factor").or_else(|| num(config, "partial_rotary_factor")).unwrap_or(1.0);
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(bad("partial_rotary_factor", format!("must be in (0, 1], found {partial}")));
        }
        // int(head_dim * partial_rotary_factor), as transformers truncates it.
        let rot_dim = (head_dim as f64 * partial) as usize;
        if rot_dim == 0 || !rot_dim.is_multiple_of(2) {
            return Err(bad(
                "partial_rotary_factor",
                format!(
                    "head_dim {head_dim} × {partial} gives {rot_dim} rotary dims; kiln needs an even, positive number"
                ),
            ));
        }
        let max_pos =
            config.get("max_position_embeddings").and_then(Value::as_u64).ok_or_else(|| {
                bad("max_position_embeddings", "missing or not a positive integer (RoPE needs it)".into())
            })? as usize;
        let kind = params.get("rope_type").or_else(|| params.get("type")).and_then(Value::as_str).unwrap_or("default");
        let original = || -> Result<usize> {
            let v = config
                .get("original_max_position_embeddings")
                .or_else(|| params.get("original_max_position_embeddings"))
                .and_then(Value::as_u64)
                .unwrap_or(max_pos as u64);
            if v == 0 {
                return Err(bad("original_max_position_embeddings", "must be positive".into()));
            }
            Ok(v as usize)
        };
        let positive = |key: &str| -> Result<f64> {
            match num(&params, key) {
                Some(f) if f > 0.0 && f.is_finite() => Ok(f),
                Some(f) => Err(bad(key, format!("must be positive for rope_type `{kind}`, found {f}"))),
                None => Err(bad(key, format!("rope_type `{kind}` needs it (a positive number)"))),
            }
        };
        let optional = |key: &str| -> Result<Option<f64>> {
            match params.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(_) => positive(key).map(Some),
            }
        };
        let factors = |key: &str| -> Result<Vec<f64>> {
            let list = params
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| bad(key, format!("rope_type `{kind}` needs a list of {} numbers", rot_dim / 2)))?;
            let f: Vec<f64> = list.iter().filter_map(Value::as_f64).filter(|f| *f > 0.0).collect();
            if f.len() != rot_dim / 2 || f.len() != list.len() {
                return Err(bad(
                    key,
                    format!(
                        "expected {} positive numbers (rotary dims / 2), found {} entries",
                        rot_dim / 2,
                        list.len()
                    ),
                ));
            }
            Ok(f)
        };
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: positive("factor")? },
            "dynamic" => RopeScaling::Dynamic { factor: positive("factor")? },
            "llama3" => {
                let (low, high) = (positive("low_freq_factor")?, positive("high_freq_factor")?);
                if high <= low {
                    return Err(bad("high_freq_factor", format!("must exceed low_freq_factor ({low}), found {high}")));
                }
                RopeScaling::Llama3 {
                    factor: positive("factor")?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: original()? as f64,
                }
            }
            "longrope" => RopeScaling::LongRope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                factor: optional("factor")?,
                attention_factor: optional("attention_factor")?,
                original_max_position_embeddings: original()?,
            },
            "yarn" => RopeScaling::Yarn {
                factor: optional("factor")?,
                attention_factor: optional("attention_factor")?,
                beta_fast: optional("beta_fast")?.unwrap_or(32.0),
                beta_slow: optional("beta_slow")?.unwrap_or(1.0),
                mscale: optional("mscale")?,
                mscale_all_dim: optional("mscale_all_dim")?,
                original_max_position_embeddings: original()?,
                truncate: params.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            },
            other => {
                return Err(bad(
                    &format!("{section}.rope_type"),
                    format!(
                        "`{other}` is not a RoPE kiln implements (default, linear, dynamic, llama3, longrope, yarn)"
                    ),
                ));
            }
        };
        Ok(RopeConfig { theta, head_dim, rot_dim, max_position_embeddings: max_pos, scaling })
    }

    /// The `rope_parameters` transformers 5 writes for this RoPE (exports); `from_hf` reads it back.
    pub fn to_hf_json(&self) -> Value {
        let mut v = serde_json::json!({ "rope_theta": self.theta });
        if self.rot_dim != self.head_dim {
            v["partial_rotary_factor"] = (self.rot_dim as f64 / self.head_dim as f64).into();
        }
        let mut set = |key: &str, value: Value| {
            if !value.is_null() {
                v[key] = value;
            }
        };
        let kind = match &self.scaling {
            RopeScaling::Default => "default",
            // No Hugging Face rope_type says this; the name makes a reader refuse it loudly.
            RopeScaling::FreqFactors { factors } => {
                set("freq_factors", factors.clone().into());
                "gguf_freq_factors"
            }
            RopeScaling::Linear { factor } => {
                set("factor", (*factor).into());
                "linear"
            }
            RopeScaling::Dynamic { factor } => {
                set("factor", (*factor).into());
                "dynamic"
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                set("factor", (*factor).into());
                set("low_freq_factor", (*low_freq_factor).into());
                set("high_freq_factor", (*high_freq_factor).into());
                set("original_max_position_embeddings", (*original_max_position_embeddings as u64).into());
                "llama3"
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                factor,
                attention_factor,
                original_max_position_embeddings,
            } => {
                set("short_factor", short_factor.clone().into());
                set("long_factor", long_factor.clone().into());
                set("factor", (*factor).into());
                set("attention_factor", (*attention_factor).into());
                set("original_max_position_embeddings", (*original_max_position_embeddings).into());
                "longrope"
            }
            RopeScaling::Yarn {
                factor,
                attention_factor,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                original_max_position_embeddings,
                truncate,
            } => {
                set("factor", (*factor).into());
                set("attention_factor", (*attention_factor).into());
                set("beta_fast", (*beta_fast).into());
                set("beta_slow", (*beta_slow).into());
                set("mscale", (*mscale).into());
                set("mscale_all_dim", (*mscale_all_dim).into());
                set("original_max_position_embeddings", (*original_max_position_embeddings).into());
                set("truncate", (*truncate).into());
                "yarn"
            }
        };
        v["rope_type"] = kind.into();
        v
    }

    /// The RoPE with no scaling over the whole head.
    pub fn plain(theta: f64, head_dim: usize, max_position_embeddings: usize) -> RopeConfig {
        RopeConfig { theta, head_dim, rot_dim: head_dim, max_position_embeddings, scaling: RopeScaling::Default }
    }

    /// base^(−2i/rot_dim) for i < rot_dim/2.
    fn base_inv_freq(&self, base: f64) -> Vec<f64> {
        (0..self.rot_dim / 2).map(|i| base.powf(-((2 * i) as f64) / self.rot_dim as f64)).collect()
    }

    /// Inverse frequencies (rot_dim/2 of them) and the attention factor that multiplies cos and
    /// sin, for a forward whose positions reach `seq_len` (None: at load, as transformers'
    /// `rope_init_fn(config)`). Only `dynamic` (past max_position_embeddings) and `longrope`
    /// (past the original context) depend on it.
    pub fn inv_freq(&self, seq_len: Option<usize>) -> (Vec<f64>, f64) {
        let dim = self.rot_dim as f64;
        match &self.scaling {
            RopeScaling::Default => (self.base_inv_freq(self.theta), 1.0),
            RopeScaling::FreqFactors { factors } => {
                (self.base_inv_freq(self.theta).iter().zip(factors).map(|(f, d)| f / d).collect(), 1.0)
            }
            RopeScaling::Linear { factor } => {
                (self.base_inv_freq(self.theta).into_iter().map(|f| f / factor).collect(), 1.0)
            }
            RopeScaling::Dynamic { factor } => {
                let max = self.max_position_embeddings as f64;
                let seq = seq_len.map_or(max, |s| (s as f64).max(max));
                let base = self.theta * ((factor * seq / max) - (factor - 1.0)).powf(dim / (dim - 2.0));
                (self.base_inv_freq(base), 1.0)
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let old = *original_max_position_embeddings;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                let f = self
                    .base_inv_freq(self.theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            // Between the two: interpolate smoothly in 1/wavelength.
                            let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (f, 1.0)
            }
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                factor,
                attention_factor,
                original_max_position_embeddings: orig,
            } => {
                let factor = factor.unwrap_or(self.max_position_embeddings as f64 / *orig as f64);
                let attention = attention_factor.unwrap_or(if factor <= 1.0 {
                    1.0
                } else {
                    (1.0 + factor.ln() / (*orig as f64).ln()).sqrt()
                });
                let ext = if seq_len.is_some_and(|s| s > *orig) { long_factor } else { short_factor };
                let f = self.base_inv_freq(self.theta).iter().zip(ext).map(|(f, e)| f / e).collect();
                (f, attention)
            }
            RopeScaling::Yarn {
                factor,
                attention_factor,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                original_max_position_embeddings: orig,
                truncate,
            } => {
                let orig = *orig as f64;
                let factor = factor.unwrap_or(self.max_position_embeddings as f64 / orig);
                let get_mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
                let attention = attention_factor.unwrap_or(match (mscale, mscale_all_dim) {
                    (Some(m), Some(all)) => get_mscale(factor, *m) / get_mscale(factor, *all),
                    _ => get_mscale(factor, 1.0),
                });
                // The dims whose wavelength completes between beta_slow and beta_fast rotations
                // over the original context get a ramp from extrapolation to interpolation.
                let correction_dim =
                    |rotations: f64| dim * (orig / (rotations * 2.0 * PI)).ln() / (2.0 * self.theta.ln());
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
                if low == high {
                    high += 0.001; // as transformers does, to avoid dividing by zero
                }
                let f = self
                    .base_inv_freq(self.theta)
                    .into_iter()
                    .enumerate()
                    .map(|(i, extrapolated)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation_weight = 1.0 - ramp;
                        extrapolated / factor * (1.0 - extrapolation_weight) + extrapolated * extrapolation_weight
                    })
                    .collect();
                (f, attention)
            }
        }
    }

    /// Whether a forward reaching `seq_len` positions needs other frequencies than the load-time
    /// ones (LongRoPE past its original context: transformers switches to `long_factor`).
    pub fn is_long(&self, seq_len: usize) -> bool {
        matches!(&self.scaling, RopeScaling::LongRope { original_max_position_embeddings: o, .. } if seq_len > *o)
    }
}
