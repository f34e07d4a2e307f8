//! A loaded model written as a GGUF file llama.cpp and Ollama load: the inverse of
//! [`super::gguf_decoder`], following llama.cpp's convert_hf_to_gguf.py for the names, metadata
//! and tensor layouts ([`arch`]), its `llama-quantize` for the per-tensor types ([`types`]), the
//! tokenizer carried over ([`vocab`]), and its convert_lora_to_gguf.py for adapters ([`lora`]).
//!
//! The model goes in as Hugging Face holds it ([`CausalLm::hf_weights`]), as the converter
//! reads a folder, and each tensor is changed the way the converter changes it:
//!   - `llama` (Llama, SmolLM2, Mistral): Q and K rows (weights and biases) permuted per head so
//!     llama.cpp's RoPE, which rotates adjacent pairs, sees Hugging Face's halves
//!     (`LlamaModel.permute`);
//!   - Gemma 3: every norm weight stored as 1 + w (`Gemma3Model.norm_shift`);
//!   - GPT-2: the Conv1D weights (`[in, out]`) transposed to `[out, in]`.

pub mod arch;
pub mod lora;
pub mod types;
pub mod vocab;

use std::collections::BTreeMap;
use std::path::Path;

use super::load::LoadedLm;
use super::quantize::transpose;
use crate::error::{Error, Result};
use crate::formats::gguf::write::{GgufWriter, TensorOut};
use crate::formats::gguf::{GgmlType, GgufFile, GgufValue};
use crate::gpu::Gpu;
use crate::quant::QuantError;
pub use types::OutType;

/// What a merged export wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportReport {
    pub arch: String,
    pub out_type: OutType,
    pub tensors: usize,
    /// Tensors per GGUF type (`Q6_K: 2`).
    pub by_type: BTreeMap<String, usize>,
    /// Tensors whose rows the chosen type could not hold, and what they got instead.
    pub fallbacks: Vec<String>,
    /// The rounding error of the quantized tensors, pooled (None when nothing was quantized).
    pub error: Option<QuantError>,
    /// The base's own quantization, undone before merging: `Q4_1 210, Q8_0 1`.
    pub requantized_from: Option<String>,
    pub notes: Vec<String>,
}

impl ExportReport {
    /// Lines for the terminal.
    pub fn lines(&self) -> Vec<String> {
        let types: Vec<String> = self.by_type.iter().map(|(t, n)| format!("{t} {n}")).collect();
        let mut out = vec![format!(
            "{} tensors ({}), llama.cpp architecture `{}`, {}",
            self.tensors,
            types.join(", "),
            self.arch,
            self.out_type
        )];
        if let Some(from) = &self.requantized_from {
            out.push(format!(
                "the base was quantized ({from}): dequantized, merged with the adapter, then quantized once to {}",
                self.out_type
            ));
        }
        if let Some(e) = &self.error {
            out.push(format!(
                "quantization error over {} weights: mean |error| {:.3e}, max {:.3e} (mean |w| {:.3e})",
                e.values, e.mean_abs, e.max_abs, e.mean_abs_weight
            ));
        }
        if !self.fallbacks.is_empty() {
            out.push(format!(
                "{} tensors kept at llama.cpp's fallback type, e.g. {}",
                self.fallbacks.len(),
                self.fallbacks[0]
            ));
        }
        out.extend(self.notes.iter().cloned());
        out
    }
}

