//! Runs kiln's encoder over a few texts and writes what it computed, for the Python checks:
//! the mean-pooled embeddings (`scripts/check_minilm.py`, against sentence-transformers) and,
//! with a SEQ_CLS adapter, the classifier's logits (`scripts/check_peft_seqcls.py`, against
//! PEFT).
//!
//! `cargo run --release --example classify_logits -- MODEL_DIR OUT.safetensors [--adapter DIR] TEXT...`
//!
//! Writes `input_ids`, `attention_mask` (int32 as f32, `[N, T]`), `pooled` `[N, C]` and, with an
//! adapter, `logits` `[N, K]`.

use std::path::Path;

use kiln::autograd::Tape;
use kiln::data::encode::{Encoded, encode_texts, encoder_tokenizer, make_input, pad_id};
use kiln::formats::safetensors::save_safetensors;
use kiln::gpu::{AdapterChoice, Gpu};
use kiln::models::classifier::{self, Pooling, SequenceClassifier};

fn main() -> kiln::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let adapter = match args.iter().position(|a| a == "--adapter") {
        Some(i) => {
            let dir = args.remove(i + 1);
            args.remove(i);
            Some(dir)
        }
        None => None,
    };
    let (model_dir, out, texts) = (Path::new(&args[0]), Path::new(&args[1]), &args[2..]);
    let gpu = Gpu::new(&AdapterChoice::from_flag_or_env(None))?;
    let (labels, pooling) = match &adapter {
        Some(dir) => classifier::read_classifier_meta(Path::new(dir))?,
        None => (vec!["0".into(), "1".into()], Pooling::Mean),
    };
    let mut model = SequenceClassifier::load(&gpu, model_dir, labels, pooling, 0)?;
    if let Some(dir) = &adapter {
        model.load_adapter(&gpu, Path::new(dir))?;
    }
    let tok = encoder_tokenizer(model_dir, 128)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let enc = encode_texts(&tok, &refs, 128)?;
    let items: Vec<&Encoded> = enc.iter().collect();
    let input = make_input(&gpu, &items, pad_id(&tok))?;
    let tape = Tape::no_grad(&gpu);
    let pooled = model.pooled(&tape, &input)?;
    let (n, t, c) = (input.batch, input.seq, model.body.hidden_size());
    let as_f32 = |v: &[u32]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let mut tensors = vec![
        ("input_ids".to_string(), as_f32(&input.ids), vec![n, t]),
        ("attention_mask".to_string(), as_f32(&input.mask), vec![n, t]),
        ("pooled".to_string(), pooled.value.to_f32_vec(&gpu)?, vec![n, c]),
    ];
    if adapter.is_some() {
        let logits = model.head(&tape, &pooled)?.value.to_f32_vec(&gpu)?;
        tensors.push(("logits".to_string(), logits, vec![n, model.num_labels()]));
    }
    save_safetensors(out, &tensors, None)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
