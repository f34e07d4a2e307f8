//! Scores a model (optionally with a LoRA adapter) on held-out CMUdict words by greedy
//! generation: exact match and phoneme error rate.
//!
//! `cargo run --release --example cmudict_score -- MODEL TASK_DIR WORDS [ADAPTER_DIR]`

use std::path::Path;

use kiln::data::cmudict::PronunciationScore;
use kiln::data::lm::{Record, read_jsonl};
use kiln::gpu::{AdapterChoice, Gpu};
use kiln::models::load::load_lm;
use kiln::train::job::lm::complete;

fn main() -> kiln::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let gpu = Gpu::new(&AdapterChoice::from_flag_or_env(None))?;
    let mut lm = load_lm(&gpu, Path::new(&args[1]))?;
    let words: usize = args[3].parse().expect("WORDS is a number");
    if let Some(dir) = args.get(4) {
        lm.model.load_adapter(&gpu, Path::new(dir))?;
    }
    let test = read_jsonl(&Path::new(&args[2]).join("test.jsonl"))?;
    let mut score = PronunciationScore::default();
    let t0 = std::time::Instant::now();
    for r in test.iter().take(words) {
        let Record::Completion { prompt, completion } = r else { continue };
        let answer = complete(&gpu, &lm, prompt, 24)?;
        eprintln!("{prompt:>30} -> {:<28} (want {completion})", answer.trim());
        score.add(answer.trim(), completion.trim());
    }
    println!(
        "{} words: exact match {:.1}%, phoneme error rate {:.1}% ({:.1}s)",
        score.words,
        100.0 * score.exact_match_rate(),
        100.0 * score.phoneme_error_rate(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
