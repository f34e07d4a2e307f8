//! Texts for an encoder: WordPiece (or any `tokenizer.json`) with the tokenizer's own special
//! tokens (`[CLS] text [SEP]` for BERT), truncated to a length; batches padded to their longest
//! member with a padding mask.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{Error, Result};
use crate::formats::tokenizer::hf_tokenizer;
use crate::gpu::Gpu;
use crate::models::bert::EncoderInput;

/// One tokenized text: ids and segment ids, at most the tokenizer's truncation length.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub types: Vec<u32>,
}

/// Characters kept of a text before tokenizing: far more than `max_len` tokens ever need, so
/// a megabyte-long e-mail costs nothing.
pub const CHARS_PER_TOKEN_BOUND: usize = 32;

/// The folder's tokenizer, truncating to `max_len` tokens (special tokens included) and not
/// padding (tokenizer.json files often carry a fixed padding that batching does better).
pub fn encoder_tokenizer(dir: &Path, max_len: usize) -> Result<Tokenizer> {
    if max_len < 3 {
        return Err(Error::invalid("tokenizer", format!("max length {max_len} leaves no room for text")));
    }
    let mut tok = hf_tokenizer(dir)?;
    tok.with_padding(None);
    tok.with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
        .map_err(|e| Error::Parse { path: dir.join("tokenizer.json"), message: e.to_string() })?;
    Ok(tok)
}

/// Tokenizes each text with special tokens.
pub fn encode_texts(tok: &Tokenizer, texts: &[&str], max_len: usize) -> Result<Vec<Encoded>> {
    texts
        .iter()
        .map(|text| {
            let cut = match text.char_indices().nth(max_len * CHARS_PER_TOKEN_BOUND) {
                Some((i, _)) => &text[..i],
                None => text,
            };
            let enc = tok
                .encode(cut, true)
                .map_err(|e| Error::invalid("tokenizer", format!("cannot tokenize {:?}: {e}", preview(text))))?;
            Ok(Encoded { ids: enc.get_ids().to_vec(), types: enc.get_type_ids().to_vec() })
        })
        .collect()
}

fn preview(text: &str) -> String {
    text.chars().take(40).collect()
}

/// The id that pads batches: the tokenizer's padding token, `[PAD]`, or 0.
pub fn pad_id(tok: &Tokenizer) -> u32 {
    tok.get_padding().map(|p| p.pad_id).or_else(|| tok.token_to_id("[PAD]")).unwrap_or(0)
}

/// A batch of encoded texts, right-padded to the longest with `pad` and masked.
pub fn make_input(gpu: &Gpu, items: &[&Encoded], pad: u32) -> Result<EncoderInput> {
    let seq = items.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(1);
    let b = items.len();
    let (mut ids, mut types, mut mask) = (vec![pad; b * seq], vec![0; b * seq], vec![0; b * seq]);
    for (r, e) in items.iter().enumerate() {
        for (t, (&id, &ty)) in e.ids.iter().zip(&e.types).enumerate() {
            ids[r * seq + t] = id;
            types[r * seq + t] = ty;
            mask[r * seq + t] = 1;
        }
    }
    EncoderInput::new(gpu, ids, Some(types), Some(mask), b, seq)
}

/// Indices of `items` in batches of `batch` with similar lengths together (evaluation: less
/// padding), the order within the whole set otherwise kept.
pub fn length_sorted_batches(items: &[Encoded], batch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| items[i].ids.len());
    order.chunks(batch.max(1)).map(|c| c.to_vec()).collect()
}
