//! SentencePiece vocabularies from GGUF (`tokenizer.ggml.model = "llama"`): tokens with scores
//! and types, byte fallback, usually no merges. Rebuilt as a `tokenizers` BPE the way
//! transformers' GGUF loader does it (`integrations/gguf/gguf_tokenizer_mapping.py`), since its
//! ids are what the parity checks hold kiln to:
//!
//! - merges come from the file when it has them; otherwise every split of a token into two
//!   tokens of the vocabulary is a merge, ranked by the token's score (`generate_merges`). Gemma's
//!   scores do not follow its merge order, so for Gemma the rank is the token's position;
//! - Gemma's files store tokens of two or more spaces as spaces; they are respelled as `▁`s;
//! - per family, the text is prepared as its Hugging Face tokenizer does: Gemma replaces spaces
//!   by `▁` (no prefix space); Llama-style vocabularies put `▁` first and replace spaces
//!   (Metaspace, "first"); Phi-3 prepends `▁` in a normalizer (so a leading space gives one more
//!   `▁` than Metaspace would);
//! - characters without a token become byte tokens `<0xNN>` (byte fallback); decoding joins and
//!   turns `▁` back into spaces.
//!
//! BOS and the special-token ids are the caller's (`formats::tokenizer`), as for BPE files.

use std::collections::HashMap;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// SentencePiece's stand-in for a space.
const SPACE: &str = "\u{2581}";

/// How a family's Hugging Face tokenizer prepares text for the same vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Llama 2, Mistral v0.1 and most SentencePiece files: Metaspace with a prefix `▁`.
    Llama,
    /// Gemma 1-3: spaces replaced, no prefix; merges ranked by token position.
    Gemma,
    /// Phi-3: a prefix `▁` and spaces replaced in the normalizer.
    Phi3,
}

impl Flavor {
    /// The flavour transformers picks for a GGUF file's `general.architecture`.
    pub fn for_architecture(architecture: &str) -> Flavor {
        match architecture {
            "gemma" | "gemma2" | "gemma3" => Flavor::Gemma,
            "phi3" => Flavor::Phi3,
            _ => Flavor::Llama,
        }
    }
}

