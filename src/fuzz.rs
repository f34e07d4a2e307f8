//! Entry points for fuzzing the readers of files users hand us: GGUF, safetensors, jsonl/csv
//! data and TOML settings. Each takes arbitrary bytes and must return (an error is fine) without
//! panicking, hanging or allocating more than the input justifies.
//!
//! The cargo-fuzz targets in `fuzz/` call these, and `tests/bad_input.rs` replays the inputs
//! the fuzzers found (`tests/fixtures/fuzz/`) plus seeded mutations of the seed corpus, so the
//! regressions run in stable CI.

use std::path::{Path, PathBuf};

use crate::formats::gguf::GgufFile;
use crate::formats::safetensors::{SafetensorsSource, WeightSource};
use crate::formats::tokenizer::GgufTokenizer;
use crate::models::gguf_decoder::config_from_metadata;

/// Tensors larger than this are not dequantized (the parse already checked their bytes lie in
/// the file; decoding megabytes per input would only slow the fuzzer down).
const MAX_DECODED_ELEMENTS: u64 = 1 << 16;

/// A GGUF file: the header, every small tensor dequantized, the Llama config and the tokenizer
/// read from its metadata, and a round trip through the tokenizer if one was built.
pub fn gguf(bytes: &[u8]) {
    let Ok(file) = GgufFile::parse(bytes.to_vec(), "fuzz.gguf") else { return };
    for info in &file.tensors {
        if info.n_elements() <= MAX_DECODED_ELEMENTS {
            let _ = file.tensor_f32(&info.name);
        }
    }
    let _ = config_from_metadata(&file);
    if let Ok(tokenizer) = GgufTokenizer::from_gguf(&file)
        && let Ok(ids) = tokenizer.encode("Hello, world! héllo 🙂", true)
    {
        let _ = tokenizer.decode(&ids, false);
    }
}

/// A safetensors file: the header, then every tensor converted to f32 at its stored shape.
pub fn safetensors(bytes: &[u8]) {
    let path = Path::new("fuzz.safetensors");
    let Ok(mut source) = SafetensorsSource::from_bytes(path, bytes) else { return };
    for name in source.names() {
        let Some(shape) = source.shape_of(&name).map(<[usize]>::to_vec) else { continue };
        let _ = source.take(&name, &shape);
    }
    let _ = source.finish(&|_| false);
}

/// A jsonl file read by every reader that takes one: classification examples, LM records (all
/// three formats) and the curation rows.
pub fn jsonl(bytes: &[u8]) {
    let path = ScratchFile::new("jsonl", bytes);
    let _ = crate::data::classify::read_examples(&path.0);
    let _ = crate::data::lm::read_jsonl(&path.0);
    let _ = crate::curate::rows::read_rows(&path.0);
}

/// A csv file read as classification examples and as curation rows.
pub fn csv(bytes: &[u8]) {
    let path = ScratchFile::new("csv", bytes);
    let _ = crate::data::classify::read_examples(&path.0);
    let _ = crate::curate::rows::read_rows(&path.0);
}

/// A `--config` TOML file expanded into flags and parsed as `kiln train`'s command line.
pub fn toml(bytes: &[u8]) {
    let path = ScratchFile::new("toml", bytes);
    let args = ["kiln", "train", "--config"].map(std::ffi::OsString::from).into_iter().chain([path.0.clone().into()]);
    let Ok(args) = crate::cli::config::expand(args.collect()) else { return };
    if let Ok(crate::cli::Cli { command: crate::cli::Command::Train(train) }) = crate::cli::Cli::try_parse_args(args) {
        let _ = train.settings.validate();
    }
}

/// The readers take paths, so each input is written to a file of this process and thread,
/// removed again on drop.
struct ScratchFile(PathBuf);

impl ScratchFile {
    fn new(extension: &str, bytes: &[u8]) -> ScratchFile {
        let thread = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_alphanumeric(), "");
        let path = std::env::temp_dir().join(format!("kiln-fuzz-{}-{thread}.{extension}", std::process::id()));
        std::fs::write(&path, bytes).expect("the temp folder is writable");
        ScratchFile(path)
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A reader of untrusted bytes.
pub type Reader = fn(&[u8]);

/// The readers above, by the names of the fuzz targets.
pub const TARGETS: [(&str, Reader); 5] =
    [("gguf", gguf), ("safetensors", safetensors), ("jsonl", jsonl), ("csv", csv), ("toml", toml)];

/// Small valid inputs for `target` that reach deep into its reader: the fuzzers start from them
/// (`cargo run --example fuzz_seeds`) and the CI test mutates them.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "gguf" => vec![tiny_llama_gguf()],
        "safetensors" => vec![tiny_safetensors()],
        "jsonl" => [
            "{\"text\": \"win a prize now\", \"label\": \"spam\", \"group\": \"spam-1\"}\n{\"text\": \"lunch?\", \"label\": 0}\n",
            "{\"text\": \"The cat sat.\"}\n{\"text\": \"A second document.\"}\n",
            "{\"prompt\": \"hello\", \"completion\": \"HH AH0 L OW1\"}\n",
            "{\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", \"content\": \"hi\"}, \
             {\"role\": \"assistant\", \"content\": \"hello\"}]}\n",
        ]
        .map(|s| s.as_bytes().to_vec())
        .to_vec(),
        "csv" => [
            "text,label,group\n\"win, a prize\",spam,s1\nlunch?,ham,h1\n\"multi\nline\",ham,\n",
            "\u{feff}label,text\n1,\"quoted \"\"word\"\"\"\n0,plain\n",
        ]
        .map(|s| s.as_bytes().to_vec())
        .to_vec(),
        "toml" => [
            "lr = 5e-4\nbatch_size = 4\nstrategy = \"lora\"\ntarget_modules = [\"query\", \"value\"]\nfull = true\n",
            "epochs = 2\nwarmup_ratio = 0.1\nschedule = \"cosine\"\nseed = 7\nno_restore_best = false\n",
        ]
        .map(|s| s.as_bytes().to_vec())
        .to_vec(),
        other => panic!("no fuzz target `{other}`"),
    }
}

