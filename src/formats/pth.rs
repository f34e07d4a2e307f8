//! PyTorch checkpoints (`.pth`, `.pt`, `.bin` written by `torch.save`), read without Python, in
//! both of torch's formats:
//!
//! - **zip** (torch ≥ 1.6): a stored (uncompressed) zip holding `<prefix>/data.pkl`, the pickle
//!   of the object, and `<prefix>/data/<key>`, one raw little-endian storage per key;
//! - **legacy** (`_use_new_zipfile_serialization=False`, e.g. `efficientnet-lite0-57934424.pth`):
//!   five pickles in a row (magic number, protocol version, system info, the object, the list of
//!   storage keys), then each storage as an int64 element count and its raw bytes.
//!
//! In both, a tensor is a call `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
//! ...)` whose storage is a *persistent id* `('storage', torch.FloatStorage, key, location,
//! numel)`. The pickle is read by [`pickle`](self::Unpickler), a small stack machine over the
//! protocol-2..5 opcodes torch emits that builds plain values and never runs code: globals stay
//! names, and only the calls torch uses for tensors and ordered dicts mean anything.
//!
//! No well-kept crate reads these: `serde-pickle` has no persistent ids, and candle's reader is
//! part of candle-core. The result becomes a [`SafetensorsSource`] in memory, so every model
//! loads `.pth` weights through the same checked `WeightSource` as safetensors.

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;

use super::safetensors::SafetensorsSource;
use crate::error::{Error, Result};

/// One tensor of a checkpoint, contiguous, little-endian.
#[derive(Clone, Debug, PartialEq)]
pub struct PthTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// The tensors of a checkpoint by name, in file order. A `state_dict` or `model` entry holding
/// the tensors is unwrapped (training scripts save `{"state_dict": ..., "epoch": ...}`); other
/// non-tensor entries are left out.
pub fn read(path: &Path) -> Result<Vec<(String, PthTensor)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    super::lfs::check_bytes(path, &bytes)?;
    let bad = |message: String| Error::Parse { path: path.to_path_buf(), message };
    let (object, storages) = if bytes.starts_with(b"PK\x03\x04") {
        read_zip(&bytes).map_err(bad)?
    } else if bytes.first() == Some(&0x80) {
        read_legacy(&bytes).map_err(bad)?
    } else {
        return Err(
            bad("not a PyTorch checkpoint: neither a zip (torch.save) nor a pickle (the legacy format)".into()),
        );
    };
    let dict = state_dict(object).ok_or_else(|| bad("holds no dict of tensors (a state_dict)".into()))?;
    let mut out = Vec::new();
    for (key, value) in dict {
        let Value::Str(name) = key else { continue };
        let Value::Tensor(t) = value else { continue };
        let tensor = t.materialize(&storages).map_err(|m| bad(format!("tensor `{name}`: {m}")))?;
        out.push((name, tensor));
    }
    if out.is_empty() {
        return Err(bad("the state_dict holds no tensors".into()));
    }
    Ok(out)
}

/// The checkpoint as a [`SafetensorsSource`] (f64 tensors narrowed to f32, the only dtype kiln
/// does not read from safetensors).
pub fn open(path: &Path) -> Result<SafetensorsSource> {
    let tensors = read(path)?;
    let narrowed: Vec<(String, PthTensor)> = tensors
        .into_iter()
        .map(|(n, t)| {
            if t.dtype != Dtype::F64 {
                return (n, t);
            }
            let bytes = t
                .bytes
                .chunks_exact(8)
                .flat_map(|b| (f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).to_le_bytes())
                .collect();
            (n, PthTensor { dtype: Dtype::F32, shape: t.shape, bytes })
        })
        .collect();
    let views = narrowed
        .iter()
        .map(|(n, t)| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Parse { path: path.to_path_buf(), message: format!("tensor `{n}`: {e}") })
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })?;
    SafetensorsSource::from_bytes(path, &bytes)
}

