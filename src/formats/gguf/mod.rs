//! Reader for GGUF, llama.cpp's single-file model format (versions 2 and 3).
//!
//! Layout, all little-endian (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>):
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | metadata_kv_count u64
//! metadata_kv_count x { key: string, value_type: u32, value }
//! tensor_count      x { name: string, n_dims: u32, dims: n_dims x u64, ggml_type: u32, offset: u64 }
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset (offset a multiple of the alignment)
//! ```
//!
//! A string is a u64 byte length followed by UTF-8 bytes (no terminator). An array value is
//! `{ element_type: u32, len: u64, len x value }` and may nest.
//!
//! GGUF lists dims fastest-first: `blk.0.attn_k.weight` with dims `[576, 192]` is a row-major
//! `[192, 576]` matrix (192 output rows of 576 inputs). The bytes are in the same order either way,
//! so [`GgufFile::tensor_f32`] dequantizes the flat data in order and reverses the dims.
//!
//! The whole file is read into memory (the 135M-parameter SmolLM2 file is 98 MB).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use crate::quant::{GgmlType, READABLE_TYPES};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most this many dims (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

/// One metadata value. Arrays hold their elements as values of one type (or nested arrays).
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// The value as a user reads it in a message: `3`, `"llama"`, `an array of 4 values`.
impl std::fmt::Display for GgufValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GgufValue::U8(v) => write!(f, "{v}"),
            GgufValue::I8(v) => write!(f, "{v}"),
            GgufValue::U16(v) => write!(f, "{v}"),
            GgufValue::I16(v) => write!(f, "{v}"),
            GgufValue::U32(v) => write!(f, "{v}"),
            GgufValue::I32(v) => write!(f, "{v}"),
            GgufValue::F32(v) => write!(f, "{v}"),
            GgufValue::Bool(v) => write!(f, "{v}"),
            GgufValue::String(s) => write!(f, "{s:?}"),
            GgufValue::Array(a) => write!(f, "an array of {} values", a.len()),
            GgufValue::U64(v) => write!(f, "{v}"),
            GgufValue::I64(v) => write!(f, "{v}"),
            GgufValue::F64(v) => write!(f, "{v}"),
        }
    }
}

impl GgufValue {
    /// The GGUF name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::F32(_) => "f32",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F64(_) => "f64",
        }
    }

    /// Any integer that is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any float or integer, as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64).or_else(|| self.as_u64().map(|v| v as f64)),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// As stored in the file: fastest-varying first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Row-major shape (the dims reversed): dims `[576, 192]` give shape `[192, 576]`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements (checked against overflow when the file was parsed).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes the tensor takes in the data section; None for an unknown type.
    pub fn n_bytes(&self) -> Option<u64> {
        let (block, block_bytes) = self.ggml_type.block_layout()?;
        Some(self.n_elements() / block * block_bytes)
    }
}

