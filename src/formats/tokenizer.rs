//! Tokenizers as models define them: a Hugging Face folder's `tokenizer.json` (through the
//! `tokenizers` crate, whatever its pre-tokenizer) with `tokenizer_config.json` around it
//! ([`HfTokenizer`]), and a `tokenizers::Tokenizer` rebuilt from the tokenizer a GGUF file
//! carries in its metadata ([`GgufTokenizer`]).
//!
//! A GGUF has no `tokenizer.json`; llama.cpp stores the vocabulary under `tokenizer.ggml.*` keys.
//! SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`: Gemma, Llama 2, Mistral v0.1,
//! Phi-3) are built by [`crate::formats::sentencepiece`]; the rest of this module is the BPE path
//! and what both share (special ids, BOS, the chat template).
//!
//! kiln reads byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`), the kind GPT-2,
//! SmolLM, Qwen and Llama 3 use. It follows transformers' GGUF converter
//! (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`, `byte_level_tokenizer`):
//!
//! - model: BPE over `tokenizer.ggml.tokens` (id = position) and `tokenizer.ggml.merges`
//!   (`"a b"` strings, best first), no unknown token (every byte has a token);
//! - tokens of `tokenizer.ggml.token_type` 3 (CONTROL, e.g. `<|im_start|>`) become special added
//!   tokens so they are matched whole in the text; type 4 (USER_DEFINED) become plain added tokens;
//! - pre-tokenizer from `tokenizer.ggml.pre` (table below), decoder byte-level.
//!
//! | `tokenizer.ggml.pre`                     | split before byte-level BPE                          |
//! |------------------------------------------|------------------------------------------------------|
//! | absent, `default`, `gpt2`, `gpt-2`      | GPT-2 regex                                          |
//! | `smollm`, `starcoder`, `refact`, `codeshell` | every digit alone, then the GPT-2 regex          |
//! | `llama-bpe`, `llama3`, `llama-v3`        | Llama 3's regex (numbers in threes), byte-level      |
//! | `qwen2`, `deepseek-r1-qwen`              | Qwen2's regex (digits alone), byte-level             |
//!
//! For the second row llama.cpp (`llama-vocab.cpp`: `"\p{N}"` then the GPT-2 regex) and the
//! original SmolLM2 `tokenizer.json` (`Digits(individual_digits)` then `ByteLevel`) agree;
//! transformers' GGUF path uses the GPT-2 regex alone. SmolLM2's vocabulary was trained with
//! digits split, so none of its 48900 merges holds an ASCII digit and both give the same ids
//! (scripts/check_gguf.py compares them, digits included).
//!
//! The last two rows are the `Split` regexes of Llama 3's and Qwen2's `tokenizer.json` followed
//! by byte-level without the GPT-2 regex, as those files and transformers' GGUF loader have them.
//! (Qwen2's `tokenizer.json` also NFC-normalizes; its GGUF, in llama.cpp and in transformers, does
//! not, so a decomposed accent can tokenize differently from the folder.) Other pre-tokenizers
//! use other regexes and are refused by name rather than tokenized slightly wrong.

use std::path::Path;

use tokenizers::SplitDelimiterBehavior;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};
use crate::formats::chat_template::PromptFormat;
use crate::formats::gguf::GgufFile;
use crate::formats::sentencepiece;

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The tokenizer of a GGUF file and the special ids a model needs around it.
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: u32,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (default false, as transformers for byte-level BPE). When
    /// true, `encode(text, true)` puts `bos` first.
    pub add_bos: bool,
    /// `tokenizer.chat_template` (Jinja), or kiln's built-in one for an architecture whose
    /// files carry none (Gemma's turns).
    pub chat_template: Option<String>,
    /// The architecture whose built-in template `chat_template` is, when the file had none.
    pub builtin_template: Option<String>,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.chat_template.as_ref().map(|t| t.len()))
            .finish()
    }
}

impl GgufTokenizer {
    /// Builds the tokenizer described by `file`'s `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<GgufTokenizer> {
        let err = |message: String| Error::Parse { path: file.path.clone(), message };