/// The dict of tensors: the object itself, or its `state_dict` / `model` entry.
fn state_dict(object: Value) -> Option<Vec<(Value, Value)>> {
    let Value::Dict(items) = object else { return None };
    let wrapped = items.iter().find_map(|(k, v)| match (k, v) {
        (Value::Str(k), Value::Dict(inner)) if k == "state_dict" || k == "model" => Some(inner.clone()),
        _ => None,
    });
    Some(wrapped.unwrap_or(items))
}

type Storages = HashMap<String, Vec<u8>>;

/// The object and its storages from a torch zip checkpoint.
fn read_zip(bytes: &[u8]) -> std::result::Result<(Value, Storages), String> {
    let entries = zip_entries(bytes)?;
    let pkl = entries
        .keys()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .ok_or("a zip without data.pkl: not a torch.save checkpoint")?
        .clone();
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    let object = Unpickler::new(entries[&pkl]).load()?;
    let storages = entries
        .iter()
        .filter_map(|(n, data)| n.strip_prefix(prefix)?.strip_prefix("data/").map(|k| (k.to_string(), data.to_vec())))
        .collect();
    Ok((object, storages))
}

/// The files of a zip, by name. Only stored (uncompressed) entries, which is what torch writes;
/// a compressed entry or a zip64 archive is refused by name.
fn zip_entries(bytes: &[u8]) -> std::result::Result<HashMap<String, &[u8]>, String> {
    let u16_at = |i: usize| bytes.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |i: usize| bytes.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let short = || "the zip is truncated".to_string();
    // The end-of-central-directory record is in the last 64 KiB + 22 bytes (its comment's limit).
    let lo = bytes.len().saturating_sub(22 + 65_535);
    let eocd = (lo..bytes.len().saturating_sub(21))
        .rev()
        .find(|&i| bytes[i..i + 4] == *b"PK\x05\x06")
        .ok_or("no end of central directory: a truncated zip")?;
    let count = u16_at(eocd + 10).ok_or_else(short)?;
    let mut at = u32_at(eocd + 16).ok_or_else(short)?;
    if count == 0xFFFF || at == 0xFFFF_FFFF {
        return Err("a zip64 checkpoint (over 4 GiB); kiln reads zip checkpoints up to 4 GiB".into());
    }
    let mut out = HashMap::new();
    for _ in 0..count {
        if bytes.get(at..at + 4) != Some(b"PK\x01\x02") {
            return Err("a damaged central directory".into());
        }
        let method = u16_at(at + 10).ok_or_else(short)?;
        let size = u32_at(at + 20).ok_or_else(short)?;
        let (name_len, extra_len, comment_len) = (
            u16_at(at + 28).ok_or_else(short)?,
            u16_at(at + 30).ok_or_else(short)?,
            u16_at(at + 32).ok_or_else(short)?,
        );
        let local = u32_at(at + 42).ok_or_else(short)?;
        let name = String::from_utf8_lossy(bytes.get(at + 46..at + 46 + name_len).ok_or_else(short)?).into_owned();
        if method != 0 {
            return Err(format!("zip entry `{name}` is compressed (method {method}); torch.save stores entries"));
        }
        if bytes.get(local..local + 4) != Some(b"PK\x03\x04") {
            return Err(format!("zip entry `{name}`: no local header where the directory says"));
        }
        let data_at = local + 30 + u16_at(local + 26).ok_or_else(short)? + u16_at(local + 28).ok_or_else(short)?;
        let data = bytes.get(data_at..data_at + size).ok_or_else(|| format!("zip entry `{name}` is truncated"))?;
        out.insert(name, data);
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

/// The object and its storages from a legacy (pickle-only) checkpoint.
fn read_legacy(bytes: &[u8]) -> std::result::Result<(Value, Storages), String> {
    let mut p = Unpickler::new(bytes);
    match p.load()? {
        Value::BigInt if p.magic_ok == Some(true) => {}
        _ => return Err("a pickle, but not a torch checkpoint (no torch magic number first)".into()),
    }
    match p.load()? {
        Value::Int(1001) => {}
        other => return Err(format!("legacy protocol version {other:?}; kiln reads 1001")),
    }
    let _sys_info = p.load()?;
    let object = p.load()?;
    let Value::List(keys) = p.load()? else { return Err("no list of storage keys after the object".into()) };
    let mut at = p.pos;
    let mut storages = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else { return Err("a storage key that is not a string".into()) };
        let size = p.storage_sizes.get(&key).copied().ok_or_else(|| format!("storage `{key}` is listed but unused"))?;
        let count = bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .ok_or_else(|| format!("truncated before storage `{key}`"))?;
        let n = count.checked_mul(size).ok_or("a storage too large")?;
        let data = bytes.get(at + 8..at + 8 + n).ok_or_else(|| format!("storage `{key}` is truncated"))?;
        storages.insert(key, data.to_vec());
        at += 8 + n;
    }
    Ok((object, storages))
}

/// A value of the pickle: plain data, names of globals, and what torch's calls build. Some
/// payloads are only ever shown (in errors, through Debug).
#[derive(Clone, Debug)]
#[allow(dead_code)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too long for i64 (only torch's magic number is one).
    BigInt,
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage {
        key: String,
        dtype: Dtype,
    },
    Tensor(TensorRef),
    /// A call kiln does not interpret (kept so that what surrounds it still loads).
    Opaque,
}

