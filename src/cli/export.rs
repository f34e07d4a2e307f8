//! `kiln export --merge`: the base model with a LoRA adapter folded in, written as a Hugging
//! Face folder (config.json, model.safetensors, tokenizer.json) that transformers loads.

use std::path::PathBuf;

use super::AdapterArgs;
use crate::data::catalog;
use crate::data::fetch;
use crate::error::{Error, Result};
use crate::formats::safetensors::save_safetensors;
use crate::models::load::load_lm;
use crate::util::write_atomic;

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  kiln export --merge --lora runs/mine/adapter --out merged-model")]
pub struct ExportArgs {
    /// A Hugging Face folder or a .gguf file [default: SmolLM2-135M-Instruct from the cache]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The LoRA adapter (PEFT folder) to merge
    #[arg(long)]
    pub lora: PathBuf,
    /// Fold the adapter into the base weights (the only export kiln has)
    #[arg(long, required = true)]
    pub merge: bool,
    /// Output folder (written under a temporary name, then renamed)
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing output folder
    #[arg(long)]
    pub overwrite: bool,
    #[command(flatten)]
    pub adapter: AdapterArgs,
}

pub fn run(args: ExportArgs) -> Result<()> {
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
