//! Where a model's weights come from: a Hugging Face folder of safetensors files (one file, or
//! shards listed by `model.safetensors.index.json`, or every `*.safetensors`), or a GGUF file.
//! Every tensor is taken by its Hugging Face name with the shape the config implies; a missing
//! tensor, a wrong shape, or a tensor left over at the end is an error that names it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::quant::{BLOCK, BaseDtype, GgmlType, QuantWeights};
use crate::tensor::Tensor;
use crate::util::write_atomic;

/// A store of named f32 weights.
pub trait WeightSource {
    /// The file the weights come from (for messages).
    fn origin(&self) -> &Path;
    fn contains(&self, name: &str) -> bool;
    /// The weight as f32, row-major, checked against `shape`.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// Names not taken yet.
    fn remaining(&self) -> Vec<String>;
    /// The file that holds tensor `name` (for messages).
    fn file_of(&self, name: &str) -> PathBuf {
        let _ = name;
        self.origin().to_path_buf()
    }

    /// The weight `name` (`[out, in]`, checked against `shape`) in the block format the source
    /// stores it in, when the source keeps such weights quantized; None means "take it as f32"
    /// (the default: safetensors hold f32/f16/bf16). A source answering Some has taken it.
    fn quantized(&mut self, name: &str, shape: &[usize]) -> Result<Option<crate::quant::QuantWeights>> {
        let _ = (name, shape);
        Ok(None)
    }

    /// Uploads a weight to the GPU.
    fn tensor(&mut self, gpu: &Gpu, name: &str, shape: &[usize]) -> Result<Tensor> {
        let data = self.take(name, shape)?;
        Tensor::from_f32(gpu, &data, shape)
    }

    /// Errors if any tensor was not used, except names the model knowingly ignores.
    fn finish(&self, ignored: &dyn Fn(&str) -> bool) -> Result<()> {
        let left: Vec<String> = self.remaining().into_iter().filter(|n| !ignored(n)).collect();
        if left.is_empty() {
            return Ok(());
        }
        let shown = left.iter().take(8).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
        Err(Error::Parse {
            path: self.file_of(&left[0]),
            message: format!(
                "{} unexpected tensor(s) the model does not use: {shown}{} (is config.json for another architecture?)",
                left.len(),
                if left.len() > 8 { ", ..." } else { "" }
            ),
        })
    }
}

/// The safetensors files of a Hugging Face folder, read into memory.
pub struct SafetensorsSource {
    dir: PathBuf,
    /// name → (file, dtype, shape, bytes).
    tensors: BTreeMap<String, (PathBuf, Dtype, Vec<usize>, Vec<u8>)>,
    taken: BTreeSet<String>,
    /// How linear weights asked for through [`WeightSource::quantized`] are kept.
    pub base: BaseDtype,
}

impl SafetensorsSource {
    pub fn open(dir: &Path) -> Result<Self> {
        Self::from_files(dir, shard_files(dir)?)
    }

    /// One safetensors file (an adapter).
    pub fn open_file(file: &Path) -> Result<Self> {
        Self::from_files(file, vec![file.to_path_buf()])
    }

    /// One safetensors file held in memory; `path` only names it in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let mut source = SafetensorsSource {
            dir: path.to_path_buf(),
            tensors: BTreeMap::new(),
            taken: BTreeSet::new(),
            base: BaseDtype::Auto,
        };
        source.add_file(path, bytes)?;
        Ok(source)
    }

    fn from_files(dir: &Path, files: Vec<PathBuf>) -> Result<Self> {
        let mut source = SafetensorsSource {
            dir: dir.to_path_buf(),
            tensors: BTreeMap::new(),
            taken: BTreeSet::new(),
            base: BaseDtype::Auto,
        };
        for file in files {
            let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
            source.add_file(&file, &bytes)?;
        }
        Ok(source)
    }

    fn add_file(&mut self, file: &Path, bytes: &[u8]) -> Result<()> {
        // The crate checks the header length, every offset and each tensor's byte count against
        // the file before it hands out a view; when it refuses, the header is read again here to
        // name the tensor and the sizes.
        super::lfs::check_bytes(file, bytes)?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Parse {
            path: file.to_path_buf(),
            message: format!("not a safetensors file: {}", super::safetensors_header::diagnose(bytes, &e.to_string())),
        })?;
        for (name, view) in st.tensors() {
            let entry = (file.to_path_buf(), view.dtype(), view.shape().to_vec(), view.data().to_vec());
            if self.tensors.insert(name.clone(), entry).is_some() {
                return Err(Error::Parse {
                    path: file.to_path_buf(),
                    message: format!("tensor `{name}` appears twice"),
                });
            }
        }
        Ok(())
    }

    /// The names of all tensors, taken or not.
    pub fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