/// A parsed GGUF file, its tensor data held in memory.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    /// `general.alignment`, or 32.
    pub alignment: u64,
    /// The whole file.
    bytes: Vec<u8>,
    /// Where the data section starts in `bytes`.
    data_start: usize,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl GgufFile {
    /// Reads and parses the file at `path`.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        crate::formats::lfs::check_bytes(path, &bytes)?;
        GgufFile::parse(bytes, path)
    }

    /// Parses a GGUF held in memory; `path` only names it in errors.
    pub fn parse(bytes: Vec<u8>, path: impl Into<PathBuf>) -> Result<GgufFile> {
        let path = path.into();
        let mut r = Reader { bytes: &bytes, pos: 0, path: &path };

        let magic = r.take(4, "the magic number")?;
        if magic != MAGIC {
            return Err(
                r.err(format!("not a GGUF file: starts with {magic:02x?}, expected the magic \"GGUF\" (47 47 55 46)"))
            );
        }
        let version = r.u32("the version")?;
        if version != 2 && version != 3 {
            return Err(r.err(format!("GGUF version {version} is not supported; kiln reads versions 2 and 3")));
        }
        let tensor_count = r.u64("the tensor count")?;
        let kv_count = r.u64("the metadata count")?;
        // Every kv takes at least 12 bytes and every tensor info at least 24; a count past what
        // the file could hold is corruption, caught here before anything is allocated for it.
        r.check_count(kv_count, 12, "metadata entries")?;
        r.check_count(tensor_count, 24, "tensor infos")?;

        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let key = r.string(&format!("the key of metadata entry {i}"))?;
            let what = format!("the value of metadata key `{key}`");
            let value_type = r.u32(&what)?;
            let value = r.value(value_type, &what, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(r.err(format!("metadata key `{key}` appears twice")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(r.err(format!("metadata key `general.alignment` is {v}, expected a power of two")));
                }
            },
        };

        let mut tensors = Vec::with_capacity(tensor_count as usize);
        for i in 0..tensor_count {
            let name = r.string(&format!("the name of tensor {i}"))?;
            let what = format!("the info of tensor `{name}`");
            let n_dims = r.u32(&what)?;
            if n_dims > MAX_DIMS {
                return Err(r.err(format!("tensor `{name}` has {n_dims} dims, GGUF allows at most {MAX_DIMS}")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&what)?);
            }
            let ggml_type = GgmlType::from_u32(r.u32(&what)?);
            let offset = r.u64(&what)?;
            let info = GgufTensorInfo { name, dims, ggml_type, offset };
            check_tensor_info(&info, alignment, &path)?;
            tensors.push(info);
        }
        let mut names = std::collections::HashSet::new();
        for t in &tensors {
            if !names.insert(t.name.as_str()) {
                return Err(r.err(format!("tensor `{}` appears twice", t.name)));
            }
        }

        let header_end = r.pos as u64;
        let data_start = header_end.div_ceil(alignment) * alignment;
        let data_start = if tensors.is_empty() {
            // A file with no tensors may end right after its metadata, unpadded.
            data_start.min(bytes.len() as u64)
        } else if data_start > bytes.len() as u64 {
            return Err(r.err(format!(
                "truncated: the data section should start at byte {data_start} (header end \
                 {header_end} padded to {alignment}), but the file has {} bytes",
                bytes.len()
            )));
        } else {
            data_start
        };
        let data_start = data_start as usize;
        let data_len = (bytes.len() - data_start) as u64;
        for t in &tensors {
            // Known sizes were checked for overflow in check_tensor_info.
            if let Some(n) = t.n_bytes()
                && t.offset.checked_add(n).is_none_or(|end| end > data_len)
            {
                return Err(Error::Parse {
                    path: path.clone(),
                    message: format!(
                        "truncated: tensor `{}` ({}, dims {:?}) needs bytes {}..{} of the data \
                         section, which has {data_len} bytes",
                        t.name,
                        t.ggml_type,
                        t.dims,
                        t.offset,
                        t.offset as u128 + n as u128
                    ),
                });
            }
        }

        Ok(GgufFile { path, version, metadata, tensors, alignment, bytes, data_start })
    }

    // ---- metadata ----

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// Ok(None) when the key is missing; an error when it holds something other than a
    /// non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get_as(key, "a non-negative integer", GgufValue::as_u64)
    }

    pub fn get_i64(&self, key: &str) -> Result<Option<i64>> {
        self.get_as(key, "an integer", GgufValue::as_i64)
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get_as(key, "a number", GgufValue::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get_as(key, "a bool", GgufValue::as_bool)
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.get_as(key, "a string", GgufValue::as_str)
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.get_array_of(key, "an array of strings", GgufValue::as_str)
    }

    /// An array of integers (any width), as i64.
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.get_array_of(key, "an array of integers", GgufValue::as_i64)
    }

    pub fn require_u64(&self, key: &str) -> Result<u64> {
        self.get_u64(key)?.ok_or_else(|| self.missing(key, "a non-negative integer"))
    }

    pub fn require_i64(&self, key: &str) -> Result<i64> {
        self.get_i64(key)?.ok_or_else(|| self.missing(key, "an integer"))
    }

    pub fn require_f64(&self, key: &str) -> Result<f64> {
        self.get_f64(key)?.ok_or_else(|| self.missing(key, "a number"))
    }

    pub fn require_bool(&self, key: &str) -> Result<bool> {
        self.get_bool(key)?.ok_or_else(|| self.missing(key, "a bool"))
    }

    pub fn require_str(&self, key: &str) -> Result<&str> {
        self.get_str(key)?.ok_or_else(|| self.missing(key, "a string"))
    }

    pub fn require_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.get_str_array(key)?.ok_or_else(|| self.missing(key, "an array of strings"))
    }

    pub fn require_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        self.get_i64_array(key)?.ok_or_else(|| self.missing(key, "an array of integers"))
    }

    fn get_as<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl Fn(&'a GgufValue) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => convert(v).map(Some).ok_or_else(|| self.wrong_type(key, expected, v)),
        }
    }

    fn get_array_of<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl Fn(&'a GgufValue) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(v) = self.metadata.get(key) else { return Ok(None) };
        let items = v.as_array().ok_or_else(|| self.wrong_type(key, expected, v))?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                convert(item).ok_or_else(|| {
                    self.parse_err(format!(
                        "metadata key `{key}` should be {expected}, but element {i} is a {} ({item:?})",
                        item.type_name()
                    ))
                })
            })
            .collect::<Result<Vec<T>>>()
            .map(Some)
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &GgufValue) -> Error {
        let shown = match found {
            GgufValue::Array(a) => format!("an array of {} values", a.len()),
            GgufValue::String(s) if s.len() > 60 => format!("a string of {} bytes", s.len()),
            other => other.to_string(),
        };
        self.parse_err(format!("metadata key `{key}` should be {expected}, found a {}: {shown}", found.type_name()))
    }

    fn missing(&self, key: &str, expected: &str) -> Error {
        self.parse_err(format!("metadata key `{key}` ({expected}) is missing"))
    }

    fn parse_err(&self, message: String) -> Error {
        Error::Parse { path: self.path.clone(), message }
    }

    // ---- tensors ----

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The info of tensor `name`, or an error naming it and the file.
    pub fn require_tensor(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.tensor_info(name).ok_or_else(|| {
            self.parse_err(format!("no tensor `{name}` in this file (it has {} tensors)", self.tensors.len()))
        })
    }

    /// The raw bytes of tensor `name` as stored (quantized blocks stay blocks), e.g. to upload
    /// Q4 weights to the GPU as they are.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.require_tensor(name)?;
        let n = info.n_bytes().ok_or_else(|| {
            self.parse_err(format!("tensor `{name}` has GGUF type {} whose size kiln does not know", info.ggml_type))
        })?;
        // Bounds were checked in parse().
        let start = self.data_start + info.offset as usize;
        Ok(&self.bytes[start..start + n as usize])
    }

    /// Tensor `name` dequantized to f32, with its row-major shape (the file's dims reversed).
    /// Reads the types of [`READABLE_TYPES`]; any other type is an error.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self.require_tensor(name)?;
        if !info.ggml_type.is_readable() {
            return Err(self
                .parse_err(format!("tensor `{name}` has GGUF type {}, kiln reads {READABLE_TYPES}", info.ggml_type)));
        }
        let bytes = self.tensor_bytes(name)?;
        let n = info.n_elements() as usize;
        let values = crate::quant::dequantize(info.ggml_type, bytes);
        debug_assert_eq!(values.len(), n);
        Ok((values, info.shape()))
    }
}