        let model = file.require_str("tokenizer.ggml.model")?;
        let tokens = file.require_str_array("tokenizer.ggml.tokens")?;
        let (tokenizer, add_bos_default) = match model {
            "gpt2" => (byte_level_bpe(file)?, false),
            // llama.cpp and transformers add BOS to a SentencePiece vocabulary unless told not to.
            "llama" => {
                let arch = file.get_str("general.architecture")?.unwrap_or("llama");
                (sentencepiece::build(file, sentencepiece::Flavor::for_architecture(arch))?, true)
            }
            _ => {
                let kind = match model {
                    "bert" => " (WordPiece)",
                    "t5" => " (Unigram)",
                    "rwkv" => " (RWKV)",
                    _ => "",
                };
                return Err(err(format!(
                    "tokenizer.ggml.model is `{model}`{kind}; kiln builds tokenizers from GGUF for \
                     `gpt2` (byte-level BPE) and `llama` (SentencePiece)"
                )));
            }
        };
        let mut tokenizer = tokenizer;
        let n_tokens = tokens.len() as u64;
        let id = |key: &str| -> Result<Option<u32>> {
            match file.get_u64(key)? {
                None => Ok(None),
                Some(id) if id < n_tokens => Ok(Some(id as u32)),
                Some(id) => Err(err(format!("{key} is {id}, past the end of the vocabulary ({n_tokens} tokens)"))),
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?
            .ok_or_else(|| err("metadata key `tokenizer.ggml.eos_token_id` is missing".into()))?;
        let pad = id("tokenizer.ggml.padding_token_id")?;
        id("tokenizer.ggml.unknown_token_id")?; // checked, unused: byte-level BPE has no unknowns
        let add_bos = file.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(add_bos_default);

        if add_bos {
            let bos = bos.ok_or_else(|| {
                err("tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is \
                     missing"
                    .into())
            })?;
            let name = tokens[bos as usize];
            let template = TemplateProcessing::builder()
                .try_single(format!("{name} $A"))
                .and_then(|b| b.try_pair(format!("{name} $A {name}:1 $B:1")))
                .map_err(|e| err(format!("BOS template for `{name}`: {e}")))?
                .special_tokens(vec![(name, bos)])
                .build()
                .map_err(|e| err(format!("BOS template for `{name}`: {e}")))?;
            tokenizer.with_post_processor(Some(template));
        }

        let mut chat_template = file.get_str("tokenizer.chat_template")?.map(str::to_string);
        let mut builtin_template = None;
        if chat_template.is_none()
            && let Some(arch) = file.get_str("general.architecture")?
            && let Some(builtin) = crate::formats::chat_template::builtin_template(arch)
        {
            chat_template = Some(builtin.to_string());
            builtin_template = Some(arch.to_string());
        }
        Ok(GgufTokenizer { tokenizer, bos, eos, pad, add_bos, chat_template, builtin_template })
    }

    /// The file's prompt format: `tokenizer.chat_template` with the special tokens named by the
    /// file's ids, or the plain format. `path` names the file in errors.
    pub fn prompt_format(&self, path: &Path, model: &str) -> Result<PromptFormat> {
        let named =
            |key: &str, id: Option<u32>| id.and_then(|id| self.tokenizer.id_to_token(id)).map(|t| (key.to_string(), t));
        let special: Vec<(String, String)> =
            [named("bos_token", self.bos), named("eos_token", Some(self.eos)), named("pad_token", self.pad)]
                .into_iter()
                .flatten()
                .collect();
        let origin = match &self.builtin_template {
            Some(arch) => format!("kiln's built-in {arch} turn template ({} has none)", path.display()),
            None => format!("{}: tokenizer.chat_template", path.display()),
        };
        let template = self.chat_template.as_deref().map(|t| (t, origin));
        let bos = if self.add_bos { self.bos } else { None };
        PromptFormat::for_model(template, &special, &self.tokenizer, bos, self.eos, model)
    }

    /// Token ids of `text`; `add_special` adds BOS when the file asks for it.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let encoding =
            self.tokenizer.encode(text, add_special).map_err(|e| Error::invalid("tokenizer encode", e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`; `skip_special` drops control tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.tokenizer.decode(ids, skip_special).map_err(|e| Error::invalid("tokenizer decode", e.to_string()))
    }
}

/// The byte-level BPE of a `gpt2` vocabulary (model, pre-tokenizer, decoder, special tokens).
fn byte_level_bpe(file: &GgufFile) -> Result<Tokenizer> {
    let err = |message: String| Error::Parse { path: file.path.clone(), message };
    let tokens = file.require_str_array("tokenizer.ggml.tokens")?;
    let merges = file.require_str_array("tokenizer.ggml.merges")?;
    let token_types = sentencepiece::token_types(file, tokens.len())?;

    // The vocabulary, every token in the byte-level alphabet. llama.cpp writes gpt2 tokens
    // that way already; one that is not (a mislabelled added token) is respelled from its
    // UTF-8 bytes, as transformers does.
    let byte_chars = bytes_to_unicode();
    let in_alphabet = |t: &str| t.chars().all(|c| byte_chars.contains(&c));
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, &token) in tokens.iter().enumerate() {
        let spelled = if in_alphabet(token) {
            token.to_string()
        } else {
            token.bytes().map(|b| byte_chars[b as usize]).collect()
        };
        if let Some(first) = vocab.insert(spelled, id as u32) {
            return Err(err(format!("tokenizer.ggml.tokens holds `{token}` twice, at ids {first} and {id}")));
        }
    }

    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok((a.to_string(), b.to_string())),
            _ => Err(err(format!(
                "tokenizer.ggml.merges entry {i} is `{m}`, expected two tokens separated by \
                     one space"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| err(format!("building the BPE model from tokenizer.ggml.*: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);

    let pre = file.get_str("tokenizer.ggml.pre")?;
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre).ok_or_else(|| {
        err(format!(
            "tokenizer.ggml.pre is `{}`; kiln knows the byte-level pre-tokenizers {KNOWN_PRE}",
            pre.unwrap_or_default()
        ))
    })?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    // Control tokens (`<|im_start|>`) are special: matched whole, skipped when decoding with
    // skip_special_tokens. One outside the byte alphabet is a llama.cpp mislabel and is left
    // out, as transformers does (adding it would grow the vocabulary past the model's).
    if let Some(types) = &token_types {
        let of_type = |wanted: i64| tokens.iter().zip(types).filter(move |&(t, &ty)| ty == wanted && in_alphabet(t));
        let control: Vec<AddedToken> =
            of_type(TOKEN_TYPE_CONTROL).map(|(t, _)| AddedToken::from(*t, true).normalized(false)).collect();
        let user: Vec<AddedToken> =
            of_type(TOKEN_TYPE_USER_DEFINED).map(|(t, _)| AddedToken::from(*t, false).normalized(false)).collect();
        let tok_err = |e: tokenizers::Error| err(format!("adding special tokens: {e}"));
        tokenizer.add_special_tokens(control).map_err(tok_err)?;
        tokenizer.add_tokens(user).map_err(tok_err)?;
    }
    Ok(tokenizer)
}

/// The tokenizer of a Hugging Face folder and what `tokenizer_config.json` says around it.
pub struct HfTokenizer {
    pub tokenizer: Tokenizer,
    /// `bos_token`'s id.
    pub bos: Option<u32>,
    /// `eos_token`'s id.
    pub eos: Option<u32>,
    /// Whether a text starts with bos: `add_bos_token` when the config has it, otherwise whether
    /// `tokenizer.json`'s post-processor puts bos first (Llama 3's does, Qwen2's does not).
    pub add_bos: bool,
    /// `chat_template.jinja`, or `chat_template` in `tokenizer_config.json` (the `default` one of a
    /// list of named templates), with where it came from.
    pub chat_template: Option<(String, String)>,
    /// The special tokens by name as a chat template sees them (`bos_token`, `eos_token`, ...).
    pub special: Vec<(String, String)>,
}

impl HfTokenizer {
    /// Reads `tokenizer.json` (or vocab.json + merges.txt) and, when present,
    /// `tokenizer_config.json` and `chat_template.jinja`.
    pub fn open(dir: &Path) -> Result<HfTokenizer> {
        let tokenizer = hf_tokenizer(dir)?;
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = if config_path.is_file() {
            super::lfs::check_file(&config_path)?;
            let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
            serde_json::from_str(&text)
                .map_err(|e| Error::Parse { path: config_path.clone(), message: e.to_string() })?
        } else {
            serde_json::Value::Null
        };
        let err = |message: String| Error::Parse { path: config_path.clone(), message };

        // A special token is a string or an AddedToken dict ({"content": ...}).
        let mut special = Vec::new();
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            let content = match &config[key] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
                serde_json::Value::Null => None,
                other => return Err(err(format!("`{key}` is {other}; expected a token string"))),
            };
            if let Some(content) = content {
                special.push((key.to_string(), content));
            }
        }
        let id_of = |key: &str| -> Result<Option<u32>> {
            let Some((_, content)) = special.iter().find(|(k, _)| k == key) else { return Ok(None) };
            tokenizer
                .token_to_id(content)
                .map(Some)
                .ok_or_else(|| err(format!("`{key}` is `{content}`, which tokenizer.json does not have")))
        };
        let (bos, eos) = (id_of("bos_token")?, id_of("eos_token")?);

        let add_bos = match &config["add_bos_token"] {
            serde_json::Value::Bool(b) => *b,
            serde_json::Value::Null => {
                bos.is_some_and(|bos| tokenizer.encode("a", true).is_ok_and(|e| e.get_ids().first() == Some(&bos)))
            }
            other => return Err(err(format!("`add_bos_token` is {other}; expected true or false"))),
        };
        if add_bos && bos.is_none() {
            return Err(err("`add_bos_token` is true but there is no `bos_token`".into()));
        }

        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.is_file() {
            let text = std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?;
            Some((text, jinja.display().to_string()))
        } else {
            let origin = format!("{}: chat_template", config_path.display());
            match &config["chat_template"] {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some((s.clone(), origin)),
                // Several named templates: transformers uses `default` for chats.
                serde_json::Value::Array(list) => {
                    let default = list.iter().find(|t| t["name"] == "default").ok_or_else(|| {
                        err("`chat_template` is a list of named templates without a `default` one".into())
                    })?;
                    let text = default["template"]
                        .as_str()
                        .ok_or_else(|| err("`chat_template` entry `default` has no `template` string".into()))?;
                    Some((text.to_string(), format!("{origin} (default)")))
                }
                other => return Err(err(format!("`chat_template` is {other}; expected a string"))),
            }
        };
        Ok(HfTokenizer { tokenizer, bos, eos, add_bos, chat_template, special })
    }
}

impl HfTokenizer {
    /// The folder's prompt format: its chat template, or the plain format; `eos` ends text
    /// records (config.json's `eos_token_id` where it has one).
    pub fn prompt_format(&self, eos: u32, model: &str) -> Result<PromptFormat> {
        let template = self.chat_template.as_ref().map(|(t, origin)| (t.as_str(), origin.clone()));
        let bos = if self.add_bos { self.bos } else { None };
        PromptFormat::for_model(template, &self.special, &self.tokenizer, bos, eos, model)
    }
}

/// tokenizer.json, or GPT-2's vocab.json + merges.txt.
pub fn hf_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        super::lfs::check_file(&json)?;
        return Tokenizer::from_file(&json).map_err(|e| Error::Parse { path: json, message: e.to_string() });
    }
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    if vocab.is_file() && merges.is_file() {
        super::lfs::check_file(&vocab)?;
        super::lfs::check_file(&merges)?;
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

/// Llama 3's split (`tokenizer.json`'s `Split` pattern; llama.cpp's `llama-bpe`): runs of
/// letters with one leading non-letter, numbers of at most three digits, English contractions
/// in any case, punctuation runs with trailing newlines, newline runs with their leading blanks.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split: Llama 3's with every digit alone.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` names kiln knows, for the error that refuses another one.
const KNOWN_PRE: &str = "default, gpt2, gpt-2, smollm, starcoder, refact, codeshell, llama-bpe, llama3, llama-v3, \
                         qwen2, deepseek-r1-qwen";

/// The pre-tokenizer for a `tokenizer.ggml.pre` name; None when kiln does not know it.
fn pre_tokenizer(pre: Option<&str>) -> Option<PreTokenizerWrapper> {
    // add_prefix_space false, trim_offsets true, use_regex true (the GPT-2 regex).
    let byte_level = ByteLevel::new(false, true, true);
    // A family's own regex, then byte-level without the GPT-2 regex: as those families'
    // tokenizer.json files do, and transformers' GGUF loader for these names.
    let split = |pattern: &str| -> Option<PreTokenizerWrapper> {
        let regex = SplitPattern::Regex(pattern.to_string());
        let split = Split::new(regex, SplitDelimiterBehavior::Isolated, false).ok()?;
        Some(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
    };
    match pre.unwrap_or("default") {
        "default" | "gpt2" | "gpt-2" => Some(byte_level.into()),
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            Some(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into())
        }
        "llama-bpe" | "llama3" | "llama-v3" => split(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" => split(QWEN2_SPLIT),
        _ => None,
    }
}

/// GPT-2's byte-to-character table: byte `b` is written as `table[b]`. Printable bytes stand
/// for themselves; the rest map to U+0100 and up, so every token is printable text.
pub(crate) fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            b as char
        } else {
            next += 1;
            char::from_u32(next - 1).expect("U+0100..U+0143 are chars")
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf::GgufValue;
    use crate::formats::gguf::testing::{GgufBuilder, strings};

    /// A tiny byte-level vocabulary: the 256 byte tokens (ids 3..259), a few merges, and three
    /// control tokens at the front as in SmolLM2 (`<|endoftext|>` 0, `<|im_start|>` 1,
    /// `<|im_end|>` 2).
    fn tiny_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
        let table = bytes_to_unicode();
        let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
        tokens.extend(table.iter().map(|c| c.to_string()));
        // Ġ is the byte-level spelling of a space.
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        let mut types = vec![1i32; tokens.len()];
        types[..3].fill(3);
        (tokens, types, merges.map(String::from).to_vec())
    }

    fn tiny_file(model: &str, pre: Option<&str>, add_bos: bool) -> Result<GgufFile> {
        let (tokens, types, merges) = tiny_vocab();
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let merges: Vec<&str> = merges.iter().map(String::as_str).collect();
        let mut b = GgufBuilder::new()
            .kv("tokenizer.ggml.model", GgufValue::String(model.into()))
            .kv("tokenizer.ggml.tokens", strings(&tokens))
            .kv("tokenizer.ggml.merges", strings(&merges))
            .kv("tokenizer.ggml.token_type", GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()))
            .kv("tokenizer.ggml.bos_token_id", GgufValue::U32(1))
            .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(2))
            .kv("tokenizer.ggml.padding_token_id", GgufValue::U32(2))
            .kv("tokenizer.ggml.add_bos_token", GgufValue::Bool(add_bos))
            .kv("tokenizer.chat_template", GgufValue::String("{{ messages }}".into()));
        if let Some(pre) = pre {
            b = b.kv("tokenizer.ggml.pre", GgufValue::String(pre.into()));
        }
        GgufFile::parse(b.build(), "tiny.gguf")
    }

    /// Id of the byte token for `b` in the tiny vocabulary.
    fn byte_id(b: u8) -> u32 {
        3 + b as u32
    }

    #[test]
    fn bytes_to_unicode_is_gpt2s_table() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ'); // U+0120
        assert_eq!(t[b'\n' as usize], 'Ċ'); // U+010A
        assert_eq!(t[0], 'Ā'); // U+0100
        assert_eq!(t[0xAD], 'Ń'); // U+0143, the last one
        let distinct: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn round_trips_and_merges() -> Result<()> {
        let f = tiny_file("gpt2", Some("smollm"), false)?;
        let tok = GgufTokenizer::from_gguf(&f)?;
        assert_eq!((tok.bos, tok.eos, tok.pad, tok.add_bos), (Some(1), 2, Some(2), false));
        assert_eq!(tok.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(tok.tokenizer.get_vocab_size(true), 3 + 256 + 9);

        let hello = tok.tokenizer.token_to_id("hello").expect("merged token");
        let world = tok.tokenizer.token_to_id("Ġworld").expect("merged token");
        assert_eq!(tok.encode("hello world", true)?, vec![hello, world]);
        // Merges apply only inside a pre-token: "hello" after a newline is still one token.
        assert_eq!(tok.encode("\nhello", false)?, vec![byte_id(b'\n'), hello]);

        for text in ["hello world", "  two  spaces ", "tab\tand\nnewline", "x**2 = 12345", ""] {
            let ids = tok.encode(text, false)?;
            assert_eq!(tok.decode(&ids, false)?, text, "ids {ids:?}");
        }
        Ok(())
    }

    #[test]
    fn special_tokens_stay_single_ids() -> Result<()> {
        let tok = GgufTokenizer::from_gguf(&tiny_file("gpt2", Some("smollm"), false)?)?;
        let text = "<|im_start|>user\nhello<|im_end|>\n";
        let ids = tok.encode(text, false)?;
        let hello = tok.tokenizer.token_to_id("hello").unwrap();
        let user: Vec<u32> = "user\n".bytes().map(byte_id).collect();
        let mut want = vec![1];
        want.extend(&user);
        want.extend([hello, 2, byte_id(b'\n')]);
        assert_eq!(ids, want);
        assert_eq!(tok.decode(&ids, false)?, text);
        assert_eq!(tok.decode(&ids, true)?, "user\nhello\n");
        Ok(())
    }

    #[test]
    fn accents_and_emoji_go_through_bytes() -> Result<()> {
        let tok = GgufTokenizer::from_gguf(&tiny_file("gpt2", None, false)?)?;
        for text in ["naïve café", "emoji 🦀🔥 ok", "日本語"] {
            let ids = tok.encode(text, false)?;
            // No merges touch these bytes: one id per UTF-8 byte.
            let want: Vec<u32> = text.bytes().map(byte_id).collect();
            assert_eq!(ids, want, "{text}");
            assert_eq!(tok.decode(&ids, false)?, text);
        }
        Ok(())
    }

    #[test]
    fn smollm_splits_digits_one_by_one() -> Result<()> {
        // With the plain GPT-2 regex " 123" is one pre-token; smollm splits every digit, so a
        // merge of digits never applies. The tiny vocabulary has no digit merges, so the ids
        // agree; what differs is the pre-tokenization, checked here directly.
        let smollm = GgufTokenizer::from_gguf(&tiny_file("gpt2", Some("smollm"), false)?)?;
        let gpt2 = GgufTokenizer::from_gguf(&tiny_file("gpt2", Some("gpt2"), false)?)?;
        let pieces = |t: &GgufTokenizer| -> Vec<String> {
            use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
            let mut s = PreTokenizedString::from("a 123");
            t.tokenizer.get_pre_tokenizer().unwrap().pre_tokenize(&mut s).unwrap();
            s.get_splits(OffsetReferential::Original, OffsetType::Byte)
                .into_iter()
                .map(|(piece, _, _)| piece.to_string())
                .collect()
        };
        assert_eq!(pieces(&smollm), vec!["a", "Ġ", "1", "2", "3"]);
        assert_eq!(pieces(&gpt2), vec!["a", "Ġ123"]);
        Ok(())
    }

    #[test]
    fn add_bos_token_prepends_bos() -> Result<()> {
        let tok = GgufTokenizer::from_gguf(&tiny_file("gpt2", None, true)?)?;
        let hello = tok.tokenizer.token_to_id("hello").unwrap();
        assert_eq!(tok.encode("hello", true)?, vec![1, hello]);
        assert_eq!(tok.encode("hello", false)?, vec![hello]);
        Ok(())
    }

    #[test]
    fn refuses_unsupported_models_by_name() -> Result<()> {
        let e = GgufTokenizer::from_gguf(&tiny_file("t5", None, false)?).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("tiny.gguf") && e.contains("`t5` (Unigram)"), "{e}");
        let e = GgufTokenizer::from_gguf(&tiny_file("gpt2", Some("jais"), false)?).unwrap_err();
        assert!(e.to_string().contains("tokenizer.ggml.pre is `jais`; kiln knows"), "{e}");
        Ok(())
    }

    /// A folder with a tiny byte-level tokenizer.json (the GGUF vocabulary above, saved) and
    /// `config` as tokenizer_config.json.
    fn hf_folder(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let tok = GgufTokenizer::from_gguf(&tiny_file("gpt2", None, true).unwrap()).unwrap();
        tok.tokenizer.save(dir.path().join("tokenizer.json"), false).unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
        dir
    }

    #[test]
    fn tokenizer_config_gives_special_tokens_bos_and_template() -> Result<()> {
        let dir = hf_folder(
            r#"{"bos_token": {"content": "<|im_start|>"}, "eos_token": "<|im_end|>", "pad_token": null,
                "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        );
        let tok = HfTokenizer::open(dir.path())?;
        assert_eq!((tok.bos, tok.eos), (Some(1), Some(2)));
        // No add_bos_token: the post-processor decides (this tokenizer.json puts bos first).
        assert!(tok.add_bos);
        assert_eq!(tok.chat_template.as_ref().map(|t| t.0.as_str()), Some("D"));
        assert_eq!(
            tok.special,
            vec![("bos_token".into(), "<|im_start|>".into()), ("eos_token".into(), "<|im_end|>".into())]
        );
        // chat_template.jinja, as transformers 5 saves it, wins over the config's.
        std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
        assert_eq!(HfTokenizer::open(dir.path())?.chat_template.map(|t| t.0), Some("J".into()));
        let dir = hf_folder(r#"{"bos_token": "<|im_start|>", "add_bos_token": false}"#);
        assert!(!HfTokenizer::open(dir.path())?.add_bos);
        Ok(())
    }

    #[test]
    fn bad_tokenizer_configs_name_the_file_and_key() {
        let cases = [
            (r#"{"bos_token": "<nope>"}"#, "`bos_token` is `<nope>`, which tokenizer.json does not have"),
            (r#"{"eos_token": 3}"#, "`eos_token` is 3; expected a token string"),
            (r#"{"add_bos_token": true}"#, "`add_bos_token` is true but there is no `bos_token`"),
            (r#"{"chat_template": [{"name": "x", "template": "T"}]}"#, "without a `default` one"),
            (r#"{"chat_template": 5}"#, "`chat_template` is 5; expected a string"),
            ("{not json", "tokenizer_config.json"),
        ];
        for (config, want) in cases {
            let dir = hf_folder(config);
            let e = HfTokenizer::open(dir.path()).err().expect("refused").to_string();
            assert!(e.contains("tokenizer_config.json") && e.contains(want), "expected `{want}` in: {e}");
        }
    }

    #[test]
    fn refuses_bad_vocabularies() -> Result<()> {
        let base = || {
            GgufBuilder::new()
                .kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
                .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(0))
        };
        let cases = [
            (
                base().kv("tokenizer.ggml.tokens", strings(&["a", "b", "a"])).kv("tokenizer.ggml.merges", strings(&[])),
                "tokenizer.ggml.tokens holds `a` twice, at ids 0 and 2",
            ),
            (
                base()
                    .kv("tokenizer.ggml.tokens", strings(&["a", "b", "ab"]))
                    .kv("tokenizer.ggml.merges", strings(&["ab"])),
                "tokenizer.ggml.merges entry 0 is `ab`, expected two tokens",
            ),
            (
                base()
                    .kv("tokenizer.ggml.tokens", strings(&["a", "b", "ab"]))
                    .kv("tokenizer.ggml.merges", strings(&["a b"]))
                    .kv("tokenizer.ggml.bos_token_id", GgufValue::U32(3)),
                "tokenizer.ggml.bos_token_id is 3, past the end of the vocabulary (3 tokens)",
            ),
            (
                base().kv("tokenizer.ggml.tokens", strings(&["a"])),
                "metadata key `tokenizer.ggml.merges` (an array of strings) is missing",
            ),
        ];
        for (b, want) in cases {
            let f = GgufFile::parse(b.build(), "bad.gguf")?;
            let e = GgufTokenizer::from_gguf(&f).unwrap_err().to_string();
            assert!(e.contains("bad.gguf") && e.contains(want), "expected `{want}` in: {e}");
        }
        Ok(())
    }
}
