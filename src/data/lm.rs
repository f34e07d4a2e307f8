//! Language-model data in the jsonl formats mlx-lm users already have, tokenized into examples
//! with loss masks, and padded into batches with shifted targets.
//!
//! A data folder holds `train.jsonl` and optionally `valid.jsonl` and `test.jsonl`. Each line of a
//! file is one JSON object, all in one of three formats:
//!
//! ```text
//! {"text": "..."}                                             every token is trained
//! {"prompt": "...", "completion": "..."}                      only the completion is trained
//! {"messages": [{"role": "user", "content": "..."}, ...]}     only assistant turns are trained
//! ```
//!
//! Roles are `system`, `user` and `assistant`; other keys on a line are ignored; blank lines are
//! skipped. Anything else is an error naming the file and line.
//!
//! Records become tokens through the model's [`PromptFormat`]: its own chat template (rendered by
//! `formats::chat_template`, tokenized as transformers' `apply_chat_template`) or, for a model
//! without one, plain text.
//!
//! Shapes: `B` batch, `T` tokens (the longest example of the batch).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokenizers::Tokenizer;

use super::line_error;
use crate::error::{Error, Result};
use crate::kernels::softmax_xent::IGNORE_INDEX;
use crate::util::SplitMix64;

pub use crate::formats::chat_template::{ChatTemplate, Message, PromptFormat, Role};

// ---------------------------------------------------------------------------------------------
// Records and reading
// ---------------------------------------------------------------------------------------------

/// One line of a jsonl file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Text(String),
    Completion { prompt: String, completion: String },
    Chat(Vec<Message>),
}

impl Record {
    /// The format's name, as used in error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Text(_) => "text",
            Record::Completion { .. } => "prompt/completion",
            Record::Chat(_) => "chat",
        }
    }
}

/// The splits of a data folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LmSplits {
    pub train: Vec<Record>,
    pub valid: Option<Vec<Record>>,
    pub test: Option<Vec<Record>>,
}

/// Reads one jsonl file: one record per non-blank line, all of one format.
pub fn read_jsonl(path: &Path) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut first: Option<(&'static str, usize)> = None;
    super::for_each_line(path, |line_no, line| {
        let record = parse_record(line).map_err(|m| line_error(path, line_no, m))?;
        match first {
            None => first = Some((record.kind(), line_no)),
            Some((kind, at)) if kind != record.kind() => {
                return Err(line_error(
                    path,
                    line_no,
                    format!(
                        "is a {} record but line {at} is a {kind} record; one file holds one format",
                        record.kind()
                    ),
                ));
            }
            Some(_) => {}
        }
        records.push(record);
        Ok(())
    })?;
    if records.is_empty() {
        return Err(Error::Parse {
            path: path.to_path_buf(),
            message: "no records; expected one JSON object per line, e.g. {\"text\": \"...\"}".into(),
        });
    }
    Ok(records)
}

/// Reads `train.jsonl` (required), `valid.jsonl` and `test.jsonl` (optional) from `dir`.
pub fn read_folder(dir: &Path) -> Result<LmSplits> {
    if !dir.is_dir() {
        return Err(Error::Parse {
            path: dir.to_path_buf(),
            message: format!(
                "not a folder; expected a folder with train.jsonl (and optionally valid.jsonl, test.jsonl){}",
                super::train_file_hint(dir)
            ),
        });
    }
    let train_path = dir.join("train.jsonl");
    if !train_path.is_file() {
        return Err(Error::Parse {
            path: dir.to_path_buf(),
            message: format!(
                "no train.jsonl; expected train.jsonl (and optionally valid.jsonl, test.jsonl){}",
                super::train_file_hint(dir)
            ),
        });
    }
    let optional = |name: &str| -> Result<Option<Vec<Record>>> {
        let path: PathBuf = dir.join(name);
        if path.exists() { read_jsonl(&path).map(Some) } else { Ok(None) }
    };
    Ok(LmSplits { train: read_jsonl(&train_path)?, valid: optional("valid.jsonl")?, test: optional("test.jsonl")? })
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn get_string(obj: &Map<String, Value>, key: &str, at: &str) -> std::result::Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!("{at}`{key}` must be a string, found {}", json_type(v))),
        None => Err(format!("{at}missing key `{key}`")),
    }
}

