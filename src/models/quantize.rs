//! Quantizing a loaded model's linear layers in place (`kiln train --quantize q4_1`): each f32
//! base weight is read back, quantized on the CPU into GGUF blocks (ggml's reference rounding),
//! uploaded in the block layout and its f32 copy dropped. The error it introduces is measured
//! per tensor type (`q_proj`, `c_attn`, ...). And the way back, for exports and merges.

use std::collections::BTreeMap;

use super::CausalLm;
use crate::autograd::WeightLayout;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::qmatmul::QuantTensor;
use crate::quant::{QuantError, QuantType, QuantWeights};

/// What [`quantize_linears`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct QuantizeReport {
    /// The format, e.g. `q4_1`.
    pub kind: Option<QuantType>,
    /// Error per tensor type (the last component of the layer path), pooled over layers.
    pub by_type: BTreeMap<String, QuantError>,
    /// Layers left in f32, with the reason (rows that are not whole blocks).
    pub kept_f32: Vec<String>,
    pub tensors: usize,
    /// Bytes of the quantized layers before (f32) and after.
    pub bytes_f32: u64,
    pub bytes_quantized: u64,
}

impl QuantizeReport {
    /// A few lines for the terminal: error per tensor type, and what stayed f32.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "quantized {} linear weights to {}: {:.1} MiB -> {:.1} MiB",
            self.tensors,
            self.kind.map_or("?", |k| k.name()),
            self.bytes_f32 as f64 / 1048576.0,
            self.bytes_quantized as f64 / 1048576.0
        )];
        for (t, e) in &self.by_type {
            out.push(format!(
                "  {t:<12} mean |error| {:.3e}  max {:.3e}  (mean |w| {:.3e})",
                e.mean_abs, e.max_abs, e.mean_abs_weight
            ));
        }
        for k in &self.kept_f32 {
            out.push(format!("  kept f32: {k}"));
        }
        out
    }
}

/// Quantizes every f32 or 16-bit (F16/BF16) linear base weight of `model` to `kind` (adapters
/// and layers already in a block format are left alone). A layer whose input size is not whole blocks (32, or 256 for the
/// K-quants) stays f32 and is
/// listed in the report, as llama.cpp falls back for such tensors. Pooled buffers the f32
/// weights freed are released.
pub fn quantize_linears(gpu: &Gpu, model: &mut dyn CausalLm, kind: QuantType) -> Result<QuantizeReport> {
    let mut report = QuantizeReport { kind: Some(kind), ..Default::default() };
    for lin in model.linears_mut() {
        // A 16-bit base (kept so from a bf16/f16 file) is quantized like an f32 one.
        if lin.quant.as_ref().is_some_and(|q| !q.kind.is_16bit() || q.kind == kind) {
            continue;
        }
        let (d_in, d_out) = lin.in_out();
        let block = kind.block_weights();
        if !d_in.is_multiple_of(block) {
            report.kept_f32.push(format!(
                "{}.weight (rows of {d_in} inputs are not a multiple of the block size {block})",
                lin.path
            ));
            continue;
        }
        // Blocks run along the input dimension: [out, in] rows. GPT-2's Conv1D is [in, out]; a
        // 16-bit base is [out, in] already.
        let data = match (&lin.quant, lin.layout) {
            (Some(q), _) => q.download(gpu)?.dequantize(),
            (None, WeightLayout::OutIn) => lin.weight.value.to_f32_vec(gpu)?,
            (None, WeightLayout::InOut) => transpose(&lin.weight.value.to_f32_vec(gpu)?, d_in, d_out),
        };
        let name = format!("{}.weight", lin.path);
        let q = QuantWeights::quantize(kind, &data, d_out, d_in, &name)?;
        let err = QuantError::measure(&data, &q.dequantize());
        let ty = lin.path.rsplit('.').next().unwrap_or("").to_string();
        let e = report.by_type.entry(ty).or_default();
        *e = e.merge(&err);
        let qt = QuantTensor::upload(gpu, &q)?;
        report.tensors += 1;
        report.bytes_f32 += (data.len() * 4) as u64;
        report.bytes_quantized += qt.byte_len();
        lin.set_quantized(qt);
    }
    gpu.submit()?;
    gpu.trim_pool();
    Ok(report)
}

/// Turns every quantized base weight back into f32 (`[out, in]`): exports write f32 models.
pub fn dequantize_linears(gpu: &Gpu, model: &mut dyn CausalLm) -> Result<usize> {
    let mut n = 0;
    for lin in model.linears_mut() {
        if lin.quant.is_some() {
            lin.dequantize(gpu)?;
            n += 1;
        }
    }
    Ok(n)
}

/// The quantized base weights per format: (tensors, weights, GPU bytes).
pub fn quantized_summary(model: &mut dyn CausalLm) -> BTreeMap<String, (usize, usize, u64)> {
    let mut out: BTreeMap<String, (usize, usize, u64)> = BTreeMap::new();
    for lin in model.linears_mut() {
        if let Some(q) = &lin.quant {
            let e = out.entry(q.kind.name().to_string()).or_default();
            e.0 += 1;
            e.1 += q.numel();
            e.2 += q.byte_len();
        }
    }
    out
}

/// A row-major `rows`×`cols` matrix as `cols`×`rows` (an `[in, out]` weight as `[out, in]`).
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}
