//! A LoRA adapter as llama.cpp's adapter GGUF (convert_lora_to_gguf.py), for
//! `llama-cli -m base.gguf --lora adapter.gguf` and Ollama's `ADAPTER` line:
//!   - `general.architecture` the base's, `general.type = adapter`, `adapter.type = lora`,
//!     `adapter.lora.alpha` (f32); no hyperparameters or tokenizer (the base has them);
//!   - per adapted weight `W` (GGUF name `blk.N.attn_q.weight`), `blk.N.attn_q.weight.lora_a`
//!     = A `[r, in]` and `.lora_b` = B `[out, r]`, row-major as PEFT stores them (GGUF dims
//!     `[in, r]` and `[r, out]`); for `llama` B's rows are permuted like W's, since
//!     permuting W = B·A's rows permutes B's.
//!
//! llama.cpp scales B·A by alpha / r with r read from lora_a; kiln writes
//! alpha = scale · r, so rsLoRA's alpha / √r comes out right too. DoRA's magnitude has no
//! place in the format and is refused.

use super::{Mapped, arch, map_tensor};
use crate::error::{Error, Result};
use crate::formats::gguf::write::{GgufWriter, TensorOut};
use crate::formats::gguf::{GgmlType, GgufValue};
use crate::gpu::Gpu;
use crate::models::load::LoadedLm;

/// What an adapter export wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterReport {
    pub arch: String,
    pub layers: usize,
    pub rank: usize,
    pub alpha: f32,
}

/// The adapters attached to `lm` (loaded with `load_adapter`, not merged) as a LoRA GGUF,
/// tensors in `ty` (F32 or F16).
pub fn adapter(gpu: &Gpu, lm: &mut LoadedLm, ty: GgmlType) -> Result<(GgufWriter, AdapterReport)> {
    if !matches!(ty, GgmlType::F32 | GgmlType::F16) {
        return Err(Error::invalid("--quantize", format!("a LoRA adapter GGUF is written in f32 or f16, not {ty}")));
    }
    let model_type = lm.model.model_type();
    let arch = arch::arch_of(model_type)?;
    let cfg = lm.model.decoder_config().cloned();
    let mut w = GgufWriter::new();
    super::general(&mut w, arch, "adapter", &lm.name);
    w.kv("adapter.type", GgufValue::String("lora".into()));
    let mut scale = None;
    let mut rank = 0;
    let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> = Vec::new();
    for lin in lm.model.linears_mut() {
        let Some(l) = &lin.lora else { continue };
        if l.magnitude.is_some() {
            return Err(Error::invalid(
                "--format gguf",
                format!("`{}` is a DoRA layer; llama.cpp's LoRA GGUF has no magnitude vector (use --merge)", lin.path),
            ));
        }
        match scale {
            None => scale = Some(l.scale),
            Some(s) if s != l.scale => {
                return Err(Error::invalid(
                    "--format gguf",
                    format!(
                        "`{}` has LoRA scale {} and others {s}; llama.cpp's adapter has one alpha",
                        lin.path, l.scale
                    ),
                ));
            }
            _ => {}
        }
        let (a_shape, b_shape) = (l.a.value.shape().to_vec(), l.b.value.shape().to_vec());
        rank = a_shape[0];
        if rank != b_shape[1] {
            return Err(Error::invalid(
                "--format gguf",
                format!("`{}`: A is {a_shape:?} and B {b_shape:?}; their ranks differ", lin.path),
            ));
        }
        let weight = format!("{}.weight", lin.path);
        // B's rows are the weight's rows: map B under the weight's name to get its permutation.
        let b = map_tensor(model_type, cfg.as_ref(), &weight, l.b.value.to_f32_vec(gpu)?, b_shape.clone());
        let Some(Mapped { name, data: b, .. }) = b else {
            return Err(Error::invalid("--format gguf", format!("`{weight}` has no GGUF name for an adapter")));
        };
        // GPT-2's Conv1D came back transposed: its B must stay [out, r].
        let b = if model_type == "gpt2" { l.b.value.to_f32_vec(gpu)? } else { b };
        tensors.push((format!("{name}.lora_a"), l.a.value.to_f32_vec(gpu)?, a_shape));
        tensors.push((format!("{name}.lora_b"), b, b_shape));
    }
    let Some(scale) = scale else {
        return Err(Error::invalid("--lora", "the adapter attached no LoRA layer to the model"));
    };
    let alpha = scale * rank as f32;
    w.kv("adapter.lora.alpha", GgufValue::F32(alpha));
    let layers = tensors.len() / 2;
    for (name, data, shape) in tensors {
        let cols = shape[1];
        let data = crate::quant::encode(ty, &data, cols, &name)?;
        w.tensor(TensorOut { name, shape, ty, data })?;
    }
    Ok((w, AdapterReport { arch: arch.to_string(), layers, rank, alpha }))
}