/// A two-layer Llama in GGUF with a byte-level BPE vocabulary and one tensor of each type kiln
/// reads (F32, F16, BF16, Q8_0, Q4_0, Q4_1).
fn tiny_llama_gguf() -> Vec<u8> {
    use crate::formats::gguf::testing::{self as t, GgufBuilder};
    use crate::formats::gguf::{GgmlType, GgufValue};
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    tokens.extend(crate::formats::tokenizer::bytes_to_unicode().iter().map(char::to_string));
    let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r"];
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    let mut types = vec![GgufValue::I32(1); tokens.len()];
    types[..3].fill(GgufValue::I32(3));
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let u32s = |v: u32| GgufValue::U32(v);
    let x = t::seeded(64, 1);
    GgufBuilder::new()
        .kv("general.architecture", GgufValue::String("llama".into()))
        .kv("llama.attention.head_count", u32s(2))
        .kv("llama.attention.head_count_kv", u32s(1))
        .kv("llama.embedding_length", u32s(8))
        .kv("llama.feed_forward_length", u32s(16))
        .kv("llama.block_count", u32s(2))
        .kv("llama.context_length", u32s(32))
        .kv("llama.rope.freq_base", GgufValue::F32(10000.0))
        .kv("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5))
        .kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
        .kv("tokenizer.ggml.pre", GgufValue::String("smollm".into()))
        .kv("tokenizer.ggml.tokens", t::strings(&tokens))
        .kv("tokenizer.ggml.merges", t::strings(&merges))
        .kv("tokenizer.ggml.token_type", GgufValue::Array(types))
        .kv("tokenizer.ggml.bos_token_id", u32s(1))
        .kv("tokenizer.ggml.eos_token_id", u32s(2))
        .kv("tokenizer.ggml.add_bos_token", GgufValue::Bool(false))
        .kv("tokenizer.chat_template", GgufValue::String("{{ messages }}".into()))
        .tensor("output_norm.weight", &[8], GgmlType::F32, t::encode_f32(&x[..8]).0)
        .tensor("blk.0.attn_norm.weight", &[8], GgmlType::F16, t::encode_f16(&x[..8]).0)
        .tensor("blk.1.attn_norm.weight", &[8], GgmlType::BF16, t::encode_bf16(&x[..8]).0)
        .tensor("token_embd.weight", &[32, 2], GgmlType::Q8_0, t::quantize_q8_0(&x).0)
        .tensor("blk.0.attn_q.weight", &[32, 2], GgmlType::Q4_0, t::quantize_q4_0(&x).0)
        .tensor("blk.0.attn_k.weight", &[32, 2], GgmlType::Q4_1, t::quantize_q4_1(&x).0)
        .build()
}

/// A safetensors file with F32, F16 and BF16 tensors (one of them a scalar) and metadata.
fn tiny_safetensors() -> Vec<u8> {
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;
    let f32s: Vec<u8> = (0..6).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    let f16s: Vec<u8> = (0..4).flat_map(|i| half::f16::from_f32(i as f32).to_le_bytes()).collect();
    let bf16s: Vec<u8> = (0..3).flat_map(|i| half::bf16::from_f32(-(i as f32)).to_le_bytes()).collect();
    let scalar = 2.0f32.to_le_bytes();
    let views = [
        ("h.0.attn.c_attn.weight", Dtype::F32, vec![2, 3], &f32s[..]),
        ("wte.weight", Dtype::F16, vec![4], &f16s[..]),
        ("ln_f.bias", Dtype::BF16, vec![3, 1], &bf16s[..]),
        ("scale", Dtype::F32, vec![], &scalar[..]),
    ]
    .map(|(name, dtype, shape, data)| (name, TensorView::new(dtype, shape, data).expect("consistent seed tensor")));
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).expect("the seed serializes")
}
