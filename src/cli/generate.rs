//! `kiln generate`: text from a base model, optionally with a LoRA adapter, streamed as it comes;
//! `--chat` wraps the prompt in the model's chat template (or runs an interactive chat).

use std::io::{BufRead, Write};
use std::path::PathBuf;

use super::AdapterArgs;
use crate::data::catalog;
use crate::data::fetch;
use crate::data::lm::{Message, Role};
use crate::error::{Error, Result};
use crate::generate::{Sampling, generate};
use crate::models::load::{LoadedLm, load_lm};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  kiln generate --prompt \"The capital of France is\"\n  \
    kiln generate --chat --lora runs/mine/adapter --prompt \"Pronounce: kiln\"\n  \
    kiln generate --chat   (interactive: one line per turn, empty line ends)")]
pub struct GenerateArgs {
    /// A Hugging Face folder or a .gguf file [default: SmolLM2-135M-Instruct, fetched into the cache]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A LoRA adapter folder (PEFT format) to apply
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// The prompt (with --chat: the user's message); without it, --chat reads turns from stdin
    #[arg(long)]
    pub prompt: Option<String>,
    /// Use the model's chat template
    #[arg(long)]
    pub chat: bool,
    /// A system message for --chat
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 is greedy
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the k most likely tokens (0: all)
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample among the most likely tokens whose probability adds up to p
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub adapter: AdapterArgs,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let gpu = args.adapter.open()?;
    let path = catalog::resolve(args.model.as_deref(), "smollm2-135m", &fetch::default_cache_dir())?;
    let mut lm = load_lm(&gpu, &path)?;
    if let Some(dir) = &args.lora {
        lm.model.load_adapter(&gpu, dir)?;
    }
    let sampling = Sampling { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed };
    let mut history: Vec<Message> = args.system.iter().map(|s| Message::new(Role::System, s.clone())).collect();
    if let Some(p) = &args.prompt {
        if args.chat {
            history.push(Message::new(Role::User, p.clone()));
        }
        let text = if args.chat { render(&lm, &history)? } else { p.clone() };
        respond(&gpu, &lm, &text, !args.chat, &args, sampling)?;
        return Ok(());
    }
    if !args.chat {
        return Err(Error::invalid("generate", "give --prompt TEXT, or --chat for an interactive chat"));
    }
    eprintln!("chat with {} (empty line to end)", lm.name);
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).map_err(|e| Error::io("stdin", e))? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        history.push(Message::new(Role::User, line.trim().to_string()));
        let answer = respond(&gpu, &lm, &render(&lm, &history)?, false, &args, sampling)?;
        history.push(Message::new(Role::Assistant, answer));
    }
}

fn render(lm: &LoadedLm, history: &[Message]) -> Result<String> {
    if !lm.format.is_chat() {
        return Err(Error::invalid("generate", format!("{} has no chat template; drop --chat", lm.name)));
    }
    lm.format.render_chat(history, true)
}

/// Streams the continuation of `text` to stdout and returns it.
fn respond(
    gpu: &crate::Gpu,
    lm: &LoadedLm,
    text: &str,
    echo_prompt: bool,
    args: &GenerateArgs,
    sampling: Sampling,
) -> Result<String> {
    // A rendered template carries its own special tokens; plain text gets the model's bos.
    let ids = if args.chat { lm.chat_prompt_ids(text)? } else { lm.encode_prompt(text)? };
    let mut out = std::io::stdout();
    if echo_prompt {
        print!("{text}");
    }
    let mut new: Vec<u32> = Vec::new();
    let mut shown = 0;
    let t0 = std::time::Instant::now();
    generate(gpu, lm.model.as_ref(), &ids, args.max_tokens, sampling, &lm.stop, &mut |tok| {
        if lm.stop.contains(&tok) {
            return Ok(());
        }
        new.push(tok);
        // Decode everything so far and print what is new: a token may end mid-character.
        let text = lm.tokenizer.decode(&new, true).map_err(|e| Error::invalid("decode", e.to_string()))?;
        if text.len() > shown && text.is_char_boundary(shown) && !text.ends_with('\u{FFFD}') {
            print!("{}", &text[shown..]);
            shown = text.len();
            out.flush().map_err(|e| Error::io("stdout", e))?;
        }
        Ok(())
    })?;
    println!();
    eprintln!("[{} tokens, {:.1} tokens/s]", new.len(), new.len() as f64 / t0.elapsed().as_secs_f64());
    lm.tokenizer.decode(&new, true).map_err(|e| Error::invalid("decode", e.to_string()))
}
