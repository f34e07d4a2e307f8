//! Writer for GGUF version 3, the inverse of the reader in this module: metadata in the order
//! given, the tensor table, then each tensor's bytes at an offset that is a multiple of the
//! alignment (`general.alignment`, 32 unless a key says otherwise), as gguf-py's `GGUFWriter`
//! lays a file out. Shapes are given row-major (`[rows, cols]`) and written fastest-first.
//!
//! The file is written under a temporary name beside the target and renamed when whole
//! ([`crate::util::write_file_whole`]), so a failed write leaves nothing half-written.

use std::io::Write;
use std::path::Path;

use super::{DEFAULT_ALIGNMENT, GgmlType, GgufValue, MAGIC, value_type as t};
use crate::error::{Error, Result};

/// One tensor to write: its GGUF name, row-major shape, type and encoded bytes.
#[derive(Clone, Debug)]
pub struct TensorOut {
    pub name: String,
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    pub data: Vec<u8>,
}

/// A GGUF file being assembled in memory.
#[derive(Default)]
pub struct GgufWriter {
    kvs: Vec<(String, GgufValue)>,
    tensors: Vec<TensorOut>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (replacing an earlier value, keeping its place).
    pub fn kv(&mut self, key: &str, value: GgufValue) {
        match self.kvs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.kvs.push((key.to_string(), value)),
        }
    }

    pub fn kvs(&self) -> &[(String, GgufValue)] {
        &self.kvs
    }

    pub fn tensors(&self) -> &[TensorOut] {
        &self.tensors
    }

    /// Adds a tensor; its byte count must be what its type and shape take.
    pub fn tensor(&mut self, tensor: TensorOut) -> Result<()> {
        let n: usize = tensor.shape.iter().product();
        let (block, block_bytes) = tensor.ty.block_layout().ok_or_else(|| {
            Error::invalid("gguf writer", format!("tensor `{}`: type {} has no known size", tensor.name, tensor.ty))
        })?;
        let cols = tensor.shape.last().copied().unwrap_or(1) as u64;
        if !cols.is_multiple_of(block) || n as u64 / block * block_bytes != tensor.data.len() as u64 {
            return Err(Error::invalid(
                "gguf writer",
                format!(
                    "tensor `{}` ({}, shape {:?}) has {} bytes; its rows must be whole blocks of {block} taking {block_bytes} bytes each",
                    tensor.name,
                    tensor.ty,
                    tensor.shape,
                    tensor.data.len()
                ),
            ));
        }
        if self.tensors.iter().any(|x| x.name == tensor.name) {
            return Err(Error::invalid("gguf writer", format!("tensor `{}` added twice", tensor.name)));
        }
        self.tensors.push(tensor);
        Ok(())
    }

    fn alignment(&self) -> Result<u64> {
        match self.kvs.iter().find(|(k, _)| k == "general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => Ok(a),
                _ => Err(Error::invalid("gguf writer", format!("general.alignment is {v}, expected a power of two"))),
            },
        }
    }

    /// The header: magic, counts, metadata, tensor table, padded to the alignment.
    fn header(&self) -> Result<Vec<u8>> {
        let alignment = self.alignment()?;
        let mut out = MAGIC.to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (key, value) in &self.kvs {
            write_string(&mut out, key);
            out.extend(type_of(value).to_le_bytes());
            write_value(&mut out, value).map_err(|m| Error::invalid("gguf writer", format!("key `{key}`: {m}")))?;
        }
        let mut offset = 0u64;
        for tensor in &self.tensors {
            write_string(&mut out, &tensor.name);
            out.extend((tensor.shape.len() as u32).to_le_bytes());
            for &d in tensor.shape.iter().rev() {
                out.extend((d as u64).to_le_bytes());
            }
            out.extend(tensor.ty.to_u32().to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = (offset + tensor.data.len() as u64).div_ceil(alignment) * alignment;
        }
        out.resize((out.len() as u64).div_ceil(alignment) as usize * alignment as usize, 0);
        Ok(out)
    }

    /// Writes the whole file to `w`.
    pub fn write_to(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let alignment = self.alignment().map_err(std::io::Error::other)? as usize;
        w.write_all(&self.header().map_err(std::io::Error::other)?)?;
        for tensor in &self.tensors {
            w.write_all(&tensor.data)?;
            let pad = tensor.data.len().div_ceil(alignment) * alignment - tensor.data.len();
            w.write_all(&vec![0u8; pad])?;
        }
        Ok(())
    }

    /// The whole file in memory (tests).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out).map_err(|e| Error::invalid("gguf writer", e.to_string()))?;
        Ok(out)
    }

    /// Writes the file at `path` through a temporary name and a rename.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::util::write_file_whole(path, |w| self.write_to(w))
    }
}

pub(super) fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// The GGUF type number of a value.
pub(super) fn type_of(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => t::U8,
        GgufValue::I8(_) => t::I8,
        GgufValue::U16(_) => t::U16,
        GgufValue::I16(_) => t::I16,
        GgufValue::U32(_) => t::U32,
        GgufValue::I32(_) => t::I32,
        GgufValue::F32(_) => t::F32,
        GgufValue::Bool(_) => t::BOOL,
        GgufValue::String(_) => t::STRING,
        GgufValue::Array(_) => t::ARRAY,
        GgufValue::U64(_) => t::U64,
        GgufValue::I64(_) => t::I64,
        GgufValue::F64(_) => t::F64,
    }
}