#[derive(Clone, Debug)]
struct TensorRef {
    key: String,
    dtype: Dtype,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

impl TensorRef {
    /// The tensor's elements gathered contiguous from its storage by offset and strides.
    fn materialize(&self, storages: &Storages) -> std::result::Result<PthTensor, String> {
        let storage = storages.get(&self.key).ok_or_else(|| format!("storage `{}` is missing", self.key))?;
        let size = self.dtype.bitsize() / 8;
        let numel: usize = self.shape.iter().product();
        // The furthest element the view reads must lie inside the storage.
        let last =
            self.offset + self.shape.iter().zip(&self.stride).map(|(&n, &s)| n.saturating_sub(1) * s).sum::<usize>();
        if numel > 0 && (last + 1) * size > storage.len() {
            return Err(format!(
                "reads element {last} of storage `{}`, which holds {}",
                self.key,
                storage.len() / size
            ));
        }
        let mut bytes = Vec::with_capacity(numel * size);
        let mut index = vec![0usize; self.shape.len()];
        for _ in 0..numel {
            let at = self.offset + index.iter().zip(&self.stride).map(|(i, s)| i * s).sum::<usize>();
            bytes.extend_from_slice(&storage[at * size..(at + 1) * size]);
            // Row-major odometer over the shape.
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < self.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(PthTensor { dtype: self.dtype, shape: self.shape.clone(), bytes })
    }
}

/// The dtype of a typed storage class, `torch.FloatStorage` ...
fn storage_dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "FloatStorage" => Dtype::F32,
        "DoubleStorage" => Dtype::F64,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::BOOL,
        _ => return None,
    })
}

/// A pickle reader that builds [`Value`]s and runs nothing.
struct Unpickler<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Stack heights at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Element size of each storage seen (the legacy format's raw data needs it).
    storage_sizes: HashMap<String, usize>,
    /// Whether the LONG1 magic number matched (legacy format only).
    magic_ok: Option<bool>,
}