/// Parses one non-blank line; the error is the message without the file and line.
fn parse_record(line: &str) -> std::result::Result<Record, String> {
    const EXPECTED: &str = "expected {\"text\": ...}, {\"prompt\": ..., \"completion\": ...} or {\"messages\": [...]}";
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON ({e}); {EXPECTED}"))?;
    let Value::Object(obj) = value else {
        return Err(format!("found {}; {EXPECTED}", json_type(&value)));
    };
    let text = obj.contains_key("text");
    let completion = obj.contains_key("prompt") || obj.contains_key("completion");
    let chat = obj.contains_key("messages");
    if (text as u8 + completion as u8 + chat as u8) > 1 {
        return Err(format!("has the keys of more than one format; {EXPECTED}"));
    }
    if chat {
        parse_messages(&obj["messages"]).map(Record::Chat)
    } else if completion {
        let prompt = get_string(&obj, "prompt", "")?;
        let completion = get_string(&obj, "completion", "")?;
        if completion.is_empty() {
            return Err("`completion` is empty: nothing to train on".into());
        }
        Ok(Record::Completion { prompt, completion })
    } else if text {
        let text = get_string(&obj, "text", "")?;
        if text.is_empty() {
            return Err("`text` is empty".into());
        }
        Ok(Record::Text(text))
    } else {
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        Err(format!("found keys {keys:?}; {EXPECTED}"))
    }
}

fn parse_messages(value: &Value) -> std::result::Result<Vec<Message>, String> {
    let Value::Array(items) = value else {
        return Err(format!("`messages` must be an array, found {}", json_type(value)));
    };
    if items.is_empty() {
        return Err("`messages` is empty".into());
    }
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("messages[{i}]: ");
        let Value::Object(obj) = item else {
            return Err(format!("{at}expected {{\"role\": ..., \"content\": ...}}, found {}", json_type(item)));
        };
        let role = get_string(obj, "role", &at)?;
        let role = Role::parse(&role)
            .ok_or_else(|| format!("{at}unknown role `{role}`; expected system, user or assistant"))?;
        let content = get_string(obj, "content", &at)?;
        messages.push(Message { role, content });
    }
    if !messages.iter().any(|m| m.role == Role::Assistant) {
        return Err("no assistant message: nothing to train on".into());
    }
    Ok(messages)
}

// ---------------------------------------------------------------------------------------------
// Prompt formats and tokenization
// ---------------------------------------------------------------------------------------------

/// One training sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Token ids `[T]`.
    pub ids: Vec<u32>,
    /// `[T]`: true where the token is a target to predict (from the tokens before it).
    pub loss_mask: Vec<bool>,
    /// Whether the sequence was cut to `max_len`.
    pub truncated: bool,
}

impl Example {
    /// Number of tokens that are predicted: trained positions after the first.
    pub fn target_count(&self) -> usize {
        self.loss_mask.iter().skip(1).filter(|&&m| m).count()
    }
}

/// A piece of a sequence, with whether its tokens are trained.
enum Piece<'a> {
    Text(&'a str, bool),
    Id(u32, bool),
}

/// Tokenizes one record into ids and a loss mask, cut to `max_len` tokens.
///
/// Plain text and completions are tokenized piece by piece (bos, prompt, completion, eos) so
/// mask boundaries fall between pieces. Chats (and completions, as a user turn and an
/// assistant turn, the way mlx-lm reads them) under a chat template are rendered whole and
/// tokenized whole, as `apply_chat_template(tokenize=True)` does; see [`chat_example`] for the
/// loss mask. Special tokens written in text (e.g. `<|im_end|>` inside content) map to their ids,
/// as with a tokenized template.
pub fn tokenize(record: &Record, tokenizer: &Tokenizer, format: &PromptFormat, max_len: usize) -> Result<Example> {
    if max_len == 0 {
        return Err(Error::invalid("tokenize", "max_len must be at least 1"));
    }
    let (bos, eos) = match format {
        PromptFormat::Plain { bos, eos } | PromptFormat::Chat { bos, eos, .. } => (*bos, *eos),
    };
    let mut pieces: Vec<Piece> = Vec::new();
    pieces.extend(bos.map(|bos| Piece::Id(bos, false)));
    match (record, format) {
        (Record::Text(text), _) => pieces.push(Piece::Text(text, true)),
        (Record::Completion { prompt, completion }, PromptFormat::Plain { .. }) => {
            pieces.push(Piece::Text(prompt, false));
            pieces.push(Piece::Text(completion, true));
        }
        (Record::Chat(_), PromptFormat::Plain { .. }) => {
            return Err(Error::invalid(
                "tokenize",
                "chat records need a chat template, and this model has none (the plain prompt format)",
            ));
        }
        (Record::Completion { prompt, completion }, PromptFormat::Chat { template, end_of_turn, .. }) => {
            let messages =
                [Message::new(Role::User, prompt.as_str()), Message::new(Role::Assistant, completion.as_str())];
            return chat_example(&messages, template, tokenizer, &[*end_of_turn, eos], max_len);
        }
        (Record::Chat(messages), PromptFormat::Chat { template, end_of_turn, .. }) => {
            return chat_example(messages, template, tokenizer, &[*end_of_turn, eos], max_len);
        }
    }
    pieces.push(Piece::Id(eos, true));
    finish(pieces, tokenizer, max_len)
}

