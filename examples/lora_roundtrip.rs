//! Trains fresh LoRA adapters on a fixture model for a few steps, saves them in PEFT's format and
//! writes kiln's logits with them, for `scripts/check_peft_roundtrip.py` to compare with real PEFT.
//!
//! `cargo run --release --example lora_roundtrip -- tests/fixtures/gpt2_tiny OUT_DIR [--dora]`
//! (`--dora`: DoRA adapters, PEFT's `use_dora`)

use std::path::Path;

use kiln::autograd::Tape;
use kiln::formats::peft::TaskType;
use kiln::formats::safetensors::save_safetensors;
use kiln::gpu::{AdapterChoice, Gpu};
use kiln::models::{LmInput, load_causal_lm};
use kiln::nn::LoraConfig;
use kiln::train::Optimizer;

fn main() -> kiln::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (base, out) = (Path::new(&args[1]), Path::new(&args[2]));
    let gpu = Gpu::new(&AdapterChoice::from_flag_or_env(None))?;
    let mut model = load_causal_lm(&gpu, base)?;
    // Every linear layer under the family's names (Phi-3's fused qkv_proj and gate_up_proj).
    let targets = model.lora_targets(&["all-linear".to_string()]);
    let use_dora = args.get(3).is_some_and(|a| a == "--dora");
    let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, target_modules: targets, use_rslora: false, use_dora };
    model.add_lora(&gpu, &cfg, 3)?;
    // The fixture's inputs, as the checker will feed them to PEFT.
    let bytes = std::fs::read(base.join("expected.safetensors")).map_err(|e| kiln::Error::io(base, e))?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| kiln::Error::invalid("fixture", e.to_string()))?;
    let ints = |name: &str| -> Vec<i32> {
        st.tensor(name).unwrap().data().chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    let (ids, mask) = (ints("input_ids"), ints("attention_mask"));
    let (b, t) = (2, ids.len() / 2);
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let mask: Vec<u32> = mask.iter().map(|&x| x as u32).collect();
    let targets: Vec<i32> =
        (0..b * t).map(|k| if k % t == t - 1 || mask[k + 1] == 0 { -100 } else { ids[k + 1] as i32 }).collect();
    let input = LmInput::new(&gpu, ids, b, t, Some(&mask))?;
    // A few steps so B is no longer zero and the adapter changes the logits.
    let mut opt = Optimizer::new(Default::default(), Some(1.0));
    for step in 1..=5 {
        let tape = Tape::train(&gpu, 0, step);
        let loss = model.loss(&tape, &input, &targets)?;
        tape.backward(&loss, 1.0)?;
        opt.step(&gpu, model.as_ref(), 1e-2)?;
        eprintln!("step {step}: loss {:.4}", loss.read(&gpu)?.0);
    }
    model.save_adapter(&gpu, &cfg, TaskType::CausalLm, &base.display().to_string(), &out.join("adapter"))?;
    let logits = model.all_logits(&gpu, &input)?;
    let shape = logits.shape().to_vec();
    save_safetensors(
        &out.join("kiln_logits.safetensors"),
        &[("logits".into(), logits.to_f32_vec(&gpu)?, shape)],
        None,
    )?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
