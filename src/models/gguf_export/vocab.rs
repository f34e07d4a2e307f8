//! The tokenizer of an export as `tokenizer.*` metadata. From a GGUF base, the file's own
//! keys are copied as they are (tokens, scores, types, merges, special ids, template). From a
//! Hugging Face folder, as convert_hf_to_gguf.py's `_set_vocab_gpt2` writes a byte-level BPE:
//! `tokenizer.ggml.model = gpt2`, tokens by id (ids the vocabulary lacks up to the model's
//! `vocab_size` as `[PAD<id>]`, type UNUSED), token types (NORMAL, CONTROL for special added
//! tokens, USER_DEFINED for other added tokens), the merges as `"a b"`, `tokenizer.ggml.pre` named
//! from the pre-tokenizer (llama.cpp names it by hashing a tokenization; kiln reads the
//! pre-tokenizer's regexes, the table in `formats::tokenizer`), then the special ids,
//! `add_bos_token` and the chat template.
//!
//! Other Hugging Face tokenizers (WordLevel, SentencePiece-style BPE with byte fallback) have
//! no counterpart kiln writes: the tokens go in with `tokenizer.ggml.model = none`, which
//! llama.cpp loads without a tokenizer, and the report says so.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::formats::gguf::{GgufFile, GgufValue};
use crate::formats::tokenizer::HfTokenizer;

/// llama.cpp's `llama_token_type`.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The `tokenizer.*` keys to write, and what the reader should know about them.
pub struct VocabKeys {
    pub kvs: Vec<(String, GgufValue)>,
    pub notes: Vec<String>,
}

/// Every `tokenizer.*` key of a GGUF file, in its order.
pub fn from_gguf(file: &GgufFile) -> VocabKeys {
    let kvs = file.metadata.iter().filter(|(k, _)| k.starts_with("tokenizer.")).map(|(k, v)| (k.clone(), v.clone()));
    VocabKeys { kvs: kvs.collect(), notes: Vec::new() }
}

fn strings(items: impl IntoIterator<Item = String>) -> GgufValue {
    GgufValue::Array(items.into_iter().map(GgufValue::String).collect())
}

/// The folder's tokenizer; `vocab_size` is the model's (embedding rows), `eos` and `pad` the
/// ids kiln uses for the model.
pub fn from_hf(dir: &Path, vocab_size: usize, eos: u32, pad: u32) -> Result<VocabKeys> {
    let path = dir.join("tokenizer.json");
    let bad = |message: String| Error::Parse { path: path.clone(), message };
    let json: Value = if path.is_file() {
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?
    } else {
        Value::Null
    };
    let hf = HfTokenizer::open(dir)?;
    let mut notes = Vec::new();

    // Tokens by id: the model's vocabulary and the added tokens.
    let n = vocab_size.max(hf.tokenizer.get_vocab_size(true));
    let mut tokens: Vec<Option<String>> = vec![None; n];
    let mut types = vec![NORMAL; n];
    for (token, id) in hf.tokenizer.get_vocab(false) {
        if let Some(slot) = tokens.get_mut(id as usize) {
            *slot = Some(token);
        }
    }
    for (id, added) in hf.tokenizer.get_added_tokens_decoder() {
        if let Some(slot) = tokens.get_mut(id as usize) {
            *slot = Some(added.content.clone());
            types[id as usize] = if added.special { CONTROL } else { USER_DEFINED };
        }
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| {
            t.unwrap_or_else(|| {
                types[id] = UNUSED;
                format!("[PAD{id}]")
            })
        })
        .collect();

    let model = &json["model"];
    let byte_level_bpe = model["type"] == "BPE" && model["byte_fallback"].as_bool() != Some(true);
    let mut kvs = Vec::new();
    let mut kv = |k: &str, v: GgufValue| kvs.push((k.to_string(), v));
    if byte_level_bpe {
        let merges = model["merges"].as_array().cloned().unwrap_or_default();
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, m)| match m {
                Value::String(s) => Ok(s.clone()),
                Value::Array(pair) if pair.len() == 2 && pair.iter().all(Value::is_string) => {
                    Ok(format!("{} {}", pair[0].as_str().unwrap_or(""), pair[1].as_str().unwrap_or("")))
                }
                other => Err(bad(format!("model.merges[{i}] is {other}; expected \"a b\" or [\"a\", \"b\"]"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let pre = pre_name(&json["pre_tokenizer"]).unwrap_or_else(|| {
            notes.push(
                "tokenizer.json's pre-tokenizer is none kiln names for llama.cpp; tokenizer.ggml.pre is `default`"
                    .to_string(),
            );
            "default"
        });
        kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()));
        kv("tokenizer.ggml.pre", GgufValue::String(pre.into()));
        kv("tokenizer.ggml.tokens", strings(tokens));
        kv("tokenizer.ggml.token_type", GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()));
        kv("tokenizer.ggml.merges", strings(merges));
    } else {
        let kind = model["type"].as_str().unwrap_or("unknown");
        notes.push(format!(
            "the tokenizer ({kind}{}) has no llama.cpp counterpart kiln writes: its tokens are in the file \
             with tokenizer.ggml.model = none, so llama.cpp loads the weights but cannot tokenize text",
            if model["byte_fallback"].as_bool() == Some(true) { " with byte fallback" } else { "" }
        ));
        kv("tokenizer.ggml.model", GgufValue::String("none".into()));
        kv("tokenizer.ggml.tokens", strings(tokens));
        kv("tokenizer.ggml.token_type", GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()));
    }
    if let Some(bos) = hf.bos {
        kv("tokenizer.ggml.bos_token_id", GgufValue::U32(bos));
    }
    kv("tokenizer.ggml.eos_token_id", GgufValue::U32(eos));
    kv("tokenizer.ggml.padding_token_id", GgufValue::U32(pad));
    kv("tokenizer.ggml.add_bos_token", GgufValue::Bool(hf.add_bos));
    if let Some((template, _)) = &hf.chat_template {
        kv("tokenizer.chat_template", GgufValue::String(template.clone()));
    }
    Ok(VocabKeys { kvs, notes })
}