/// Checks what can be checked of one tensor info before the data section is located.
fn check_tensor_info(t: &GgufTensorInfo, alignment: u64, path: &Path) -> Result<()> {
    let err = |message: String| Error::Parse { path: path.to_path_buf(), message };
    let n = t
        .dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| err(format!("tensor `{}` has dims {:?}, too many elements", t.name, t.dims)))?;
    if let Some((block, block_bytes)) = t.ggml_type.block_layout() {
        let row = t.dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(block) {
            return Err(err(format!(
                "tensor `{}` has type {} (blocks of {block}) but its first dim is {row}, not a \
                 multiple of {block}",
                t.name, t.ggml_type
            )));
        }
        if (n / block).checked_mul(block_bytes).is_none() {
            return Err(err(format!("tensor `{}` has dims {:?}, too many bytes", t.name, t.dims)));
        }
    }
    if !t.offset.is_multiple_of(alignment) {
        return Err(err(format!(
            "tensor `{}` is at data offset {}, not a multiple of the alignment {alignment}",
            t.name, t.offset
        )));
    }
    Ok(())
}

// ---- parsing ----

/// A cursor over the file; every read names what it was reading when it runs out of bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

/// Value type numbers in GGUF metadata.
mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// Nested arrays deeper than this are refused (real files nest at most once).
const MAX_ARRAY_DEPTH: usize = 8;