/// The tokenizer a SentencePiece GGUF describes (model, normalizer, pre-tokenizer, decoder and
/// its control and user-defined tokens), without a BOS post-processor.
pub fn build(file: &GgufFile, flavor: Flavor) -> Result<Tokenizer> {
    let err = |message: String| Error::Parse { path: file.path.clone(), message };
    let stored = file.require_str_array("tokenizer.ggml.tokens")?;
    let token_types = token_types(file, stored.len())?;
    let tokens: Vec<String> =
        if flavor == Flavor::Gemma {
            stored
                .iter()
                .map(|t| {
                    if t.contains(' ') && t.trim().is_empty() { SPACE.repeat(t.chars().count()) } else { t.to_string() }
                })
                .collect()
        } else {
            stored.iter().map(|t| t.to_string()).collect()
        };
    let merges = match file.get_str_array("tokenizer.ggml.merges")? {
        Some(m) => m
            .iter()
            .enumerate()
            .map(|(i, m)| match m.split_once(' ') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
                _ => Err(err(format!("tokenizer.ggml.merges entry {i} is `{m}`, expected two tokens"))),
            })
            .collect::<Result<Vec<_>>>()?,
        None => {
            let ranks: Vec<f64> = if flavor == Flavor::Gemma {
                (0..tokens.len()).map(|i| -(i as f64)).collect()
            } else {
                scores(file, tokens.len())?
            };
            merges_from_vocabulary(&tokens, &ranks)
        }
    };

    // As a Python dict built from (token, id) pairs: a token listed twice keeps its last id.
    let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let unk = file
        .get_u64("tokenizer.ggml.unknown_token_id")?
        .and_then(|id| tokens.get(id as usize).cloned())
        .unwrap_or_else(|| "<unk>".into());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.clone(), merges)
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| err(format!("building the SentencePiece BPE from tokenizer.ggml.*: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);

    let space = || Replace::new(" ", SPACE).expect("a plain string pattern compiles");
    let mut decoders: Vec<DecoderWrapper> =
        vec![space_back().into(), ByteFallback::default().into(), Fuse::default().into()];
    match flavor {
        Flavor::Gemma => {
            tokenizer.with_normalizer(Some(space())).map_err(|e| err(format!("normalizer: {e}")))?;
            tokenizer.with_pre_tokenizer(Some(
                Split::new(SplitPattern::String(" ".into()), SplitDelimiterBehavior::MergedWithPrevious, false)
                    .map_err(|e| err(format!("pre-tokenizer: {e}")))?,
            ));
        }
        Flavor::Llama => {
            tokenizer.with_pre_tokenizer(Some(Metaspace::new('\u{2581}', PrependScheme::First, false)));
            decoders.push(Strip::new(' ', 1, 0).into());
        }
        Flavor::Phi3 => {
            let steps: Vec<NormalizerWrapper> = vec![Prepend::new(SPACE.into()).into(), space().into()];
            tokenizer
                .with_normalizer(Some(NormalizerSequence::new(steps)))
                .map_err(|e| err(format!("normalizer: {e}")))?;
            decoders.push(Strip::new(' ', 1, 0).into());
        }
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));

    // Control tokens (`<start_of_turn>`) are special and matched whole; user-defined ones are
    // plain added tokens, matched whole too (as llama.cpp does).
    if let Some(types) = &token_types {
        let of_type = |wanted: i64| stored.iter().zip(types).filter(move |&(_, &ty)| ty == wanted).map(|(t, _)| *t);
        let control: Vec<AddedToken> =
            of_type(TOKEN_TYPE_CONTROL).map(|t| AddedToken::from(t, true).normalized(false)).collect();
        let user: Vec<AddedToken> = of_type(TOKEN_TYPE_USER_DEFINED)
            .filter(|t| vocab.contains_key(*t))
            .map(|t| AddedToken::from(t, false).normalized(false))
            .collect();
        let tok_err = |e: tokenizers::Error| err(format!("adding special tokens: {e}"));
        tokenizer.add_special_tokens(control).map_err(tok_err)?;
        tokenizer.add_tokens(user).map_err(tok_err)?;
    }
    Ok(tokenizer)
}

/// `tokenizer.ggml.token_type` when the file has it, one per token (checked).
pub(crate) fn token_types(file: &GgufFile, n_tokens: usize) -> Result<Option<Vec<i64>>> {
    let types = file.get_i64_array("tokenizer.ggml.token_type")?;
    if let Some(types) = &types
        && types.len() != n_tokens
    {
        return Err(Error::Parse {
            path: file.path.clone(),
            message: format!(
                "tokenizer.ggml.token_type has {} entries, tokenizer.ggml.tokens has {n_tokens}",
                types.len()
            ),
        });
    }
    Ok(types)
}

/// The decoder step that turns `▁` back into a space.
fn space_back() -> Replace {
    Replace::new(SPACE, " ").expect("a plain string pattern compiles")
}

/// `tokenizer.ggml.scores`, one per token.
fn scores(file: &GgufFile, n: usize) -> Result<Vec<f64>> {
    let err = |message: String| Error::Parse { path: file.path.clone(), message };
    let values = file
        .get("tokenizer.ggml.scores")
        .and_then(|v| v.as_array())
        .ok_or_else(|| err("no tokenizer.ggml.merges and no tokenizer.ggml.scores to derive them from".into()))?;
    if values.len() != n {
        return Err(err(format!("tokenizer.ggml.scores has {} entries, tokenizer.ggml.tokens has {n}", values.len())));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| v.as_f64().ok_or_else(|| err(format!("tokenizer.ggml.scores entry {i} is not a number"))))
        .collect()
}

