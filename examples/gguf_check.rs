//! Reads a real GGUF with kiln and prints what it found, for checking against Python's `gguf`
//! and `transformers` (scripts/check_gguf.py runs this and compares).
//!
//! ```text
//! cargo run --release --example gguf_check -- ~/.cache/kiln/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
//! cargo run --release --example gguf_check -- FILE --dump DIR   # also write DIR/kiln.safetensors, DIR/kiln_tokens.json
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln::formats::gguf::{GgufFile, GgufValue};
use kiln::formats::tokenizer::GgufTokenizer;

/// Strings whose token ids are compared with transformers: spaces, accents, emoji, code, chat
/// markup, digits (SmolLM splits every digit), contractions, CJK.
const STRINGS: &[&str] = &[
    "Hello world",
    " leading spaces",
    "naïve café",
    "emoji 🦀🔥 ok",
    "def f(x):\n    return x**2",
    "<|im_start|>user\nHi<|im_end|>\n",
    "12345 apples cost 3.14159 each, 2024-11-25",
    "  multiple   spaces\t\ttabs\n\n\nnewlines ",
    "I'm sure they'll say it's fine, won't they?",
    "日本語のテキスト",
    "<|endoftext|>",
];

/// Tensors dequantized and dumped for comparison: Q8_0 embedding, Q4_1 linears, F32 norms.
const TENSORS: &[&str] = &[
    "token_embd.weight",
    "blk.0.attn_q.weight",
    "blk.0.attn_k.weight",
    "blk.0.attn_v.weight",
    "blk.0.ffn_down.weight",
    "blk.29.ffn_gate.weight",
    "blk.0.attn_norm.weight",
    "output_norm.weight",
];

fn show(v: &GgufValue) -> String {
    match v {
        GgufValue::Array(a) => {
            let first = a.first().map(|x| format!(", first {}", show(x))).unwrap_or_default();
            format!("[{} x {}{first}]", a.len(), a.first().map_or("?", |x| x.type_name()))
        }
        GgufValue::String(s) if s.len() > 70 => format!("{:?}... ({} bytes)", &s[..s.floor_char_boundary(60)], s.len()),
        GgufValue::String(s) => format!("{s:?}"),
        other => format!("{other:?}"),
    }
}

fn main() -> kiln::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(args.next().expect("usage: gguf_check FILE [--dump DIR]"));
    let dump = match (args.next().as_deref(), args.next()) {
        (Some("--dump"), Some(dir)) => Some(PathBuf::from(dir)),
        (None, _) => None,
        _ => panic!("usage: gguf_check FILE [--dump DIR]"),
    };

    let t0 = std::time::Instant::now();
    let file = GgufFile::open(&path)?;
    println!(
        "{}: GGUF v{}, {} metadata keys, {} tensors, alignment {} (read in {:.2?})",
        path.display(),
        file.version,
        file.metadata.len(),
        file.tensors.len(),
        file.alignment,
        t0.elapsed()
    );
    for (key, value) in &file.metadata {
        println!("  {key} = {}", show(value));
    }

    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for t in &file.tensors {
        *by_type.entry(t.ggml_type.to_string()).or_default() += 1;
    }
    println!("tensors by type: {by_type:?}");
    for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight"] {
        let t = file.require_tensor(name)?;
        println!("  {name}: {} dims {:?} -> shape {:?}", t.ggml_type, t.dims, t.shape());
    }

    let t0 = std::time::Instant::now();
    let tok = GgufTokenizer::from_gguf(&file)?;
    println!("tokenizer: {tok:?} (built in {:.2?})", t0.elapsed());
    let mut ids = BTreeMap::new();
    for s in STRINGS {
        let enc = tok.encode(s, true)?;
        let back = tok.decode(&enc, false)?;
        println!("  {s:?} -> {enc:?}{}", if back == *s { "" } else { "  (decode differs!)" });
        ids.insert(s.to_string(), enc);
    }

    if let Some(dir) = dump {
        std::fs::create_dir_all(&dir).map_err(|e| kiln::Error::io(&dir, e))?;
        let mut tensors = Vec::new();
        for name in TENSORS {
            let (values, shape) = file.tensor_f32(name)?;
            tensors.push((name.to_string(), values, shape));
        }
        let views = tensors
            .iter()
            .map(|(name, values, shape)| {
                let bytes: &[u8] = bytemuck::cast_slice(values);
                let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .expect("shape matches the values");
                (name.clone(), view)
            })
            .collect::<Vec<_>>();
        let out = dir.join("kiln.safetensors");
        safetensors::serialize_to_file(views, None, &out)
            .map_err(|e| kiln::Error::Parse { path: out.clone(), message: e.to_string() })?;
        let json = dir.join("kiln_tokens.json");
        let text = serde_json::to_string_pretty(&ids).expect("ids serialize");
        std::fs::write(&json, text).map_err(|e| kiln::Error::io(&json, e))?;
        println!("wrote {} and {}", out.display(), json.display());
    }
    Ok(())
}