/// llama.cpp's name for a byte-level pre-tokenizer (`tokenizer.ggml.pre`), from the regexes of
/// tokenizer.json's `pre_tokenizer`: the inverse of `formats::tokenizer`'s table.
fn pre_name(pre: &Value) -> Option<&'static str> {
    let parts: Vec<&Value> = match pre["type"].as_str()? {
        "Sequence" => pre["pretokenizers"].as_array()?.iter().collect(),
        _ => vec![pre],
    };
    let kinds: Vec<&str> = parts.iter().filter_map(|p| p["type"].as_str()).collect();
    let regex = parts.iter().find_map(|p| p["pattern"]["Regex"].as_str());
    match (kinds.as_slice(), regex) {
        (["ByteLevel"], None) => Some("gpt-2"),
        (["Digits", "ByteLevel"], None) if parts[0]["individual_digits"] == true => Some("smollm"),
        (["Split", "ByteLevel"], Some(r)) if r.contains(r"\p{N}{1,3}") => Some("llama-bpe"),
        (["Split", "ByteLevel"], Some(r)) if r.contains(r"\p{N}|") => Some("qwen2"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tokenizer.json → the keys llama.cpp's converter wrote for the same tokenizer (the
    /// fixture's tokenizer.gguf): tokens, types, merges and pre-tokenizer name agree.
    #[test]
    fn hf_byte_level_tokenizers_give_the_converters_keys() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizers");
        for name in ["gpt2", "llama3", "qwen2", "smollm"] {
            let dir = root.join(name);
            let want = GgufFile::open(&dir.join("tokenizer.gguf")).unwrap();
            let n = want.require_str_array("tokenizer.ggml.tokens").unwrap().len();
            let got = from_hf(&dir, n, 0, 0).unwrap();
            let get = |k: &str| got.kvs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            for key in ["tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.merges"] {
                assert_eq!(get(key).as_ref(), want.get(key), "{name}: {key}");
            }
            if let Some(pre) = want.get("tokenizer.ggml.pre") {
                assert_eq!(get("tokenizer.ggml.pre").as_ref(), Some(pre), "{name}");
            }
            let types = |v: &GgufValue| v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect::<Vec<_>>();
            if let Some(t) = want.get("tokenizer.ggml.token_type") {
                assert_eq!(types(&get("tokenizer.ggml.token_type").unwrap()), types(t), "{name}");
            }
            assert!(got.notes.is_empty(), "{name}: {:?}", got.notes);
        }
    }
}
