//! Dumps a causal LM's logits for prompts, for parity checks against transformers
//! (`scripts/check_smollm2.py`).
//!
//! `cargo run --release --example lm_logits -- [--quantized] [--last N] [--lora DIR] MODEL.gguf OUT.safetensors "prompt" ...`
//!
//! Weights are dequantized to f32 (as transformers loads a GGUF), or with `--quantized` kept in
//! their blocks on the GPU (what `kiln train` fine-tunes on by default). `--last N` keeps only
//! the last N positions' logits (a long prompt's full logits would be gigabytes). `--lora DIR`
//! applies a PEFT adapter (for `scripts/check_gemma3.py --lora`).

use std::collections::HashMap;
use std::path::Path;

use kiln::formats::gguf::GgufFile;
use kiln::formats::tokenizer::GgufTokenizer;
use kiln::gpu::{AdapterChoice, Gpu};
use kiln::models::gguf_decoder;
use kiln::models::{CausalLm, LmInput};

fn main() -> kiln::Result<()> {
    let mut args: Vec<String> = std::env::args().collect();
    let quantized = args.get(1).is_some_and(|a| a == "--quantized");
    if quantized {
        args.remove(1);
    }
    let mut last = None;
    if args.get(1).is_some_and(|a| a == "--last") {
        last = Some(args[2].parse::<usize>().expect("--last takes a number of positions"));
        args.drain(1..3);
    }
    let mut lora = None;
    if args.get(1).is_some_and(|a| a == "--lora") {
        lora = Some(std::path::PathBuf::from(&args[2]));
        args.drain(1..3);
    }
    if args.len() < 4 {
        eprintln!("usage: lm_logits [--quantized] MODEL.gguf OUT.safetensors PROMPT...");
        std::process::exit(2);
    }
    let gpu = Gpu::new(&AdapterChoice::from_flag_or_env(None))?;
    let file = GgufFile::open(Path::new(&args[1]))?;
    let tok = GgufTokenizer::from_gguf(&file)?;
    let t0 = std::time::Instant::now();
    let mut model = gguf_decoder::load_decoder_with(&gpu, &file, quantized)?;
    if let Some(dir) = &lora {
        model.load_adapter(&gpu, dir)?;
    }
    eprintln!("loaded in {:.1}s on {}", t0.elapsed().as_secs_f64(), gpu.describe());
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>, safetensors::Dtype)> = Vec::new();
    for (i, prompt) in args[3..].iter().enumerate() {
        let ids = tok.encode(prompt, false)?;
        let n = ids.len();
        let input = LmInput::new(&gpu, ids.clone(), 1, n, None)?;
        let t0 = std::time::Instant::now();
        let logits = model.all_logits(&gpu, &input)?.to_f32_vec(&gpu)?;
        eprintln!("prompt {i}: {n} tokens, forward {:.2}s", t0.elapsed().as_secs_f64());
        let v = model.shape().vocab;
        let keep = last.unwrap_or(n).min(n);
        tensors.push((
            format!("logits.{i}"),
            bytemuck::cast_slice(&logits[(n - keep) * v..]).to_vec(),
            vec![keep, v],
            safetensors::Dtype::F32,
        ));
        let ids: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
        tensors.push((format!("ids.{i}"), bytemuck::cast_slice(&ids).to_vec(), vec![n], safetensors::Dtype::I32));
    }
    let views: HashMap<String, safetensors::tensor::TensorView> = tensors
        .iter()
        .map(|(name, bytes, shape, dt)| {
            (name.clone(), safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(&views, None, Path::new(&args[2]))
        .map_err(|e| kiln::Error::invalid("save", e.to_string()))?;
    Ok(())
}
