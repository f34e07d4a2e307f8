//! Compares kiln's token ids for a GGUF file's tokenizer with ids another tokenizer wrote (e.g.
//! transformers' GGUF loader, `scripts/check_gemma3_tokenizer.py`):
//!
//! cargo run --release --example gguf_tokens -- MODEL.gguf IDS.json
//!
//! IDS.json: {"strings": [...], "ids": [[...], ...]}, ids with the file's special tokens added.
//! Prints each mismatch and exits non-zero if there is one.

use std::path::PathBuf;

use kiln::formats::gguf::GgufFile;
use kiln::formats::tokenizer::GgufTokenizer;

fn main() -> kiln::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (model, ids) = match args.as_slice() {
        [_, m, i] => (PathBuf::from(m), PathBuf::from(i)),
        _ => {
            eprintln!("usage: gguf_tokens MODEL.gguf IDS.json");
            std::process::exit(2);
        }
    };
    let t0 = std::time::Instant::now();
    let tok = GgufTokenizer::from_gguf(&GgufFile::open(&model)?)?;
    eprintln!("tokenizer built in {:.1} s", t0.elapsed().as_secs_f64());
    let text = std::fs::read_to_string(&ids).map_err(|e| kiln::Error::io(&ids, e))?;
    let want: serde_json::Value = serde_json::from_str(&text).expect("IDS.json is JSON");
    let strings = want["strings"].as_array().expect("strings");
    let (mut same, mut differ) = (0, 0);
    for (s, w) in strings.iter().zip(want["ids"].as_array().expect("ids")) {
        let s = s.as_str().expect("string");
        let w: Vec<u32> = w.as_array().expect("id list").iter().map(|v| v.as_u64().expect("id") as u32).collect();
        let got = tok.encode(s, true)?;
        if got == w {
            same += 1;
        } else {
            differ += 1;
            println!("DIFFER {s:?}\n  kiln   {got:?}\n  theirs {w:?}");
        }
    }
    println!("{same} of {} strings give the same ids", same + differ);
    if differ > 0 {
        std::process::exit(1);
    }
    Ok(())
}