impl<'a> Unpickler<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Unpickler {
            bytes,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            storage_sizes: HashMap::new(),
            magic_ok: None,
        }
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let s =
            self.bytes.get(self.pos..self.pos + n).ok_or_else(|| format!("pickle truncated at byte {}", self.pos))?;
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> std::result::Result<usize, String> {
        Ok(self.take(1)?[0] as usize)
    }

    fn u32(&mut self) -> std::result::Result<usize, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }

    fn line(&mut self) -> std::result::Result<String, String> {
        let rest = &self.bytes[self.pos.min(self.bytes.len())..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("pickle: an unterminated GLOBAL")?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }

    fn pop(&mut self) -> std::result::Result<Value, String> {
        self.stack.pop().ok_or_else(|| format!("pickle: stack underflow at byte {}", self.pos))
    }

    fn pop_mark(&mut self) -> std::result::Result<Vec<Value>, String> {
        let at = self.marks.pop().ok_or("pickle: no MARK")?;
        if at > self.stack.len() {
            return Err("pickle: MARK above the stack".into());
        }
        Ok(self.stack.split_off(at))
    }

    fn top(&mut self) -> std::result::Result<&mut Value, String> {
        self.stack.last_mut().ok_or_else(|| "pickle: empty stack".to_string())
    }

    fn str(&mut self, n: usize) -> std::result::Result<Value, String> {
        Ok(Value::Str(String::from_utf8_lossy(self.take(n)?).into_owned()))
    }

    /// Runs one pickle to its STOP and returns its value; the position is left after it.
    fn load(&mut self) -> std::result::Result<Value, String> {
        self.stack.clear();
        self.marks.clear();
        self.memo.clear();
        loop {
            let at = self.pos;
            let op = self.u8()? as u8;
            match op {
                0x80 => {
                    self.u8()?; // PROTO n
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(Value::Int(v));
                }
                b'M' => {
                    let b = self.take(2)?;
                    self.stack.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64));
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as i64;
                    self.stack.push(Value::Int(v));
                }
                0x8a => {
                    // LONG1: a little-endian two's-complement integer of n bytes.
                    let n = self.u8()?;
                    let b = self.take(n)?;
                    if n <= 8 {
                        let neg = b.last().is_some_and(|&x| x & 0x80 != 0);
                        let mut full = [if neg { 0xFF } else { 0 }; 8];
                        full[..n].copy_from_slice(b);
                        self.stack.push(Value::Int(i64::from_le_bytes(full)));
                    } else {
                        const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
                        self.magic_ok = Some(b == MAGIC);
                        self.stack.push(Value::BigInt);
                    }
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = self.u32()?;
                    let v = self.str(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()?;
                    let v = self.str(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")) as usize;
                    let v = self.str(n)?;
                    self.stack.push(v);
                }
                b'U' | b'C' => {
                    let n = self.u8()?;
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(v));
                }
                b'T' | b'B' => {
                    let n = self.u32()?;
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(v));
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(pairs(items)?));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(format!("pickle: TUPLE{n} on a short stack at byte {at}"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memoize(i)?;
                }
                b'r' => {
                    let i = self.u32()? as u32;
                    self.memoize(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memoize(i)?;
                }
                b'h' | b'j' => {
                    let i = if op == b'h' { self.u8()? } else { self.u32()? } as u32;
                    let v = self.memo.get(&i).cloned().ok_or_else(|| format!("pickle: memo {i} unset at byte {at}"))?;
                    self.stack.push(v);
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err(format!("pickle: APPEND to a non-list at byte {at}")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(format!("pickle: APPENDS to a non-list at byte {at}")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err(format!("pickle: SETITEM on a non-dict at byte {at}")),
                    }
                }
                b'u' => {
                    let items = pairs(self.pop_mark()?)?;
                    match self.top()? {
                        Value::Dict(d) => d.extend(items),
                        // Items set on an object kiln keeps opaque are dropped with it.
                        Value::Opaque => {}
                        _ => return Err(format!("pickle: SETITEMS on a non-dict at byte {at}")),
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err(format!("pickle: STACK_GLOBAL without two strings at byte {at}")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(callable, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    // NEWOBJ cls args: an object kiln does not need.
                    self.pop()?;
                    self.pop()?;
                    self.stack.push(Value::Opaque);
                }
                b'b' => {
                    // BUILD: the state of an object (an OrderedDict's `_metadata`); not needed.
                    self.pop()?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                _ => return Err(format!("pickle opcode 0x{op:02x} at byte {at} is not one torch.save writes")),
            }
        }
    }

    /// Memo slots hold a copy: torch's pickles read a container back only after it is complete
    /// (sizes and storage-type names), never one still being filled.
    fn memoize(&mut self, i: u32) -> std::result::Result<(), String> {
        let v = self.top()?.clone();
        self.memo.insert(i, v);
        Ok(())
    }

    /// A persistent id: `('storage', torch.<T>Storage, key, location, numel[, view])`.
    fn persistent(&mut self, pid: Value) -> std::result::Result<Value, String> {
        let Value::Tuple(items) = pid else { return Err("a persistent id that is not a tuple".into()) };
        match items.as_slice() {
            [Value::Str(kind), Value::Global(_, class), Value::Str(key), ..] if kind == "storage" => {
                let dtype = storage_dtype(class).ok_or_else(|| {
                    format!("storage `{key}` is a `{class}`; kiln reads float, int and bool storages")
                })?;
                self.storage_sizes.insert(key.clone(), dtype.bitsize() / 8);
                Ok(Value::Storage { key: key.clone(), dtype })
            }
            _ => Err(format!("a persistent id kiln does not know: {items:?}")),
        }
    }
}

/// Key/value pairs from a flat list.
fn pairs(items: Vec<Value>) -> std::result::Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("pickle: an odd number of dict items".into());
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn usizes(v: &Value, what: &str) -> std::result::Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) => items
            .iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as usize),
                _ => Err(format!("a tensor's {what} holds {x:?}")),
            })
            .collect(),
        _ => Err(format!("a tensor's {what} is {v:?}, not a tuple")),
    }
}

