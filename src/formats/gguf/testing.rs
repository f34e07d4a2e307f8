//! Builders of GGUF files (valid and deliberately broken) and block encoders, for tests, the
//! bad-input suite and the fuzzers' seed corpus. Files are built in memory.

use half::{bf16, f16};

use super::write::{type_of, write_string, write_value};
use super::{GgmlType, GgufValue};
use crate::quant::{QuantType, QuantWeights};

pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
    /// Written instead of the real offset, to build broken files.
    pub offset_override: Option<u64>,
}

pub struct GgufBuilder {
    pub version: u32,
    pub kvs: Vec<(String, GgufValue)>,
    pub tensors: Vec<TensorSpec>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufBuilder {
    pub fn new() -> Self {
        GgufBuilder { version: 3, kvs: Vec::new(), tensors: Vec::new() }
    }

    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    pub fn kv(mut self, key: &str, value: GgufValue) -> Self {
        self.kvs.push((key.to_string(), value));
        self
    }

    pub fn tensor(self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Self {
        self.raw_tensor(name, dims, ty.to_u32(), data, None)
    }

    pub fn raw_tensor(
        mut self,
        name: &str,
        dims: &[u64],
        ggml_type: u32,
        data: Vec<u8>,
        offset_override: Option<u64>,
    ) -> Self {
        self.tensors.push(TensorSpec { name: name.to_string(), dims: dims.to_vec(), ggml_type, data, offset_override });
        self
    }

    /// The file's bytes; no padding after the last tensor, so any cut truncates data.
    pub fn build(&self) -> Vec<u8> {
        let alignment =
            self.kvs.iter().find(|(k, _)| k == "general.alignment").and_then(|(_, v)| v.as_u64()).unwrap_or(32)
                as usize;
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (key, value) in &self.kvs {
            write_string(&mut out, key);
            out.extend(type_of(value).to_le_bytes());
            write_value(&mut out, value).expect("test arrays hold one type");
        }
        let mut data = Vec::new();
        for spec in &self.tensors {
            data.resize(data.len().div_ceil(alignment) * alignment, 0);
            write_string(&mut out, &spec.name);
            out.extend((spec.dims.len() as u32).to_le_bytes());
            for d in &spec.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(spec.ggml_type.to_le_bytes());
            out.extend(spec.offset_override.unwrap_or(data.len() as u64).to_le_bytes());
            data.extend(&spec.data);
        }
        out.resize(out.len().div_ceil(alignment) * alignment, 0);
        out.extend(data);
        out
    }
}

pub fn strings(items: &[&str]) -> GgufValue {
    GgufValue::Array(items.iter().map(|s| GgufValue::String(s.to_string())).collect())
}

/// Q8_0 blocks of `x` (a whole number of blocks) and the values they decode to.
pub fn quantize_q8_0(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    quantize(QuantType::Q8_0, x)
}

/// Q4_0 blocks of `x` and the values they decode to.
pub fn quantize_q4_0(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    quantize(QuantType::Q4_0, x)
}

/// Q4_1 blocks of `x` and the values they decode to.
pub fn quantize_q4_1(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    quantize(QuantType::Q4_1, x)
}

fn quantize(kind: QuantType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let w = QuantWeights::quantize(kind, x, 1, x.len(), "test tensor").expect("test data is whole blocks");
    let decoded = w.dequantize();
    (w.blocks, decoded)
}

pub fn encode_f32(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    (x.iter().flat_map(|v| v.to_le_bytes()).collect(), x.to_vec())
}

pub fn encode_f16(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
    (h.iter().flat_map(|v| v.to_le_bytes()).collect(), h.iter().map(|v| v.to_f32()).collect())
}

pub fn encode_bf16(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let h: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    (h.iter().flat_map(|v| v.to_le_bytes()).collect(), h.iter().map(|v| v.to_f32()).collect())
}

/// Seeded values in [-1, 1) (xorshift32).
pub fn seeded(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}
