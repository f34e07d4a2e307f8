//! Opens a causal LM with its tokenizer and prompt format, from a Hugging Face folder or a GGUF
//! file: what `kiln train`, `kiln generate` and `kiln export` start from.

use std::path::Path;

use tokenizers::Tokenizer;

use super::{CausalLm, gguf_decoder, load_causal_lm_with};
use crate::error::{Error, Result};
use crate::formats::chat_template::{Message, PromptFormat, Role};
use crate::formats::gguf::GgufFile;
use crate::formats::tokenizer::{GgufTokenizer, HfTokenizer};
use crate::gpu::Gpu;
use crate::quant::{BaseDtype, QuantType};

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

impl LoadedLm {
    /// The prompt tokens a completion record's prompt becomes at generation time: a user turn of
    /// the chat template, or the prompt itself.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        if self.format.is_chat() {
            let text = self.format.render_chat(&[Message::new(Role::User, prompt)], true)?;
            return self.chat_prompt_ids(&text);
        }
        self.encode_prompt(prompt)
    }

    /// Plain text as ids, with the format's bos when it has one.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.format.bos().into_iter().collect();
        ids.extend(
            self.tokenizer.encode(text, false).map_err(|e| Error::invalid("tokenize", e.to_string()))?.get_ids(),
        );
        Ok(ids)
    }

    /// A rendered chat template as ids: no special tokens added, the template wrote its own (as
    /// `apply_chat_template(tokenize=True)`).
    pub fn chat_prompt_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::invalid("tokenize", e.to_string()))?
            .get_ids()
            .to_vec())
    }
}

/// Opens a model; a GGUF file's Q8_0/Q4_0/Q4_1 linear weights stay quantized on the GPU.
pub fn load_lm(gpu: &Gpu, path: &Path) -> Result<LoadedLm> {
    load_lm_with(gpu, path, true)
}

/// Opens a model; `keep_quantized: false` dequantizes a GGUF file's weights to f32 on load
/// (`--base-dtype f32`).
pub fn load_lm_with(gpu: &Gpu, path: &Path, keep_quantized: bool) -> Result<LoadedLm> {
    load_lm_base(gpu, path, if keep_quantized { BaseDtype::Auto } else { BaseDtype::F32 })
}

/// Opens a model with its frozen linear weights held as `base` says (`--base-dtype`).
pub fn load_lm_base(gpu: &Gpu, path: &Path, base: BaseDtype) -> Result<LoadedLm> {
    if path.extension().is_some_and(|e| e == "gguf") {
        load_gguf(gpu, path, base)
    } else if path.is_dir() {
        load_hf(gpu, path, base)
    } else {
        Err(Error::Parse {
            path: path.to_path_buf(),
            message: "expected a Hugging Face model folder (config.json, *.safetensors) or a .gguf file".into(),
        })
    }
}

fn load_gguf(gpu: &Gpu, path: &Path, base: BaseDtype) -> Result<LoadedLm> {
    let file = GgufFile::open(path)?;
    // The model first: its architecture and sizes are the likelier mistake to report.
    let model = Box::new(gguf_decoder::load_decoder_base(gpu, &file, base)?);
    let tok = GgufTokenizer::from_gguf(&file)?;
    let name = file.get_str("general.name")?.map(str::to_string).unwrap_or_else(|| path.display().to_string());
    let format = tok.prompt_format(path, &name)?;
    let stop = format.stop_tokens();
    Ok(LoadedLm { model, tokenizer: tok.tokenizer, format, stop, pad: tok.pad.unwrap_or(tok.eos), name })
}

fn load_hf(gpu: &Gpu, dir: &Path, base: BaseDtype) -> Result<LoadedLm> {
    let mut model = load_causal_lm_with(gpu, dir, base)?;
    // What loaded f32 although 16 bits were asked for (GPT-2's `[in, out]` weights) is rounded
    // now; the decoder's linears came 16-bit already.
    let sixteen = match base {
        BaseDtype::F16 => Some(QuantType::F16),
        BaseDtype::BF16 => Some(QuantType::BF16),
        _ => None,
    };
    if let Some(kind) = sixteen {
        super::quantize::quantize_linears(gpu, model.as_mut(), kind)?;
    }
    let tok = HfTokenizer::open(dir)?;
    let config: serde_json::Value = crate::formats::safetensors::read_config(dir)?;
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        match v {
            serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
            v => v.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        }
    };
    let eos = ids(&config["eos_token_id"])
        .first()
        .copied()
        .or(tok.eos)
        .or_else(|| tok.tokenizer.token_to_id("<|endoftext|>"))
        .or_else(|| tok.tokenizer.token_to_id("</s>"))
        .ok_or_else(|| Error::Parse {
            path: dir.join("config.json"),
            message: "no eos_token_id, no eos_token in tokenizer_config.json, and the tokenizer has no \
                      <|endoftext|> or </s>"
                .into(),
        })?;
    let name = dir.display().to_string();
    let format = tok.prompt_format(eos, &name)?;
    // Instruct models list every token that ends a reply in generation_config.json (Llama 3:
    // <|end_of_text|>, <|eom_id|>, <|eot_id|>).
    let mut stop = format.stop_tokens();
    let generation = dir.join("generation_config.json");
    if let Ok(text) = std::fs::read_to_string(&generation) {
        let generation: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Parse { path: generation.clone(), message: e.to_string() })?;
        stop.extend(ids(&generation["eos_token_id"]).into_iter().filter(|id| !stop.contains(id)).collect::<Vec<_>>());
    }
    let pad = ids(&config["pad_token_id"]).first().copied().unwrap_or(eos);
    Ok(LoadedLm { model, tokenizer: tok.tokenizer, format, stop, pad, name })
}