impl<'a> Reader<'a> {
    fn err(&self, message: String) -> Error {
        Error::Parse { path: self.path.to_path_buf(), message }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: reading {what} needs {n} bytes at byte {}, but the file has {} bytes",
                self.pos,
                self.bytes.len()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Errors when `count` items of at least `min_bytes` each cannot fit in what is left.
    fn check_count(&self, count: u64, min_bytes: u64, what: &str) -> Result<()> {
        if count.saturating_mul(min_bytes) > self.remaining() as u64 {
            return Err(self.err(format!(
                "truncated or corrupt: the header promises {count} {what} at byte {}, but only {} \
                 bytes remain",
                self.pos,
                self.remaining()
            )));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(self.err(format!(
                "truncated: {what} is a string of {len} bytes at byte {}, but only {} bytes remain",
                self.pos,
                self.remaining()
            )));
        }
        let start = self.pos;
        let raw = self.take(len as usize, what)?;
        String::from_utf8(raw.to_vec())
            .map_err(|e| self.err(format!("{what} (at byte {start}) is not valid UTF-8: {e}")))
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<GgufValue> {
        use value_type as t;
        Ok(match ty {
            t::U8 => GgufValue::U8(self.array::<1>(what)?[0]),
            t::I8 => GgufValue::I8(self.array::<1>(what)?[0] as i8),
            t::U16 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            t::I16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            t::U32 => GgufValue::U32(self.u32(what)?),
            t::I32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            t::F32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            t::BOOL => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => {
                    return Err(self.err(format!("{what} is a bool stored as {b}, expected 0 or 1")));
                }
            },
            t::STRING => GgufValue::String(self.string(what)?),
            t::U64 => GgufValue::U64(self.u64(what)?),
            t::I64 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            t::F64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            t::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("{what} nests arrays deeper than {MAX_ARRAY_DEPTH} levels")));
                }
                let elem = self.u32(what)?;
                let len = self.u64(what)?;
                let min_bytes = match elem {
                    t::U8 | t::I8 | t::BOOL => 1,
                    t::U16 | t::I16 => 2,
                    t::U32 | t::I32 | t::F32 => 4,
                    t::STRING | t::U64 | t::I64 | t::F64 => 8,
                    t::ARRAY => 12,
                    other => {
                        return Err(self.err(format!("{what} is an array of value type {other}, expected 0..=12")));
                    }
                };
                self.check_count(len, min_bytes, &format!("elements of {what}"))?;
                let mut items = Vec::with_capacity(len as usize);
                for i in 0..len {
                    items.push(self.value(elem, &format!("element {i} of {what}"), depth + 1)?);
                }
                GgufValue::Array(items)
            }
            other => {
                return Err(self.err(format!(
                    "{what} has value type {other}, expected 0..=12 (u8, i8, u16, i16, u32, i32, \
                     f32, bool, string, array, u64, i64, f64)"
                )));
            }
        })
    }
}