/// Appends a value's bytes (without its type). An array's elements must share one type (an
/// empty array is written as an array of strings, as gguf-py does for an empty list).
pub(super) fn write_value(out: &mut Vec<u8>, v: &GgufValue) -> std::result::Result<(), String> {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend(x.to_le_bytes()),
        GgufValue::U16(x) => out.extend(x.to_le_bytes()),
        GgufValue::I16(x) => out.extend(x.to_le_bytes()),
        GgufValue::U32(x) => out.extend(x.to_le_bytes()),
        GgufValue::I32(x) => out.extend(x.to_le_bytes()),
        GgufValue::F32(x) => out.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(*x as u8),
        GgufValue::String(s) => write_string(out, s),
        GgufValue::Array(items) => {
            let elem = items.first().map(type_of).unwrap_or(t::STRING);
            out.extend(elem.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for (i, item) in items.iter().enumerate() {
                if type_of(item) != elem {
                    return Err(format!(
                        "array element {i} is a {}, the first is a {}; GGUF arrays hold one type",
                        item.type_name(),
                        items[0].type_name()
                    ));
                }
                write_value(out, item)?;
            }
        }
        GgufValue::U64(x) => out.extend(x.to_le_bytes()),
        GgufValue::I64(x) => out.extend(x.to_le_bytes()),
        GgufValue::F64(x) => out.extend(x.to_le_bytes()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf::GgufFile;
    use crate::formats::gguf::testing::seeded;
    use crate::quant::encode;

    /// Every value type, nested arrays and an odd alignment, written and read back by kiln's
    /// reader; tensors of every type the exporter writes decode to what was encoded.
    #[test]
    fn written_files_read_back_with_the_same_metadata_and_tensors() {
        let mut w = GgufWriter::new();
        let values = [
            ("a.u8", GgufValue::U8(7)),
            ("a.i8", GgufValue::I8(-7)),
            ("a.u16", GgufValue::U16(700)),
            ("a.i16", GgufValue::I16(-700)),
            ("a.u32", GgufValue::U32(70_000)),
            ("a.i32", GgufValue::I32(-70_000)),
            ("a.f32", GgufValue::F32(0.25)),
            ("a.bool", GgufValue::Bool(true)),
            ("a.string", GgufValue::String("héllo".into())),
            ("a.u64", GgufValue::U64(1 << 40)),
            ("a.i64", GgufValue::I64(-(1 << 40))),
            ("a.f64", GgufValue::F64(1e-300)),
            ("a.strings", GgufValue::Array(vec![GgufValue::String("x y".into()), GgufValue::String("".into())])),
            ("a.nested", GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::I32(1)]), GgufValue::Array(vec![])])),
            ("general.alignment", GgufValue::U32(64)),
        ];
        for (k, v) in &values {
            w.kv(k, v.clone());
        }
        let (rows, cols) = (3, 256);
        let x = seeded(rows * cols, 11);
        let mut decoded = Vec::new();
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let data = encode(ty, &x, cols, "t").unwrap();
            decoded.push((ty, crate::quant::dequantize(ty, &data)));
            w.tensor(TensorOut { name: format!("t.{ty}"), shape: vec![rows, cols], ty, data }).unwrap();
        }
        // A 1-D tensor whose bytes are not a multiple of the alignment: the next one is padded.
        w.tensor(TensorOut { name: "norm".into(), shape: vec![5], ty: GgmlType::F32, data: vec![0; 20] }).unwrap();
        let file = GgufFile::parse(w.to_bytes().unwrap(), "written.gguf").unwrap();
        assert_eq!(file.version, 3);
        assert_eq!(file.alignment, 64);
        for (k, v) in &values {
            assert_eq!(file.get(k), Some(v), "{k}");
        }
        for (ty, want) in decoded {
            let info = file.require_tensor(&format!("t.{ty}")).unwrap();
            assert_eq!(info.ggml_type, ty);
            assert_eq!(info.dims, [cols as u64, rows as u64]);
            assert_eq!(info.offset % 64, 0);
            assert_eq!(file.tensor_f32(&info.name).unwrap().0, want, "{ty}");
        }
        assert_eq!(file.tensor_f32("norm").unwrap().1, [5]);
    }

    #[test]
    fn bad_tensors_and_mixed_arrays_are_refused_by_name() {
        let mut w = GgufWriter::new();
        let e = w
            .tensor(TensorOut { name: "blk.0.x".into(), shape: vec![2, 100], ty: GgmlType::Q4_K, data: vec![] })
            .unwrap_err();
        assert!(e.to_string().contains("blk.0.x"), "{e}");
        w.kv("mixed", GgufValue::Array(vec![GgufValue::U32(1), GgufValue::String("a".into())]));
        let e = w.to_bytes().unwrap_err();
        assert!(e.to_string().contains("mixed"), "{e}");
    }
}