/// Where the model came from: the tokenizer is read from it again.
pub enum Source<'a> {
    Gguf(&'a GgufFile),
    Folder(&'a Path),
}

/// The general.* keys every export starts with.
fn general(w: &mut GgufWriter, arch: &str, kind: &str, name: &str) {
    w.kv("general.architecture", GgufValue::String(arch.into()));
    w.kv("general.type", GgufValue::String(kind.into()));
    w.kv("general.name", GgufValue::String(name.into()));
}

/// The block index of a `blk.N.` name.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// GPT-2's GGUF names (llama.cpp's tensor_mapping.py for `gpt2`), with or without the
/// `transformer.` prefix; whether the weight is a Conv1D `[in, out]` to transpose.
fn gpt2_name(hf: &str) -> Option<(String, bool)> {
    let hf = hf.strip_prefix("transformer.").unwrap_or(hf);
    let fixed = match hf {
        "wte.weight" => Some("token_embd.weight"),
        "wpe.weight" => Some("position_embd.weight"),
        "ln_f.weight" => Some("output_norm.weight"),
        "ln_f.bias" => Some("output_norm.bias"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some((f.to_string(), false));
    }
    let (layer, rest) = hf.strip_prefix("h.")?.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let part = match module {
        "ln_1" => "attn_norm",
        "attn.c_attn" => "attn_qkv",
        "attn.c_proj" => "attn_output",
        "ln_2" => "ffn_norm",
        "mlp.c_fc" => "ffn_up",
        "mlp.c_proj" => "ffn_down",
        _ => return None,
    };
    Some((format!("blk.{layer}.{part}.{kind}"), kind == "weight"))
}

/// llama.cpp's Q/K row order from Hugging Face's: per head, row `2i + j` of the result is row
/// `j·half + i` (`LlamaModel.permute`; the inverse of `gguf_decoder::unpermute_rows`).
pub fn permute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let half = rows / heads / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let (dst, src) = (h * 2 * half + 2 * i + j, h * 2 * half + j * half + i);
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// A tensor ready to encode: its GGUF name, row-major shape and values.
pub(crate) struct Mapped {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Maps one Hugging Face tensor of `lm`'s family onto its GGUF name and layout; None for a
/// tensor llama.cpp does not take.
pub(crate) fn map_tensor(
    model_type: &str,
    cfg: Option<&super::decoder::DecoderConfig>,
    name: &str,
    data: Vec<f32>,
    shape: Vec<usize>,
) -> Option<Mapped> {
    if model_type == "gpt2" {
        let (g, conv) = gpt2_name(name)?;
        let conv = conv && ["attn_qkv", "attn_output", "ffn_up", "ffn_down"].iter().any(|p| g.contains(p));
        return Some(if conv && shape.len() == 2 {
            Mapped { name: g, shape: vec![shape[1], shape[0]], data: transpose(&data, shape[0], shape[1]) }
        } else {
            Mapped { name: g, shape, data }
        });
    }
    let cfg = cfg?;
    let g = super::gguf_decoder::gguf_name_in(cfg.sandwich_norms, name)?;
    let mut data = data;
    if arch::arch_of(cfg.model_type).ok()? == "llama" {
        let heads = if g.contains(".attn_q.") {
            Some(cfg.num_attention_heads)
        } else if g.contains(".attn_k.") {
            Some(cfg.num_key_value_heads)
        } else {
            None
        };
        if let Some(heads) = heads {
            let cols = shape.get(1).copied().unwrap_or(1);
            data = permute_rows(&data, shape[0], cols, heads);
        }
    }
    if cfg.model_type == "gemma3_text" && g.ends_with("norm.weight") {
        data.iter_mut().for_each(|v| *v += 1.0);
    }
    Some(Mapped { name: g, shape, data })
}

/// The base's quantized tensors by type (`Q4_1 210, Q8_0 1`), None when it held floats only.
fn base_quantization(source: &Source) -> Option<String> {
    let Source::Gguf(file) = source else { return None };
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for t in &file.tensors {
        if !matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            *count.entry(t.ggml_type.to_string()).or_default() += 1;
        }
    }
    (!count.is_empty()).then(|| count.iter().map(|(t, n)| format!("{t} {n}")).collect::<Vec<_>>().join(", "))
}

/// The model in `lm` (its adapter merged already, every weight f32) as a GGUF file of type
/// `out`, with the tokenizer of `source`.
pub fn merged(gpu: &Gpu, lm: &LoadedLm, source: &Source, out: OutType) -> Result<(GgufWriter, ExportReport)> {
    let model = lm.model.as_ref();
    let model_type = model.model_type();
    let cfg = model.decoder_config();
    let keys = match cfg {
        Some(c) => arch::decoder_keys(c)?,
        None if model_type == "gpt2" => arch::gpt2_keys(&model.config_json())?,
        None => {
            arch::arch_of(model_type)?;
            return Err(Error::invalid(
                "--format gguf",
                format!("a `{model_type}` model is not a decoder kiln writes as GGUF"),
            ));
        }
    };
    let mut w = GgufWriter::new();
    general(&mut w, keys.arch, "model", &lm.name);
    for (k, v) in &keys.kvs {
        w.kv(k, v.clone());
    }
    w.kv("general.file_type", GgufValue::U32(out.file_type()));
    w.kv("general.quantization_version", GgufValue::U32(2));

    let vocab = match source {
        Source::Gguf(file) => vocab::from_gguf(file),
        Source::Folder(dir) => {
            // config.json's eos (the first of a list), as the converter's SpecialVocab reads it.
            let config_eos = cfg.and_then(|c| c.eos_token_id.as_ref()).and_then(|v| match v {
                serde_json::Value::Array(a) => a.first().and_then(|x| x.as_u64()),
                v => v.as_u64(),
            });
            let eos = config_eos.map(|e| e as u32).or(lm.stop.first().copied()).unwrap_or(lm.pad);
            vocab::from_hf(dir, model.shape().vocab, eos, lm.pad)?
        }
    };
    for (k, v) in &vocab.kvs {
        w.kv(k, v.clone());
    }

    let mut report = ExportReport {
        arch: keys.arch.to_string(),
        out_type: out,
        tensors: 0,
        by_type: BTreeMap::new(),
        fallbacks: Vec::new(),
        error: None,
        requantized_from: base_quantization(source).filter(|_| out.is_quantized() || out == OutType::F16),
        notes: keys.notes.clone(),
    };
    report.notes.extend(vocab.notes);

    let n_layers = model.shape().layers;
    let mut mapped: Vec<Mapped> =
        keys.extra.into_iter().map(|(name, data)| Mapped { shape: vec![data.len()], name, data }).collect();
    for (name, data, shape) in model.hf_weights(gpu)? {
        match map_tensor(model_type, cfg, &name, data, shape) {
            Some(m) => mapped.push(m),
            None => {
                return Err(Error::invalid(
                    "gguf export",
                    format!("tensor `{name}` of the {model_type} model has no GGUF name"),
                ));
            }
        }
    }
    let tied = !mapped.iter().any(|m| m.name == "output.weight");
    for m in mapped {
        let place = types::TensorPlace { name: &m.name, shape: &m.shape, layer: layer_of(&m.name), n_layers, tied };
        let (ty, fallback) = types::choose(out, &place);
        report.fallbacks.extend(fallback);
        let cols = m.shape.last().copied().unwrap_or(1);
        let data = crate::quant::encode(ty, &m.data, cols, &m.name)?;
        if !matches!(ty, GgmlType::F32) {
            let e = QuantError::measure(&m.data, &crate::quant::dequantize(ty, &data));
            report.error = Some(report.error.map_or(e, |p| p.merge(&e)));
        }
        *report.by_type.entry(ty.to_string()).or_default() += 1;
        report.tensors += 1;
        w.tensor(TensorOut { name: m.name, shape: m.shape, ty, data })?;
    }
    Ok((w, report))
}

/// The Modelfile beside an export at `out`.
pub fn modelfile_path(out: &Path) -> std::path::PathBuf {
    out.with_file_name("Modelfile")
}

/// `./name` of a file beside the Modelfile.
fn beside(path: &Path) -> String {
    format!("./{}", path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()))
}

/// Writes `w` at `out` and the Modelfile beside it; when the Modelfile cannot be written the
/// GGUF is removed again, so an export is both files or neither.
fn write_with_modelfile(
    w: &GgufWriter,
    out: &Path,
    lm: &LoadedLm,
    from: String,
    adapter: Option<String>,
) -> Result<Option<String>> {
    let template = match &lm.format {
        crate::formats::chat_template::PromptFormat::Chat { template, .. } => Some(template.source().to_string()),
        _ => None,
    };
    let stops = lm.stop.iter().filter_map(|&id| lm.tokenizer.id_to_token(id)).collect();
    let modelfile = crate::formats::modelfile::Modelfile::new(from, adapter, template.as_deref(), stops);
    w.write(out)?;
    if let Err(e) = crate::util::write_atomic(&modelfile_path(out), modelfile.render().as_bytes()) {
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    Ok(modelfile.note)
}

/// `kiln export --merge --format gguf`: the model at `model` with the PEFT adapter at
/// `adapter` folded in, written to `out` as type `ty`, with a Modelfile beside it.
pub fn export_merged(gpu: &Gpu, model: &Path, adapter: &Path, out: &Path, ty: OutType) -> Result<ExportReport> {
    let mut lm = super::load::load_lm(gpu, model)?;
    lm.model.load_adapter(gpu, adapter)?;
    // Quantized bases are merged in f32 and quantized once, at the end.
    super::quantize::dequantize_linears(gpu, lm.model.as_mut())?;
    lm.model.merge_lora(gpu)?;
    let file = if model.extension().is_some_and(|e| e == "gguf") { Some(GgufFile::open(model)?) } else { None };
    let source = match &file {
        Some(f) => Source::Gguf(f),
        None => Source::Folder(model),
    };
    let (w, mut report) = merged(gpu, &lm, &source, ty)?;
    report.notes.extend(write_with_modelfile(&w, out, &lm, beside(out), None)?);
    Ok(report)
}

/// `kiln export --format gguf` without `--merge`: the PEFT adapter at `adapter` as a LoRA GGUF
/// at `out` (tensors `ty`), with a Modelfile whose `FROM` is the base at `model`.
pub fn export_adapter(
    gpu: &Gpu,
    model: &Path,
    adapter: &Path,
    out: &Path,
    ty: GgmlType,
) -> Result<lora::AdapterReport> {
    let mut lm = super::load::load_lm(gpu, model)?;
    lm.model.load_adapter(gpu, adapter)?;
    let (w, report) = lora::adapter(gpu, &mut lm, ty)?;
    let base = std::fs::canonicalize(model).unwrap_or_else(|_| model.to_path_buf());
    write_with_modelfile(&w, out, &lm, base.display().to_string(), Some(beside(out)))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::gguf_decoder::unpermute_rows;

    #[test]
    fn permute_rows_is_what_the_reader_undoes() {
        let (rows, cols, heads) = (24, 3, 3);
        let data: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
        let p = permute_rows(&data, rows, cols, heads);
        assert_ne!(p, data);
        assert_eq!(unpermute_rows(&p, rows, cols, heads), data);
        // Per head, GGUF row 1 is Hugging Face row `half` (4): the pair (0, half) is adjacent.
        assert_eq!(p[cols..2 * cols], data[4 * cols..5 * cols]);
    }

    #[test]
    fn names_and_families() {
        assert_eq!(gpt2_name("transformer.h.3.attn.c_attn.weight"), Some(("blk.3.attn_qkv.weight".into(), true)));
        assert_eq!(gpt2_name("h.0.ln_1.bias"), Some(("blk.0.attn_norm.bias".into(), false)));
        assert_eq!(gpt2_name("wpe.weight"), Some(("position_embd.weight".into(), false)));
        assert_eq!(gpt2_name("h.0.attn.bias"), None);
        assert_eq!(layer_of("blk.12.ffn_down.weight"), Some(12));
        assert_eq!(layer_of("token_embd.weight"), None);
        assert_eq!(arch::arch_of("mistral").unwrap(), "llama");
        assert_eq!(arch::arch_of("gemma3_text").unwrap(), "gemma3");
        let e = arch::arch_of("bert").unwrap_err().to_string();
        assert!(e.contains("bert") && e.contains("llama.cpp"), "{e}");
    }
}