/// A REDUCE: the calls torch uses for tensors, parameters and ordered dicts; anything else is
/// kept opaque (never run).
fn reduce(callable: Value, args: Value) -> std::result::Result<Value, String> {
    let Value::Global(module, name) = &callable else { return Ok(Value::Opaque) };
    let Value::Tuple(args) = args else { return Ok(Value::Opaque) };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            let [Value::Storage { key, dtype }, Value::Int(offset), size, stride, ..] = args.as_slice() else {
                return Err(format!("{module}.{name} with arguments {args:?}"));
            };
            let (shape, stride) = (usizes(size, "size")?, usizes(stride, "stride")?);
            if shape.len() != stride.len() || *offset < 0 {
                return Err(format!("{module}.{name}: size {shape:?}, stride {stride:?}, offset {offset}"));
            }
            Ok(Value::Tensor(TensorRef { key: key.clone(), dtype: *dtype, offset: *offset as usize, shape, stride }))
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            Ok(args.into_iter().next().unwrap_or(Value::Opaque))
        }
        _ => Ok(Value::Opaque),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_git_lfs_pointer_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.pth");
        std::fs::write(&path, "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 18826032\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("git-lfs pointer") && err.contains("weights.pth"), "{err}");
    }

    #[test]
    fn small_pickles_and_bad_input() {
        // PROTO 2, EMPTY_DICT, MARK, 'a' -> BININT1 1, 'b' -> (1, -2), SETITEMS, STOP
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00bK\x01J\xfe\xff\xff\xff\x86u.";
        let Value::Dict(d) = Unpickler::new(p).load().unwrap() else { panic!("not a dict") };
        assert_eq!(d.len(), 2);
        assert!(matches!(&d[1].1, Value::Tuple(t) if matches!(t[..], [Value::Int(1), Value::Int(-2)])));
        // Truncated, and an opcode torch never writes.
        assert!(Unpickler::new(&p[..10]).load().unwrap_err().contains("truncated"));
        assert!(Unpickler::new(b"\x80\x02i").load().unwrap_err().contains("0x69"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.pth");
        std::fs::write(&f, b"hello").unwrap();
        let e = read(&f).unwrap_err().to_string();
        assert!(e.contains("x.pth") && e.contains("not a PyTorch checkpoint"), "{e}");
    }

    #[test]
    fn strided_views_gather_in_order() {
        let storage: Vec<u8> = (0u8..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let storages = HashMap::from([("0".to_string(), storage)]);
        // The transpose of a [2, 3] tensor: shape [3, 2], stride [1, 3].
        let t = TensorRef { key: "0".into(), dtype: Dtype::F32, offset: 0, shape: vec![3, 2], stride: vec![1, 3] };
        let got: Vec<f32> = t
            .materialize(&storages)
            .unwrap()
            .bytes
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(got, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let past = TensorRef { offset: 1, ..t };
        assert!(past.materialize(&storages).unwrap_err().contains("reads element 6"));
    }

    /// Both formats of `scripts/make_fixtures.py`'s `build_pth` against the tensors torch saved
    /// (contiguous, floats as f32): views, offsets, f16/bf16/f64, an int64, a Parameter, and a
    /// `{"state_dict": ...}` wrapper in the zip one.
    #[test]
    fn both_formats_match_torch() {
        use crate::formats::safetensors::WeightSource;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth");
        let mut want = SafetensorsSource::open_file(&dir.join("expected.safetensors")).unwrap();
        let names = want.names();
        let expected: Vec<(String, Vec<usize>, Vec<f32>)> = names
            .iter()
            .filter(|n| !n.ends_with("num_batches_tracked"))
            .map(|n| {
                let shape = want.shape_of(n).unwrap().to_vec();
                (n.clone(), shape.clone(), want.take(n, &shape).unwrap())
            })
            .collect();
        for file in ["legacy.pth", "zip.pth"] {
            let raw = read(&dir.join(file)).unwrap();
            assert_eq!(raw.len(), names.len(), "{file}");
            let count = raw.iter().find(|(n, _)| n == "bn.num_batches_tracked").unwrap();
            assert_eq!((count.1.dtype, count.1.bytes.as_slice()), (Dtype::I64, &7i64.to_le_bytes()[..]), "{file}");
            let mut src = open(&dir.join(file)).unwrap();
            for (name, shape, data) in &expected {
                let got = src.take(name, shape).unwrap_or_else(|e| panic!("{file}: {e}"));
                // Exact: every value is the stored one, widened to f32 as torch's .float() does.
                assert_eq!(&got, data, "{file}: {name}");
            }
            println!("{file}: {} tensors equal torch's", expected.len());
        }
        // A truncated checkpoint names the file and what is missing.
        let tmp = tempfile::tempdir().unwrap();
        for file in ["legacy.pth", "zip.pth"] {
            let bytes = std::fs::read(dir.join(file)).unwrap();
            let cut = tmp.path().join(file);
            std::fs::write(&cut, &bytes[..bytes.len() - 20]).unwrap();
            let e = read(&cut).unwrap_err().to_string();
            assert!(e.contains(file) && e.contains("truncated"), "{e}");
        }
    }

    /// The real EfficientNet-Lite0 file (legacy format, 296 tensors) against its conversion by
    /// torch (`scripts/pth_to_safetensors.py`): every tensor equal, bit for bit.
    /// `KILN_LITE0_PTH=...pth KILN_LITE0_ST=...safetensors cargo test --release --lib -- --ignored lite0_pth`
    #[test]
    #[ignore = "needs the real weights: see the doc comment"]
    fn lite0_pth_equals_torch_conversion() {
        use crate::formats::safetensors::WeightSource;
        let pth = std::env::var("KILN_LITE0_PTH").expect("KILN_LITE0_PTH names the .pth");
        let st = std::env::var("KILN_LITE0_ST").expect("KILN_LITE0_ST names its safetensors conversion");
        let mut want = SafetensorsSource::open_file(Path::new(&st)).unwrap();
        let mut got = open(Path::new(&pth)).unwrap();
        let (mut count, mut values) = (0, 0);
        for name in want.names() {
            let shape = want.shape_of(&name).unwrap().to_vec();
            if name.ends_with("num_batches_tracked") {
                continue;
            }
            let (a, b) = (got.take(&name, &shape).unwrap(), want.take(&name, &shape).unwrap());
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} differs");
            count += 1;
            values += a.len();
        }
        // Only the int64 BN counters are left (no model reads them).
        let left: Vec<String> = got.remaining().into_iter().filter(|n| !n.ends_with("num_batches_tracked")).collect();
        assert!(left.is_empty(), "left over: {left:?}");
        println!("{count} tensors, {values} values equal torch's");
    }
}