/// The merges a vocabulary implies, as transformers' `generate_merges` orders them: for every
/// token, each split into two tokens of the vocabulary (ordered by the pieces' ids), ranked by
/// the token's score (higher first), then by the lengths of the left and right pieces (longer
/// first); ties keep their order.
fn merges_from_vocabulary(tokens: &[String], ranks: &[f64]) -> Vec<(String, String)> {
    // Python dicts: a repeated token keeps its first place in iteration and its last value.
    let mut id: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    let mut score: HashMap<&str, f64> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if id.insert(t, i).is_none() {
            order.push(t);
        }
        score.insert(t, ranks[i]);
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for token in order {
        let mut local: Vec<(&str, &str)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(l, r)| id.contains_key(l) && id.contains_key(r))
            .collect();
        local.sort_by_key(|(l, r)| (id[l], id[r]));
        let s = score[token];
        merges.extend(local.into_iter().map(|(l, r)| (l, r, s)));
    }
    let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
    // Stable and descending, as Python's sorted(..., reverse=True).
    merges.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0).then(kb.1.cmp(&ka.1)).then(kb.2.cmp(&ka.2))
    });
    merges.into_iter().map(|(l, r, _)| (l.to_string(), r.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf::GgufValue;
    use crate::formats::gguf::testing::{GgufBuilder, strings};

    #[test]
    fn merges_rank_by_score_then_piece_length() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"].iter().map(|s| s.to_string()).collect();
        // "abc" splits as a|bc and ab|c; "bc" outranks "ab".
        let m = merges_from_vocabulary(&tokens, &[0.0, 0.0, 0.0, -2.0, -1.0, -3.0]);
        let m: Vec<String> = m.iter().map(|(l, r)| format!("{l} {r}")).collect();
        assert_eq!(m, ["b c", "a b", "ab c", "a bc"]);
    }

    fn tiny(flavor_arch: &str) -> Tokenizer {
        let tokens =
            ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "▁", "h", "i", "hi", "▁hi", "<0x21>", "  "];
        let mut types = vec![3i32, 3, 3, 2, 3];
        types.extend([1; 7]);
        let bytes = GgufBuilder::new()
            .kv("general.architecture", GgufValue::String(flavor_arch.into()))
            .kv("tokenizer.ggml.model", GgufValue::String("llama".into()))
            .kv("tokenizer.ggml.tokens", strings(&tokens))
            .kv(
                "tokenizer.ggml.scores",
                GgufValue::Array((0..tokens.len()).map(|i| GgufValue::F32(-(i as f32))).collect()),
            )
            .kv("tokenizer.ggml.token_type", GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()))
            .kv("tokenizer.ggml.unknown_token_id", GgufValue::U32(3))
            .build();
        let file = GgufFile::parse(bytes, "tiny.gguf").unwrap();
        build(&file, Flavor::for_architecture(flavor_arch)).unwrap()
    }

    #[test]
    fn flavours_prepare_text_as_their_families_do() {
        let ids = |t: &Tokenizer, s: &str| t.encode(s, false).unwrap().get_ids().to_vec();
        let gemma = tiny("gemma3");
        // "hi hi!": no prefix space; "!" has no token and falls back to its byte.
        assert_eq!(ids(&gemma, "hi hi!"), [8, 9, 10]);
        assert_eq!(ids(&gemma, "<start_of_turn>hi"), [4, 8]);
        // Two spaces were stored as "  " and respelled "▁▁" (id 11); merges follow positions.
        assert_eq!(ids(&gemma, "  "), [11]);
        assert_eq!(ids(&gemma, "  hi"), [5, 9]);
        assert_eq!(gemma.decode(&[8, 9, 10], false).unwrap(), "hi hi!");
        let llama = tiny("llama");
        assert_eq!(ids(&llama, "hi hi"), [9, 9]);
        assert_eq!(llama.decode(&[9, 9], false).unwrap(), "hi hi");
    }
}
