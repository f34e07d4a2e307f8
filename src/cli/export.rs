//! `kiln export`: the base model with a LoRA adapter folded in (`--merge`), written as a
//! Hugging Face folder (config.json, model.safetensors, tokenizer.json) that transformers loads
//! or as a GGUF file for llama.cpp and Ollama (`--format gguf`, `models::gguf_export`); or the
//! adapter alone as llama.cpp's LoRA GGUF (`--format gguf` without `--merge`). GGUF exports get
//! an Ollama `Modelfile` beside them.

use std::path::PathBuf;

use super::AdapterArgs;
use crate::data::catalog;
use crate::data::fetch;
use crate::error::{Error, Result};
use crate::formats::gguf::GgmlType;
use crate::formats::safetensors::save_safetensors;
use crate::models::gguf_export::{self, OutType};
use crate::models::load::load_lm;
use crate::util::write_atomic;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  kiln export --merge --lora runs/mine/adapter --out merged-model\n  \
    kiln export --merge --lora runs/mine/adapter --format gguf --quantize q4_k_m --out mine/model.gguf\n  \
    kiln export --lora runs/mine/adapter --format gguf --out mine/adapter.gguf")]
pub struct ExportArgs {
    /// A Hugging Face folder or a .gguf file [default: SmolLM2-135M-Instruct from the cache]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The LoRA adapter (PEFT folder) to merge
    #[arg(long)]
    pub lora: PathBuf,
    /// Fold the adapter into the base weights; without it, `--format gguf` writes the adapter
    /// alone (llama.cpp's LoRA GGUF)
    #[arg(long)]
    pub merge: bool,
    /// hf: a Hugging Face folder; gguf: one file for llama.cpp and Ollama, with a Modelfile
    /// beside it
    #[arg(long, value_enum, default_value = "hf")]
    pub format: Format,
    /// GGUF tensor type: llama.cpp's output types and llama-quantize mixtures [default: f16 for
    /// a merged model, f32 for an adapter (which takes f32 or f16)]
    #[arg(long, value_enum)]
    pub quantize: Option<OutType>,
    /// Output folder (hf) or .gguf file (gguf), written under a temporary name, then renamed
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing output (and the Modelfile beside a GGUF)
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub adapter: AdapterArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Hf,
    Gguf,
}

pub fn run(args: ExportArgs) -> Result<()> {
    if args.format == Format::Gguf {
        return run_gguf(args);
    }
    if !args.merge {
        return Err(Error::invalid(
            "--merge",
            "a Hugging Face export is the merged model: pass --merge (the adapter folder is already PEFT's format), \
             or --format gguf for llama.cpp's adapter file",
        ));
    }
    if args.quantize.is_some() {
        return Err(Error::invalid("--quantize", "quantized exports are GGUF files: add --format gguf"));
    }
    super::check_output(&args.out, args.overwrite)?;
    let gpu = args.adapter.open()?;
    let path = catalog::resolve(args.model.as_deref(), "smollm2-135m", &fetch::default_cache_dir())?;
    let mut lm = load_lm(&gpu, &path)?;
    lm.model.load_adapter(&gpu, &args.lora)?;
    // The export is an f32 Hugging Face folder: a quantized base is dequantized first.
    crate::models::quantize::dequantize_linears(&gpu, lm.model.as_mut())?;
    lm.model.merge_lora(&gpu)?;
    let tensors = lm.model.hf_weights(&gpu)?;
    // The whole folder is written beside the target and renamed, so a crash never leaves a
    // model folder with some of its files.
    let name = args.out.file_name().map_or("export".into(), |n| n.to_string_lossy().into_owned());
    let tmp = args.out.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let config = serde_json::to_string_pretty(&lm.model.config_json()).expect("json");
    let tok_json = lm.tokenizer.to_string(true).map_err(|e| Error::invalid("export", e.to_string()))?;
    // A failed write (a full disk) removes the temporary folder.
    crate::util::write_folder_whole(&tmp, &args.out, |tmp| {
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        crate::util::folder::mark(tmp, "kiln export")?;
        save_safetensors(&tmp.join("model.safetensors"), &tensors, Some(meta))?;
        write_atomic(&tmp.join("config.json"), config.as_bytes())?;
        write_atomic(&tmp.join("tokenizer.json"), tok_json.as_bytes())
    })?;
    println!("merged model written to {} ({} tensors)", args.out.display(), tensors.len());
    Ok(())
}

/// `--format gguf`: the merged model or the adapter as GGUF, and a Modelfile beside it. Both
/// must be new (or `--overwrite`).
fn run_gguf(args: ExportArgs) -> Result<()> {
    if args.out.extension().is_none_or(|e| e != "gguf") {
        return Err(Error::invalid(
            "--out",
            format!("{} should be a .gguf file for --format gguf", args.out.display()),
        ));
    }
    if args.out.is_dir() {
        return Err(Error::invalid(
            "--out",
            format!("{} is a folder; --format gguf writes one file", args.out.display()),
        ));
    }
    for path in [args.out.clone(), gguf_export::modelfile_path(&args.out)] {
        super::check_output(&path, args.overwrite)?;
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let gpu = args.adapter.open()?;
    let path = catalog::resolve(args.model.as_deref(), "smollm2-135m", &fetch::default_cache_dir())?;
    let modelfile = gguf_export::modelfile_path(&args.out);
    if args.merge {
        let ty = args.quantize.unwrap_or(OutType::F16);
        let report = gguf_export::export_merged(&gpu, &path, &args.lora, &args.out, ty)?;
        println!("merged model written to {} and {}", args.out.display(), modelfile.display());
        for line in report.lines() {
            println!("  {line}");
        }
    } else {
        let ty = match args.quantize {
            None | Some(OutType::F32) => GgmlType::F32,
            Some(OutType::F16) => GgmlType::F16,
            Some(other) => {
                return Err(Error::invalid(
                    "--quantize",
                    format!(
                        "a LoRA adapter GGUF is written in f32 or f16, not {other} (quantize the merged model instead)"
                    ),
                ));
            }
        };
        let report = gguf_export::export_adapter(&gpu, &path, &args.lora, &args.out, ty)?;
        println!(
            "LoRA adapter written to {} and {}: {} layers, rank {}, alpha {} (llama.cpp architecture `{}`)",
            args.out.display(),
            modelfile.display(),
            report.layers,
            report.rank,
            report.alpha,
            report.arch
        );
    }
    Ok(())
}