/// model.safetensors, the shards of model.safetensors.index.json, or all *.safetensors.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        super::lfs::check_file(&index)?;
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::Parse { path: index.clone(), message: e.to_string() })?;
        let map = json["weight_map"]
            .as_object()
            .ok_or_else(|| Error::Parse { path: index.clone(), message: "no `weight_map` object".into() })?;
        let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Parse {
            path: dir.to_path_buf(),
            message: "no model.safetensors (or shards) here; kiln reads safetensors, not pytorch_model.bin".into(),
        });
    }
    Ok(files)
}

impl SafetensorsSource {
    /// The stored shape of a tensor, if there is one by that name.
    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.2.as_slice())
    }
}

impl WeightSource for SafetensorsSource {
    fn origin(&self) -> &Path {
        &self.dir
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let Some((file, dtype, found, bytes)) = self.tensors.get(name) else {
            return Err(Error::Parse { path: self.dir.clone(), message: format!("missing tensor `{name}`") });
        };
        if found != shape {
            return Err(Error::Parse {
                path: file.clone(),
                message: format!("tensor `{name}` has shape {found:?}, config says {shape:?}"),
            });
        }
        let data = match dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(Error::Parse {
                    path: file.clone(),
                    message: format!("tensor `{name}` has dtype {other:?}; kiln reads F32, F16 and BF16 weights"),
                });
            }
        };
        self.taken.insert(name.to_string());
        Ok(data)
    }

    fn remaining(&self) -> Vec<String> {
        self.tensors.keys().filter(|n| !self.taken.contains(*n)).cloned().collect()
    }

    /// F16/BF16 linear weights as 16-bit blocks when [`SafetensorsSource::base`] keeps them so
    /// (`auto`), or any float weight rounded to the 16-bit type it asks for. Rows that are not
    /// whole blocks of 32 stay f32, as do f32 weights under `auto`.
    fn quantized(&mut self, name: &str, shape: &[usize]) -> Result<Option<QuantWeights>> {
        let Some((file, dtype, found, bytes)) = self.tensors.get(name) else { return Ok(None) };
        // A wrong shape is reported by `take`.
        if found != shape || shape.len() != 2 || !shape[1].is_multiple_of(BLOCK) {
            return Ok(None);
        }
        let stored = match dtype {
            Dtype::F32 => GgmlType::F32,
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::BF16,
            _ => return Ok(None),
        };
        let Some(kind) = self.base.keep(stored, name)? else { return Ok(None) };
        let bad = |e: Error| Error::Parse { path: file.clone(), message: e.to_string() };
        let w = if kind.ggml() == stored {
            QuantWeights::new(kind, shape[0], shape[1], bytes.clone(), name).map_err(bad)?
        } else {
            let data = self.take(name, shape)?;
            QuantWeights::quantize(kind, &data, shape[0], shape[1], name)?
        };
        self.taken.insert(name.to_string());
        Ok(Some(w))
    }

    fn file_of(&self, name: &str) -> PathBuf {
        self.tensors.get(name).map_or_else(|| self.dir.clone(), |t| t.0.clone())
    }
}

/// The largest size kiln accepts for one dimension of a config (vocabulary, width, layers,
/// positions): far above any real model, low enough that no product of two overflows or asks
/// for an absurd allocation before a tensor shape could disagree.
pub const MAX_CONFIG_DIM: usize = 1 << 24;

/// Checks that each named size of a config is at least 1 and at most [`MAX_CONFIG_DIM`].
pub fn check_dims(config_path: &Path, dims: &[(&str, usize)]) -> Result<()> {
    for &(key, v) in dims {
        if v == 0 || v > MAX_CONFIG_DIM {
            return Err(Error::Parse {
                path: config_path.to_path_buf(),
                message: format!("`{key}` is {v}; expected a size from 1 to {MAX_CONFIG_DIM}"),
            });
        }
    }
    Ok(())
}

/// Reads and parses `config.json` of a model folder.
pub fn read_config<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T> {
    let path = dir.join("config.json");
    super::lfs::check_file(&path)?;
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Parse { path, message: format!("config: {e}") })
}

/// Writes f32 tensors to a safetensors file atomically: a temporary file in the same folder,
/// then a rename, so a crash never leaves a half-written file under the real name.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Vec<f32>, Vec<usize>)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, data, shape)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Parse { path: path.to_path_buf(), message: format!("tensor `{name}`: {e}") })
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| Error::Parse { path: path.to_path_buf(), message: e.to_string() })?;
    write_atomic(path, &bytes)
}
