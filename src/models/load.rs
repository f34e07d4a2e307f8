//! Opens a causal LM with its tokenizer and prompt format, from a Hugging Face folder or a GGUF
//! file: what `kiln train`, `kiln generate` and `kiln export` start from.

use std::path::Path;

use tokenizers::Tokenizer;

use super::{CausalLm, gguf_decoder, load_causal_lm};
use crate::data::lm::{IM_START, PromptFormat, SMOLLM2_DEFAULT_SYSTEM};
use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;
use crate::formats::tokenizer::GgufTokenizer;
use crate::gpu::Gpu;

pub struct LoadedLm {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: Tokenizer,
    pub format: PromptFormat,
    /// Tokens that end generation.
    pub stop: Vec<u32>,
    /// Pads batches (masked out of attention and loss).
    pub pad: u32,
    /// How the base is named in adapter configs (`base_model_name_or_path`).
    pub name: String,
}

/// Opens a model; a GGUF file's Q8_0/Q4_0/Q4_1 linear weights stay quantized on the GPU.
pub fn load_lm(gpu: &Gpu, path: &Path) -> Result<LoadedLm> {
    load_lm_with(gpu, path, true)
}

/// Opens a model; `keep_quantized: false` dequantizes a GGUF file's weights to f32 on load
/// (`--base-dtype f32`).
pub fn load_lm_with(gpu: &Gpu, path: &Path, keep_quantized: bool) -> Result<LoadedLm> {
    if path.extension().is_some_and(|e| e == "gguf") {
        load_gguf(gpu, path, keep_quantized)
    } else if path.is_dir() {
        load_hf(gpu, path)
    } else {
        Err(Error::Parse {
            path: path.to_path_buf(),
            message: "expected a Hugging Face model folder (config.json, *.safetensors) or a .gguf file".into(),
        })
    }
}

fn load_gguf(gpu: &Gpu, path: &Path, keep_quantized: bool) -> Result<LoadedLm> {
    let file = GgufFile::open(path)?;
    // The model first: its architecture and sizes are the likelier mistake to report.
    let model = Box::new(gguf_decoder::load_decoder_with(gpu, &file, keep_quantized)?);
    let tok = GgufTokenizer::from_gguf(&file)?;
    let bos = if tok.add_bos { tok.bos } else { None };
    let template = tok.chat_template.clone().unwrap_or_default();
    let format = if template.contains(IM_START) {
        let system = template.contains(SMOLLM2_DEFAULT_SYSTEM).then(|| SMOLLM2_DEFAULT_SYSTEM.to_string());
        PromptFormat::chatml(&tok.tokenizer, bos, system)?
    } else {
        PromptFormat::Plain { bos, eos: tok.eos }
    };
    let stop = stop_tokens(tok.eos, &format);
    let name = file.get_str("general.name")?.map(str::to_string).unwrap_or_else(|| path.display().to_string());
    Ok(LoadedLm { model, tokenizer: tok.tokenizer, format, stop, pad: tok.pad.unwrap_or(tok.eos), name })
}

fn load_hf(gpu: &Gpu, dir: &Path) -> Result<LoadedLm> {
    let model = load_causal_lm(gpu, dir)?;
    let tokenizer = hf_tokenizer(dir)?;
    let config: serde_json::Value = crate::formats::safetensors::read_config(dir)?;
    let first_id = |v: &serde_json::Value| v.as_u64().or_else(|| v.get(0).and_then(|x| x.as_u64())).map(|x| x as u32);
    let eos = first_id(&config["eos_token_id"])
        .or_else(|| tokenizer.token_to_id("<|endoftext|>"))
        .or_else(|| tokenizer.token_to_id("</s>"))
        .ok_or_else(|| Error::Parse {
            path: dir.join("config.json"),
            message: "no eos_token_id, and the tokenizer has no <|endoftext|> or </s>".into(),
        })?;
    let format = if tokenizer.token_to_id(IM_START).is_some() {
        PromptFormat::chatml(&tokenizer, None, None)?
    } else {
        PromptFormat::Plain { bos: None, eos }
    };
    let stop = stop_tokens(eos, &format);
    let pad = first_id(&config["pad_token_id"]).unwrap_or(eos);
    Ok(LoadedLm { model, tokenizer, format, stop, pad, name: dir.display().to_string() })
}

/// What ends generation: eos, and the end of a chat turn when the format is ChatML.
fn stop_tokens(eos: u32, format: &PromptFormat) -> Vec<u32> {
    let mut stop = vec![eos];
    if let PromptFormat::ChatMl { im_end, .. } = *format
        && im_end != eos
    {
        stop.push(im_end);
    }
    stop
}

/// tokenizer.json, or GPT-2's vocab.json + merges.txt.
pub fn hf_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        return Tokenizer::from_file(&json).map_err(|e| Error::Parse { path: json, message: e.to_string() });
    }
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    if vocab.is_file() && merges.is_file() {
        use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
        use tokenizers::models::bpe::BPE;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| Error::Parse { path: vocab.clone(), message: e.to_string() })?;
        let mut tok = Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        return Ok(tok);
    }
    Err(Error::Parse { path: dir.to_path_buf(), message: "no tokenizer.json (or vocab.json + merges.txt)".into() })
}
