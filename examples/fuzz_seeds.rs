//! Writes the fuzzers' seed corpus: `cargo run --example fuzz_seeds -- fuzz/corpus`, then
//! `cd fuzz && cargo +nightly fuzz run gguf corpus/gguf`.

fn main() -> std::io::Result<()> {
    let root = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    for (target, _) in kiln::fuzz::TARGETS {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, seed) in kiln::fuzz::seeds(target).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed)?;
        }
        println!("{}: {} seeds", dir.display(), kiln::fuzz::seeds(target).len());
    }
    Ok(())
}