#[doc(hidden)]
pub mod testing;
pub mod write;

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn parse(bytes: Vec<u8>) -> Result<GgufFile> {
        GgufFile::parse(bytes, "test.gguf")
    }

    fn err_text(r: Result<impl fmt::Debug>) -> String {
        match r {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn every_value_type() -> Vec<(&'static str, GgufValue)> {
        use GgufValue::*;
        vec![
            ("t.u8", U8(200)),
            ("t.i8", I8(-100)),
            ("t.u16", U16(60000)),
            ("t.i16", I16(-30000)),
            ("t.u32", U32(4_000_000_000)),
            ("t.i32", I32(-2_000_000_000)),
            ("t.f32", F32(1e-5)),
            ("t.bool", Bool(true)),
            ("t.string", String("naïve 🦀".into())),
            ("t.strings", strings(&["a", "b c", ""])),
            ("t.nested", Array(vec![Array(vec![I32(1), I32(-2)]), Array(vec![I32(3)])])),
            ("t.empty", Array(vec![])),
            ("t.u64", U64(u64::MAX)),
            ("t.i64", I64(i64::MIN)),
            ("t.f64", F64(-2.5e300)),
        ]
    }

    #[test]
    fn reads_metadata_of_every_type_in_v2_and_v3() -> Result<()> {
        for version in [2, 3] {
            let mut b = GgufBuilder::new().version(version);
            for (k, v) in every_value_type() {
                b = b.kv(k, v);
            }
            let f = parse(b.build())?;
            assert_eq!(f.version, version);
            assert!(f.tensors.is_empty());
            for (k, v) in every_value_type() {
                assert_eq!(f.get(k), Some(&v), "key {k}");
            }
            assert_eq!(f.get_u64("t.u8")?, Some(200));
            assert_eq!(f.get_u64("t.u32")?, Some(4_000_000_000));
            assert_eq!(f.get_i64("t.i8")?, Some(-100));
            assert_eq!(f.get_f64("t.f32")?, Some(1e-5f32 as f64));
            assert_eq!(f.get_f64("t.u16")?, Some(60000.0));
            assert!(f.require_bool("t.bool")?);
            assert_eq!(f.require_str("t.string")?, "naïve 🦀");
            assert_eq!(f.require_str_array("t.strings")?, vec!["a", "b c", ""]);
            assert_eq!(f.get_str_array("t.empty")?, Some(vec![]));
            assert_eq!(f.get_u64("absent")?, None);
            let nested = f.get("t.nested").and_then(GgufValue::as_array).expect("nested array");
            assert_eq!(nested[0].as_array().map(|a| a.len()), Some(2));
            // A negative integer is not a u64.
            assert!(GgufValue::I8(-1).as_u64().is_none());
        }
        Ok(())
    }

    /// What each type may lose against the original values, which lie in [-1, 1):
    /// F32 exact; F16, BF16 their rounding of values below 1 (2^-11, 2^-8);
    /// Q8_0 half a step plus the f16 rounding of d: 0.57 * (1/127);
    /// Q4_0 one step (a value opposite the block's largest is clipped at q = 15): 1.01 * (1/8);
    /// Q4_1 half a step plus rounding of d and m: 0.51 * (2/15) + 2^-10.
    const CASES: [(GgmlType, f32); 6] = [
        (GgmlType::F32, 0.0),
        (GgmlType::F16, 1.0 / 2048.0),
        (GgmlType::BF16, 1.0 / 256.0),
        (GgmlType::Q8_0, 0.57 / 127.0),
        (GgmlType::Q4_0, 1.01 / 8.0),
        (GgmlType::Q4_1, 0.51 * 2.0 / 15.0 + 1.0 / 1024.0),
    ];

    fn encode(ty: GgmlType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
        match ty {
            GgmlType::F32 => encode_f32(x),
            GgmlType::F16 => encode_f16(x),
            GgmlType::BF16 => encode_bf16(x),
            GgmlType::Q8_0 => quantize_q8_0(x),
            GgmlType::Q4_0 => quantize_q4_0(x),
            GgmlType::Q4_1 => quantize_q4_1(x),
            other => unreachable!("no test encoder for {other}"),
        }
    }

    /// dims [64, 3]: 3 rows of 64 (two blocks per row); the last row is all zeros (d = 0) and
    /// one block is constant, the edge cases of the quantizers.
    fn test_data(seed: u32) -> Vec<f32> {
        let mut x = seeded(192, seed);
        x[128..].iter_mut().for_each(|v| *v = 0.0);
        x[96..128].iter_mut().for_each(|v| *v = 0.25);
        x
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    fn check_dequantizes(version: u32, alignment: Option<u32>) -> Result<()> {
        let mut b = GgufBuilder::new().version(version);
        if let Some(a) = alignment {
            b = b.kv("general.alignment", GgufValue::U32(a));
        }
        let mut expected = Vec::new();
        for (i, (ty, _)) in CASES.iter().enumerate() {
            let x = test_data(i as u32 + 7);
            let (bytes, decoded) = encode(*ty, &x);
            b = b.tensor(&format!("w.{ty}"), &[64, 3], *ty, bytes.clone());
            expected.push((x, bytes, decoded));
        }
        let f = parse(b.build())?;
        assert_eq!(f.alignment, alignment.unwrap_or(32) as u64);
        for ((ty, tol), (x, bytes, decoded)) in CASES.iter().zip(&expected) {
            let name = format!("w.{ty}");
            let (values, shape) = f.tensor_f32(&name)?;
            assert_eq!(shape, vec![3, 64], "{name}: row-major shape is the dims reversed");
            assert_eq!(f.tensor_bytes(&name)?, &bytes[..], "{name}: raw bytes");
            let vs_decoded = max_abs_diff(&values, decoded);
            let vs_original = max_abs_diff(&values, x);
            println!(
                "{name}: max abs err vs reference decode {vs_decoded:e} (tol 1e-7), \
                 vs original {vs_original:e} (tol {tol:e})"
            );
            assert!(vs_decoded <= 1e-7, "{name}: decode differs from reference by {vs_decoded}");
            assert!(vs_original <= *tol, "{name}: error {vs_original} over {tol}");
            // Row-major: element [r][c] is at r * 64 + c.
            assert_eq!(values[64 + 5], decoded[64 + 5]);
        }
        Ok(())
    }

    #[test]
    fn dequantizes_every_readable_type() -> Result<()> {
        check_dequantizes(3, None)
    }

    #[test]
    fn honours_alignment_and_version_2() -> Result<()> {
        check_dequantizes(2, Some(64))?;
        check_dequantizes(3, Some(8))
    }

    #[test]
    fn shape_reverses_dims() {
        let t = GgufTensorInfo {
            name: "blk.0.attn_k.weight".into(),
            dims: vec![576, 192],
            ggml_type: GgmlType::Q4_1,
            offset: 0,
        };
        assert_eq!(t.shape(), vec![192, 576]);
        assert_eq!(t.n_elements(), 576 * 192);
        assert_eq!(t.n_bytes(), Some(576 * 192 / 32 * 20));
    }

    #[test]
    fn rejects_bad_magic_and_version() {
        let mut bytes = GgufBuilder::new().build();
        bytes[0] = b'X';
        let e = err_text(parse(bytes));
        assert!(e.contains("test.gguf") && e.contains("not a GGUF file"), "{e}");
        let e = err_text(parse(GgufBuilder::new().version(1).build()));
        assert!(e.contains("GGUF version 1 is not supported"), "{e}");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let (q, _) = quantize_q4_1(&seeded(64, 3));
        let bytes = GgufBuilder::new()
            .kv("general.name", GgufValue::String("tiny".into()))
            .kv("t.strings", strings(&["x", "yz"]))
            .tensor("a", &[4], GgmlType::F32, vec![0; 16])
            .tensor("b", &[64], GgmlType::Q4_1, q)
            .build();
        assert!(parse(bytes.clone()).is_ok());
        for cut in 0..bytes.len() {
            let e = err_text(parse(bytes[..cut].to_vec()));
            assert!(e.contains("test.gguf") && e.contains("truncated"), "cut at {cut}: {e}");
        }
        let e = err_text(parse(bytes[..bytes.len() - 1].to_vec()));
        assert!(e.contains("tensor `b`"), "{e}");
    }

    /// Corrupting any byte gives a file or an error, never a panic (nor a huge allocation).
    #[test]
    fn corrupt_bytes_never_panic() {
        let (q, _) = quantize_q4_0(&seeded(64, 5));
        let bytes = GgufBuilder::new()
            .kv("general.name", GgufValue::String("tiny".into()))
            .kv("t.nested", GgufValue::Array(vec![strings(&["x"]), strings(&["y", "z"])]))
            .kv("t.f", GgufValue::F32(0.5))
            .tensor("a", &[2, 2], GgmlType::F16, vec![0; 8])
            .tensor("b", &[64], GgmlType::Q4_0, q)
            .build();
        for at in 0..bytes.len() {
            for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut corrupt = bytes.clone();
                corrupt[at] = value;
                if let Ok(f) = parse(corrupt) {
                    for t in &f.tensors {
                        let _ = f.tensor_f32(&t.name);
                    }
                }
            }
        }
    }

    #[test]
    fn unsupported_type_is_named() -> Result<()> {
        let f = parse(
            GgufBuilder::new()
                .tensor("blk.0.ffn_down.weight", &[256, 2], GgmlType::IQ4_XS, vec![0; 272])
                .tensor("blk.0.ffn_up.weight", &[256, 2], GgmlType::Q6_K, vec![0; 420])
                .raw_tensor("odd", &[4], 99, vec![], None)
                .build(),
        )?;
        let e = err_text(f.tensor_f32("blk.0.ffn_down.weight"));
        assert!(
            e.contains(
                "tensor `blk.0.ffn_down.weight` has GGUF type IQ4_XS, kiln reads F32, F16, BF16, \
                 Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K"
            ),
            "{e}"
        );
        // Raw blocks are still available.
        assert_eq!(f.tensor_bytes("blk.0.ffn_down.weight")?.len(), 272);
        // The K-quants are read (their decoding is held to gguf-py's in `quant::codec`).
        assert_eq!(f.tensor_f32("blk.0.ffn_up.weight")?, (vec![0.0; 512], vec![2, 256]));
        let e = err_text(f.tensor_f32("odd"));
        assert!(e.contains("tensor `odd` has GGUF type unknown(99)"), "{e}");
        let e = err_text(f.tensor_f32("nope"));
        assert!(e.contains("no tensor `nope`"), "{e}");
        Ok(())
    }

    #[test]
    fn missing_or_mistyped_key_is_named() -> Result<()> {
        let f = parse(
            GgufBuilder::new()
                .kv("general.name", GgufValue::String("tiny".into()))
                .kv("t.ints", GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(-1)]))
                .build(),
        )?;
        let e = err_text(f.require_u64("llama.block_count"));
        assert!(e.contains("test.gguf") && e.contains("`llama.block_count`"), "{e}");
        assert!(e.contains("missing"), "{e}");
        let e = err_text(f.get_u64("general.name"));
        assert!(e.contains("`general.name` should be a non-negative integer, found a string"), "{e}");
        let e = err_text(f.require_str_array("t.ints"));
        assert!(e.contains("`t.ints` should be an array of strings, but element 0 is a i32"), "{e}");
        assert_eq!(f.require_i64_array("t.ints")?, vec![1, -1]);
        Ok(())
    }

    #[test]
    fn rejects_inconsistent_tensor_infos() {
        let cases: [(GgufBuilder, &str); 5] = [
            (
                GgufBuilder::new().raw_tensor("far", &[4], 0, vec![0; 16], Some(1 << 20)),
                "truncated: tensor `far` (F32, dims [4]) needs bytes 1048576..1048592",
            ),
            (
                GgufBuilder::new().raw_tensor("skew", &[4], 0, vec![0; 48], Some(4)),
                "tensor `skew` is at data offset 4, not a multiple of the alignment 32",
            ),
            (
                GgufBuilder::new().raw_tensor("q", &[48], 8, vec![0; 68], None),
                "tensor `q` has type Q8_0 (blocks of 32) but its first dim is 48",
            ),
            (
                GgufBuilder::new().raw_tensor("big", &[1 << 40, 1 << 40], 0, vec![], None),
                "tensor `big` has dims [1099511627776, 1099511627776], too many elements",
            ),
            (
                GgufBuilder::new().tensor("twice", &[1], GgmlType::F32, vec![0; 4]).tensor(
                    "twice",
                    &[1],
                    GgmlType::F32,
                    vec![0; 4],
                ),
                "tensor `twice` appears twice",
            ),
        ];
        for (b, want) in cases {
            let e = err_text(parse(b.build()));
            assert!(e.contains(want), "expected `{want}` in: {e}");
        }
        let e = err_text(parse(GgufBuilder::new().kv("general.alignment", GgufValue::U32(24)).build()));
        assert!(e.contains("`general.alignment` is 24,") && e.contains("power of two") && !e.contains("U32("), "{e}");
    }

    #[test]
    fn rejects_corrupt_metadata() {
        // A count larger than the file: refused before allocating.
        let mut bytes = GgufBuilder::new().kv("k", GgufValue::U8(1)).build();
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = err_text(parse(bytes));
        assert!(e.contains("promises 18446744073709551615 metadata entries"), "{e}");
        // An unknown value type.
        let mut bytes = GgufBuilder::new().kv("k", GgufValue::U8(1)).build();
        let type_at = 24 + 8 + 1;
        bytes[type_at..type_at + 4].copy_from_slice(&13u32.to_le_bytes());
        let e = err_text(parse(bytes));
        assert!(e.contains("the value of metadata key `k` has value type 13"), "{e}");
        // An array of an unknown type, claiming more elements than memory holds.
        let mut bytes = GgufBuilder::new().kv("k", strings(&[])).build();
        bytes[type_at + 4..type_at + 8].copy_from_slice(&99u32.to_le_bytes());
        bytes[type_at + 8..type_at + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = err_text(parse(bytes));
        assert!(e.contains("`k` is an array of value type 99"), "{e}");
        // A bool that is not 0 or 1.
        let mut bytes = GgufBuilder::new().kv("k", GgufValue::Bool(true)).build();
        bytes[type_at + 4] = 7;
        let e = err_text(parse(bytes));
        assert!(e.contains("bool stored as 7"), "{e}");
    }
}