/// A conversation rendered by its template, tokenized whole, with each assistant turn trained.
///
/// The trained span of assistant message `i` starts where the text of the conversation before
/// it, rendered with the generation prompt, ends (so the assistant header is prompt, as at
/// generation time), and ends with the first end-of-turn token after that (the `\n` some
/// templates write after `<|im_end|>` stays untrained). A token is trained when it overlaps a
/// span, as transformers' `assistant_masks`.
///
/// Most templates render the prompt as a prefix of the whole conversation. Some do not (Qwen3's
/// generation prompt with `enable_thinking=false`, templates that drop old reasoning): then the
/// span starts where the assistant's content is found in the whole rendering, searching from
/// where the two renderings part; a content the rendering does not hold verbatim is an error
/// naming the turn, rather than a guessed mask.
fn chat_example(
    messages: &[Message],
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    end_of_turn: &[u32],
    max_len: usize,
) -> Result<Example> {
    let full = template.render(messages, false)?;
    let encoding = tokenizer.encode(full.as_str(), false).map_err(|e| {
        Error::invalid("tokenize", format!("the tokenizer failed on {:?}: {e}", truncate_for_message(&full)))
    })?;
    let (ids, offsets) = (encoding.get_ids(), encoding.get_offsets());
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut searched_from = 0;
    for (i, m) in messages.iter().enumerate() {
        if m.role != Role::Assistant {
            continue;
        }
        let turn = || {
            format!(
                "assistant message {} (messages[{i}])",
                messages[..=i].iter().filter(|m| m.role == Role::Assistant).count()
            )
        };
        let prompt = template.render(&messages[..i], true)?;
        let start = if full.starts_with(&prompt) {
            prompt.len()
        } else {
            let common = common_prefix_len(&prompt, &full).max(searched_from);
            match full[common..].find(m.content.as_str()) {
                Some(at) if !m.content.is_empty() => common + at,
                _ => {
                    return Err(Error::invalid(
                        "tokenize",
                        format!(
                            "{}: the chat template renders the conversation before it (with the generation \
                             prompt) as text that is not a prefix of the whole conversation, and the whole \
                             rendering does not hold the message's text verbatim, so kiln cannot tell which \
                             tokens are the assistant's",
                            turn()
                        ),
                    ));
                }
            }
        };
        if start < searched_from {
            return Err(Error::invalid(
                "tokenize",
                format!("{}: its rendering starts before the previous turn ends", turn()),
            ));
        }
        // The end: the first end-of-turn token at or after the start; the end of the text when the
        // template closes the last turn with none.
        let end = ids
            .iter()
            .zip(offsets)
            .find(|&(id, &(s, _))| s >= start && end_of_turn.contains(id))
            .map(|(_, &(_, e))| e)
            .unwrap_or(full.len());
        spans.push((start, end));
        searched_from = end;
    }
    let loss_mask: Vec<bool> = offsets.iter().map(|&(s, e)| spans.iter().any(|&(a, b)| e > a && s < b)).collect();
    let truncated = ids.len() > max_len;
    let n = ids.len().min(max_len);
    Ok(Example { ids: ids[..n].to_vec(), loss_mask: loss_mask[..n].to_vec(), truncated })
}

/// Bytes `a` and `b` share at their start, on a character boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices().zip(b.chars()).find(|&((_, x), y)| x != y).map(|((i, _), _)| i).unwrap_or(a.len().min(b.len()))
}

fn finish(pieces: Vec<Piece>, tokenizer: &Tokenizer, max_len: usize) -> Result<Example> {
    let mut ids = Vec::new();
    let mut loss_mask = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Id(id, trained) => {
                ids.push(id);
                loss_mask.push(trained);
            }
            Piece::Text(text, trained) => {
                if text.is_empty() {
                    continue;
                }
                let encoding = tokenizer.encode(text, false).map_err(|e| {
                    Error::invalid("tokenize", format!("the tokenizer failed on {:?}: {e}", truncate_for_message(text)))
                })?;
                ids.extend_from_slice(encoding.get_ids());
                loss_mask.resize(ids.len(), trained);
            }
        }
    }
    let truncated = ids.len() > max_len;
    ids.truncate(max_len);
    loss_mask.truncate(max_len);
    Ok(Example { ids, loss_mask, truncated })
}

fn truncate_for_message(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

/// The examples of one split, with what tokenization did to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// Examples with at least one target, in record order.
    pub examples: Vec<Example>,
    /// How many examples were cut to `max_len` (those kept and those dropped).
    pub truncated: usize,
    /// How many examples were dropped because truncation left no token to predict.
    pub dropped: usize,
}

/// Tokenizes every record (see [`tokenize`]); examples left with nothing to predict are dropped
/// and counted.
pub fn tokenize_all(
    records: &[Record],
    tokenizer: &Tokenizer,
    format: &PromptFormat,
    max_len: usize,
) -> Result<Tokenized> {
    let mut out = Tokenized { examples: Vec::with_capacity(records.len()), truncated: 0, dropped: 0 };
    for (i, record) in records.iter().enumerate() {
        let example = tokenize(record, tokenizer, format, max_len).map_err(|e| match e {
            Error::InvalidArgument { op, message } => {
                Error::InvalidArgument { op, message: format!("record {}: {message}", i + 1) }
            }
            other => other,
        })?;
        out.truncated += example.truncated as usize;
        if example.target_count() == 0 {
            out.dropped += 1;
        } else {
            out.examples.push(example);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Batching
// ---------------------------------------------------------------------------------------------

/// A padded batch, row-major `[B, T]`, right-padded to its longest example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LmBatch {
    pub batch: usize,
    pub seq: usize,
    /// `[B, T]` token ids, `pad_id` after each example's end.
    pub ids: Vec<u32>,
    /// `[B, T]`: `ids[t + 1]` where token `t + 1` is trained, [`IGNORE_INDEX`] elsewhere, on
    /// padding and at the last position.
    pub targets: Vec<i32>,
    /// `[B, T]`: 1 for a real token, 0 for padding (the attention key mask). Packed batches
    /// (`data::packing`): each token's example in its row, 1, 2, ... (0 = padding).
    pub key_mask: Vec<u32>,
    /// Packed batches: `[B, T]` each token's position inside its example. None: not packed.
    pub positions: Option<Vec<u32>>,
    /// Real (unpadded) tokens in the batch.
    pub tokens: usize,
    /// Targets that are not [`IGNORE_INDEX`].
    pub target_count: usize,
}

/// Groups examples into batches of `batch_size` (the last may be smaller), in order or shuffled
/// deterministically by `shuffle_seed`, each padded on the right to its own longest example.
pub fn make_batches(
    examples: &[Example],
    batch_size: usize,
    pad_id: u32,
    shuffle_seed: Option<u64>,
) -> Result<Vec<LmBatch>> {
    if batch_size == 0 {
        return Err(Error::invalid("make_batches", "batch_size must be at least 1"));
    }
    for (i, e) in examples.iter().enumerate() {
        if e.ids.is_empty() || e.ids.len() != e.loss_mask.len() {
            return Err(Error::invalid(
                "make_batches",
                format!("example {i} has {} ids and {} mask entries", e.ids.len(), e.loss_mask.len()),
            ));
        }
    }
    let mut order: Vec<usize> = (0..examples.len()).collect();
    if let Some(seed) = shuffle_seed {
        SplitMix64::new(seed).shuffle(&mut order);
    }
    Ok(order.chunks(batch_size).map(|rows| pad_batch(rows.iter().map(|&i| &examples[i]), pad_id)).collect())
}

fn pad_batch<'a>(rows: impl ExactSizeIterator<Item = &'a Example> + Clone, pad_id: u32) -> LmBatch {
    let batch = rows.len();
    let seq = rows.clone().map(|e| e.ids.len()).max().unwrap_or(0);
    let mut ids = vec![pad_id; batch * seq];
    let mut targets = vec![IGNORE_INDEX; batch * seq];
    let mut key_mask = vec![0u32; batch * seq];
    let (mut tokens, mut target_count) = (0, 0);
    for (b, e) in rows.enumerate() {
        let row = b * seq;
        let n = e.ids.len();
        ids[row..row + n].copy_from_slice(&e.ids);
        key_mask[row..row + n].fill(1);
        for t in 0..n - 1 {
            if e.loss_mask[t + 1] {
                targets[row + t] = e.ids[t + 1] as i32;
                target_count += 1;
            }
        }
        tokens += n;
    }
    LmBatch { batch, seq, ids, targets, key_mask, positions: None, tokens, target_count }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// GPT-2's byte-to-character table of byte-level BPE.
    fn byte_chars() -> Vec<char> {
        let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let mut next = 256;
        (0..256u32)
            .map(|b| {
                let c = if printable(b) {
                    b
                } else {
                    next += 1;
                    next - 1
                };
                char::from_u32(c).unwrap()
            })
            .collect()
    }

    const ENDOFTEXT: u32 = 259;
    const IM_START_ID: u32 = 260;
    const IM_END_ID: u32 = 261;

    /// A byte-level BPE: ids 0..256 are the bytes, three merges make "user" (256 "us", 257 "er",
    /// 258 "user"), and the added special tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`.
    fn tiny_tokenizer() -> Tokenizer {
        let chars = byte_chars();
        let mut vocab = serde_json::Map::new();
        for (b, c) in chars.iter().enumerate() {
            vocab.insert(c.to_string(), b.into());
        }
        for (id, token) in [(256, "us"), (257, "er"), (258, "user")] {
            vocab.insert(token.into(), id.into());
        }
        let added = |id: u32, content: &str| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                               "rstrip": false, "normalized": false, "special": true})
        };
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [added(ENDOFTEXT, "<|endoftext|>"), added(IM_START_ID, "<|im_start|>"), added(IM_END_ID, "<|im_end|>")],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "vocab": vocab, "merges": [["u", "s"], ["e", "r"], ["us", "er"]]}
        });
        Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap()
    }

    /// SmolLM2-Instruct's template: ChatML with a default system message.
    const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// Plain ChatML, no default system message.
    const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn format_of(tok: &Tokenizer, source: &str, bos: Option<u32>, eos: u32) -> PromptFormat {
        PromptFormat::chat(ChatTemplate::new(source, "test", &[]).unwrap(), tok, bos, eos)
    }

    /// ChatML with `<|im_end|>` as eos, as SmolLM2-Instruct and Qwen2.5-Instruct have it.
    fn chatml(tok: &Tokenizer) -> PromptFormat {
        format_of(tok, CHATML_TEMPLATE, None, IM_END_ID)
    }

    fn bytes(s: &str) -> Vec<u32> {
        s.bytes().map(u32::from).collect()
    }

    /// The ids whose mask is set, decoded.
    fn trained_text(tok: &Tokenizer, e: &Example) -> String {
        let ids: Vec<u32> = e.ids.iter().zip(&e.loss_mask).filter(|(_, m)| **m).map(|(i, _)| *i).collect();
        tok.decode(&ids, false).unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
        path
    }

    fn err_of(path: &Path) -> String {
        read_jsonl(path).unwrap_err().to_string()
    }

    #[test]
    fn tiny_tokenizer_maps_specials_to_single_ids() {
        let tok = tiny_tokenizer();
        let ids = tok.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, [vec![IM_START_ID, 258], bytes("\nhi"), vec![IM_END_ID]].concat());
    }

    #[test]
    fn the_end_of_turn_token_is_read_off_the_template() {
        let tok = tiny_tokenizer();
        let f = format_of(&tok, CHATML_TEMPLATE, None, ENDOFTEXT);
        assert!(matches!(f, PromptFormat::Chat { end_of_turn: IM_END_ID, eos: ENDOFTEXT, .. }), "{f:?}");
        assert_eq!(f.stop_tokens(), vec![ENDOFTEXT, IM_END_ID]);
        // A template that closes turns with no special token of the tokenizer: eos ends them.
        let f = format_of(&tok, "{% for m in messages %}{{ m.content }}\n{% endfor %}", None, ENDOFTEXT);
        assert!(matches!(f, PromptFormat::Chat { end_of_turn: ENDOFTEXT, .. }), "{f:?}");
        assert_eq!(f.stop_tokens(), vec![ENDOFTEXT]);
    }

    #[test]
    fn read_jsonl_reads_each_format_and_skips_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.jsonl", "{\"text\": \"hello\"}\n\n  \r\n{\"text\": \"bye\", \"id\": 3}\n");
        assert_eq!(read_jsonl(&p).unwrap(), vec![Record::Text("hello".into()), Record::Text("bye".into())]);
        let p = write(dir.path(), "b.jsonl", "{\"prompt\": \"P\", \"completion\": \"C\"}");
        assert_eq!(read_jsonl(&p).unwrap(), vec![Record::Completion { prompt: "P".into(), completion: "C".into() }]);
        let p = write(
            dir.path(),
            "c.jsonl",
            r#"{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]}"#,
        );
        assert_eq!(
            read_jsonl(&p).unwrap(),
            vec![Record::Chat(vec![
                Message::new(Role::System, "S"),
                Message::new(Role::User, "U"),
                Message::new(Role::Assistant, "A")
            ])]
        );
    }

    #[test]
    fn read_jsonl_errors_name_file_line_and_expectation() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&str, &[&str])] = &[
            ("{\"text\": \"a\"}\n{\"text\": \"b\"\n", &["line 2", "invalid JSON", "expected {\"text\""]),
            ("\n\n[1, 2]\n", &["line 3", "found an array"]),
            ("{\"text\": \"a\"}\n{\"txt\": \"b\"}\n", &["line 2", "found keys [\"txt\"]"]),
            ("{\"prompt\": \"a\"}\n", &["line 1", "missing key `completion`"]),
            ("{\"prompt\": \"a\", \"completion\": 5}\n", &["line 1", "`completion` must be a string, found a number"]),
            ("{\"prompt\": \"a\", \"completion\": \"\"}\n", &["line 1", "`completion` is empty"]),
            (
                "{\"text\": \"a\"}\n{\"prompt\": \"a\", \"completion\": \"b\"}\n",
                &["line 2", "prompt/completion", "line 1 is a text"],
            ),
            ("{\"text\": \"a\", \"prompt\": \"b\", \"completion\": \"c\"}\n", &["line 1", "more than one format"]),
            ("{\"text\": \"\"}\n", &["line 1", "`text` is empty"]),
            ("{\"messages\": []}\n", &["line 1", "`messages` is empty"]),
            (
                "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"tool\", \"content\": \"b\"}]}\n",
                &["line 1", "messages[1]", "unknown role `tool`", "expected system, user or assistant"],
            ),
            ("{\"messages\": [{\"role\": \"assistant\"}]}\n", &["messages[0]", "missing key `content`"]),
            ("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n", &["no assistant message"]),
            ("\n \n", &["no records"]),
        ];
        for (i, (text, wanted)) in cases.iter().enumerate() {
            let path = write(dir.path(), &format!("case{i}.jsonl"), text);
            let err = err_of(&path);
            assert!(err.contains(&format!("case{i}.jsonl")), "{err}");
            for w in *wanted {
                assert!(err.contains(w), "case {i}: `{err}` lacks `{w}`");
            }
        }
        let bad_utf8 = dir.path().join("bad.jsonl");
        std::fs::write(&bad_utf8, b"{\"text\": \"a\"}\n{\"text\": \"\xff\"}\n").unwrap();
        let err = err_of(&bad_utf8);
        assert!(err.contains("bad.jsonl: line 2: not UTF-8"), "{err}");
        let err = err_of(&dir.path().join("missing.jsonl"));
        assert!(err.contains("missing.jsonl"), "{err}");
    }

    #[test]
    fn read_folder_requires_train_and_reads_optional_splits() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_folder(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no train.jsonl"), "{err}");
        write(dir.path(), "train.jsonl", "{\"text\": \"a\"}\n");
        let splits = read_folder(dir.path()).unwrap();
        assert_eq!(splits.train, vec![Record::Text("a".into())]);
        assert_eq!((splits.valid, splits.test), (None, None));
        write(dir.path(), "valid.jsonl", "{\"text\": \"v\"}\n");
        write(dir.path(), "test.jsonl", "{\"oops\": 1}\n");
        let err = read_folder(dir.path()).unwrap_err().to_string();
        assert!(err.contains("test.jsonl: line 1"), "{err}");
        write(dir.path(), "test.jsonl", "{\"text\": \"t\"}\n");
        let splits = read_folder(dir.path()).unwrap();
        assert_eq!(splits.valid, Some(vec![Record::Text("v".into())]));
        assert_eq!(splits.test, Some(vec![Record::Text("t".into())]));
    }

    #[test]
    fn smollm2s_template_inserts_its_default_system_message() {
        let tok = tiny_tokenizer();
        let format = format_of(&tok, SMOLLM2_TEMPLATE, None, IM_END_ID);
        let messages =
            vec![Message::new(Role::User, "Pronounce: aachen"), Message::new(Role::Assistant, "AA1 K AH0 N")];
        let system =
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
        assert_eq!(
            format.render_chat(&messages, false).unwrap(),
            format!(
                "{system}<|im_start|>user\nPronounce: aachen<|im_end|>\n<|im_start|>assistant\nAA1 K AH0 N<|im_end|>\n"
            )
        );
        assert_eq!(
            format.render_chat(&messages[..1], true).unwrap(),
            format!("{system}<|im_start|>user\nPronounce: aachen<|im_end|>\n<|im_start|>assistant\n")
        );
        let own_system = [Message::new(Role::System, "S"), messages[0].clone()];
        assert_eq!(
            format.render_chat(&own_system, false).unwrap(),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nPronounce: aachen<|im_end|>\n"
        );
        let err = PromptFormat::Plain { bos: None, eos: 0 }.render_chat(&messages, true).unwrap_err().to_string();
        assert!(err.contains("no chat template"), "{err}");
    }

    #[test]
    fn text_trains_every_token_with_bos_and_eos() {
        let tok = tiny_tokenizer();
        let e =
            tokenize(&Record::Text("hi user".into()), &tok, &PromptFormat::Plain { bos: Some(1), eos: 2 }, 64).unwrap();
        assert_eq!(e.ids, [vec![1], bytes("hi "), vec![258, 2]].concat());
        assert_eq!(e.loss_mask, [false, true, true, true, true, true]);
        assert!(!e.truncated);
        assert_eq!(e.target_count(), 5);
        // Under a chat template a text record is still text then eos (<|im_end|> here), all trained.
        let e = tokenize(&Record::Text("hi".into()), &tok, &chatml(&tok), 64).unwrap();
        assert_eq!(e.ids, [bytes("hi"), vec![IM_END_ID]].concat());
        assert!(e.loss_mask.iter().all(|&m| m));
    }

    #[test]
    fn completion_masks_the_prompt() {
        let tok = tiny_tokenizer();
        let record = Record::Completion { prompt: "Q: ".into(), completion: "ab".into() };
        let e = tokenize(&record, &tok, &PromptFormat::Plain { bos: None, eos: ENDOFTEXT }, 64).unwrap();
        assert_eq!(e.ids, [bytes("Q: ab"), vec![ENDOFTEXT]].concat());
        assert_eq!(e.loss_mask, [false, false, false, true, true, true]);
        assert_eq!(trained_text(&tok, &e), "ab<|endoftext|>");
    }

    #[test]
    fn completion_under_a_template_is_a_user_and_assistant_turn() {
        let tok = tiny_tokenizer();
        let record = Record::Completion { prompt: "Pronounce: ox".into(), completion: "AA1 K S".into() };
        let format = chatml(&tok);
        let e = tokenize(&record, &tok, &format, 256).unwrap();
        let text = "<|im_start|>user\nPronounce: ox<|im_end|>\n<|im_start|>assistant\nAA1 K S<|im_end|>\n";
        assert_eq!(e.ids, tok.encode(text, false).unwrap().get_ids());
        assert_eq!(trained_text(&tok, &e), "AA1 K S<|im_end|>");
        // The prompt ends with the generation prompt; everything after it but the final "\n" is trained.
        let prompt = format.render_chat(&[Message::new(Role::User, "Pronounce: ox")], true).unwrap();
        let n_prompt = tok.encode(prompt.as_str(), false).unwrap().get_ids().len();
        assert_eq!(&e.ids[..n_prompt], tok.encode(prompt.as_str(), false).unwrap().get_ids());
        let n = e.ids.len();
        assert!(e.loss_mask[..n_prompt].iter().all(|&m| !m));
        assert!(e.loss_mask[n_prompt..n - 1].iter().all(|&m| m));
        assert!(!e.loss_mask[n - 1]);
        assert_eq!(e.ids[n - 2], IM_END_ID);
    }

    /// Each trained run of an example, as ids.
    fn trained_runs(e: &Example) -> Vec<Vec<u32>> {
        e.ids
            .iter()
            .zip(&e.loss_mask)
            .collect::<Vec<_>>()
            .split(|(_, m)| !**m)
            .filter(|r| !r.is_empty())
            .map(|r| r.iter().map(|(i, _)| **i).collect())
            .collect()
    }

    #[test]
    fn chat_trains_only_assistant_turns() {
        let tok = tiny_tokenizer();
        let messages = vec![
            Message::new(Role::System, "sys"),
            Message::new(Role::User, "u1"),
            Message::new(Role::Assistant, "a1"),
            Message::new(Role::User, "u2"),
            Message::new(Role::Assistant, "a2"),
        ];
        // bos is for text records: a template writes its own (this one none).
        let format = format_of(&tok, CHATML_TEMPLATE, Some(ENDOFTEXT), IM_END_ID);
        let e = tokenize(&Record::Chat(messages.clone()), &tok, &format, 256).unwrap();
        let rendered = format.render_chat(&messages, false).unwrap();
        assert_eq!(e.ids, tok.encode(rendered.as_str(), false).unwrap().get_ids());
        assert_eq!(trained_text(&tok, &e), "a1<|im_end|>a2<|im_end|>");
        // Each trained run is exactly "content <|im_end|>" of one assistant turn.
        assert_eq!(
            trained_runs(&e),
            vec![[bytes("a1"), vec![IM_END_ID]].concat(), [bytes("a2"), vec![IM_END_ID]].concat()]
        );
        assert_eq!(e.target_count(), 6);

        // SmolLM2's default system message is inserted when the conversation has none.
        let format = format_of(&tok, SMOLLM2_TEMPLATE, None, IM_END_ID);
        let e = tokenize(&Record::Chat(messages[1..3].to_vec()), &tok, &format, 256).unwrap();
        let rendered = format.render_chat(&messages[1..3], false).unwrap();
        assert!(rendered.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
        assert_eq!(e.ids, tok.encode(rendered.as_str(), false).unwrap().get_ids());
        assert_eq!(trained_text(&tok, &e), "a1<|im_end|>");

        let err = tokenize(&Record::Chat(messages), &tok, &PromptFormat::Plain { bos: None, eos: 0 }, 9);
        assert!(err.unwrap_err().to_string().contains("chat template"));
    }

    #[test]
    fn a_generation_prompt_that_is_no_prefix_falls_back_to_the_content() {
        let tok = tiny_tokenizer();
        // Like Qwen3 with enable_thinking=false: the generation prompt carries an empty thought that
        // the rendering of a finished turn does not, so the prompt is no prefix of the conversation.
        let source = "{% for m in messages %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think></think>' }}{% endif %}";
        let format = format_of(&tok, source, None, IM_END_ID);
        let messages = vec![
            Message::new(Role::User, "u1"),
            Message::new(Role::Assistant, "a1"),
            Message::new(Role::User, "u2"),
            Message::new(Role::Assistant, "a2"),
        ];
        let e = tokenize(&Record::Chat(messages.clone()), &tok, &format, 256).unwrap();
        assert_eq!(
            trained_runs(&e),
            vec![[bytes("a1"), vec![IM_END_ID]].concat(), [bytes("a2"), vec![IM_END_ID]].concat()]
        );

        // A template that rewrites the assistant's text: no prefix, no verbatim content: an error
        // naming the turn, not a guessed mask.
        let source = "{% for m in messages %}{{ '<|im_start|>' + m.role + '\n' + m.content.upper() + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>' }}{% endif %}";
        let format = format_of(&tok, source, None, IM_END_ID);
        let err = tokenize(&Record::Chat(messages), &tok, &format, 256).unwrap_err().to_string();
        assert!(err.contains("assistant message 1 (messages[1])") && err.contains("not a prefix"), "{err}");
    }

    #[test]
    fn truncation_is_reported_and_empty_examples_dropped() {
        let tok = tiny_tokenizer();
        let plain = PromptFormat::Plain { bos: None, eos: ENDOFTEXT };
        let long = Record::Text("abcdefgh".into());
        let e = tokenize(&long, &tok, &plain, 4).unwrap();
        assert_eq!(e.ids, bytes("abcd"));
        assert_eq!(e.loss_mask.len(), 4);
        assert!(e.truncated);
        assert!(tokenize(&long, &tok, &plain, 0).is_err());

        let records = vec![
            long,
            Record::Text("ab".into()),
            // The prompt fills max_len: nothing left to predict.
            Record::Completion { prompt: "0123456789".into(), completion: "x".into() },
        ];
        let out = tokenize_all(&records, &tok, &plain, 5).unwrap();
        assert_eq!((out.examples.len(), out.truncated, out.dropped), (2, 2, 1));
        assert_eq!(out.examples[1].ids, [bytes("ab"), vec![ENDOFTEXT]].concat());
        let err = tokenize_all(&[Record::Chat(vec![])], &tok, &plain, 5).unwrap_err().to_string();
        assert!(err.contains("record 1"), "{err}");
    }

    fn example(ids: &[u32], mask: &[bool]) -> Example {
        Example { ids: ids.to_vec(), loss_mask: mask.to_vec(), truncated: false }
    }

    #[test]
    fn batches_pad_right_and_shift_targets() {
        let (f, t) = (false, true);
        let examples =
            vec![example(&[10, 11, 12, 13], &[f, f, t, t]), example(&[20, 21], &[t, t]), example(&[30], &[t])];
        let batches = make_batches(&examples, 2, 0, None).unwrap();
        assert_eq!(batches.len(), 2);
        let b = &batches[0];
        assert_eq!((b.batch, b.seq, b.tokens, b.target_count), (2, 4, 6, 3));
        assert_eq!(b.ids, [10, 11, 12, 13, 20, 21, 0, 0]);
        assert_eq!(b.key_mask, [1, 1, 1, 1, 1, 1, 0, 0]);
        // Position t predicts token t+1 where t+1 is trained; the last real position and padding predict nothing.
        assert_eq!(b.targets, [-100, 12, 13, -100, 21, -100, -100, -100]);
        let b = &batches[1];
        assert_eq!((b.batch, b.seq, b.tokens, b.target_count), (1, 1, 1, 0));
        assert_eq!((b.ids.as_slice(), b.targets.as_slice(), b.key_mask.as_slice()), (&[30][..], &[-100][..], &[1][..]));
        assert_eq!(
            batches.iter().map(|b| b.target_count).sum::<usize>(),
            examples.iter().map(Example::target_count).sum::<usize>()
        );
    }

    #[test]
    fn batches_shuffle_deterministically() {
        let examples: Vec<Example> = (0..20u32).map(|i| example(&[i, i + 100], &[true, true])).collect();
        let firsts = |seed| -> Vec<u32> {
            make_batches(&examples, 3, 0, seed)
                .unwrap()
                .iter()
                .flat_map(|b| b.ids.chunks(b.seq).map(|r| r[0]))
                .collect()
        };
        assert_eq!(firsts(None), (0..20).collect::<Vec<_>>());
        let a = firsts(Some(1));
        assert_eq!(a, firsts(Some(1)));
        assert_ne!(a, firsts(Some(2)));
        assert_ne!(a, firsts(None));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_eq!(make_batches(&examples, 3, 0, Some(1)).unwrap().len(), 7);
    }

    #[test]
    fn make_batches_rejects_bad_input() {
        assert!(make_batches(&[example(&[1], &[true])], 0, 0, None).is_err());
        assert!(make_batches(&[example(&[1, 2], &[true])], 1, 0, None).is_err());
        assert!(make_batches(&[example(&[], &[])], 1, 0, None).is_err());
        assert!(make_batches(&[], 4, 0, None).unwrap().is_empty());
    }
}
