//! 16-bit frozen bases (`--base-dtype`): a tiny Llama saved in bf16 (`llama_bf16_tiny`, made by
//! `scripts/make_fixtures.py`) keeps its linear weights bf16 on the GPU and gives transformers'
//! logits of those weights computed in f32; rounded to f16 (on load, or from the F16 GGUF copy)
//! it gives the logits of the f16-rounded weights; LoRA gradients through a 16-bit base equal
//! those through the same values widened to f32; and the weights take half the memory.

use super::*;

use kiln::formats::gguf::GgufFile;
use kiln::models::gguf_decoder;
use kiln::models::load_causal_lm_with;
use kiln::quant::{BaseDtype, GgmlType};
use kiln::train::memory::estimate_lm;

/// The tiny Llama's linear layers: 7 per block, 2 blocks.
const LINEARS: usize = 14;

fn kept(model: &mut dyn CausalLm) -> Vec<(String, usize)> {
    quantize::quantized_summary(model).into_iter().map(|(k, (n, _, _))| (k, n)).collect()
}

#[test]
fn bf16_safetensors_stay_bf16_and_match_transformers() {
    let g = gpu();
    let dir = fixture("llama_bf16_tiny");
    let e = Expected::read(&dir);
    // auto keeps the file's bf16.
    let mut model = load_causal_lm_with(g, &dir, BaseDtype::Auto).unwrap();
    assert_eq!(kept(model.as_mut()), vec![("bf16".to_string(), LINEARS)]);
    check_logits("bf16 base logits", model.as_ref(), &e, "logits");
    assert_close("bf16 base loss", &[loss_of(model.as_ref(), &e)], e.f("loss"), LOGIT_TOL, 1e-5);
    // f32 widens exactly: the same logits.
    let mut wide = load_causal_lm_with(g, &dir, BaseDtype::F32).unwrap();
    assert!(kept(wide.as_mut()).is_empty());
    check_logits("bf16 widened to f32 logits", wide.as_ref(), &e, "logits");
    // f16 rounds the bf16 values on (as `.to(torch.float16)`).
    let mut half = load_causal_lm_with(g, &dir, BaseDtype::F16).unwrap();
    assert_eq!(kept(half.as_mut()), vec![("f16".to_string(), LINEARS)]);
    check_logits("bf16 rounded to f16 logits", half.as_ref(), &e, "logits_f16");
}

#[test]
fn f16_gguf_stays_f16_and_matches_transformers() {
    let g = gpu();
    let dir = fixture("llama_bf16_tiny");
    let e = Expected::read(&dir);
    let file = GgufFile::open(&dir.join("model.gguf")).unwrap();
    let mut model = gguf_decoder::load_decoder_base(g, &file, BaseDtype::Auto).unwrap();
    assert_eq!(kept(&mut model), vec![("f16".to_string(), LINEARS)]);
    check_logits("F16 GGUF logits", &model, &e, "logits_f16");
    let mut wide = gguf_decoder::load_decoder_base(g, &file, BaseDtype::F32).unwrap();
    assert!(kept(&mut wide).is_empty());
    check_logits("F16 GGUF widened logits", &wide, &e, "logits_f16");
    // f16 → bf16 rounds; bf16 logits are then close to, not equal to, either reference.
    let mut bf = gguf_decoder::load_decoder_base(g, &file, BaseDtype::BF16).unwrap();
    assert_eq!(kept(&mut bf), vec![("bf16".to_string(), LINEARS)]);
}

/// LoRA on every linear of a bf16 base: loss and adapter gradients equal those on the same
/// weights widened to f32 (only the summation order of the base matmuls differs).
#[test]
fn lora_gradients_through_a_bf16_base_equal_the_widened_ones() {
    let g = gpu();
    let dir = fixture("llama_bf16_tiny");
    let e = Expected::read(&dir);
    let (input, targets) = e.batch();
    let mut results = Vec::new();
    for base in [BaseDtype::Auto, BaseDtype::F32] {
        let mut model = load_causal_lm_with(g, &dir, base).unwrap();
        let targets_ = model.lora_targets(&["all-linear".to_string()]);
        let lora =
            LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, target_modules: targets_, use_rslora: false, use_dora: false };
        model.add_lora(g, &lora, 3).unwrap();
        // Nonzero B, so A's gradients and dx through the adapters are not zero.
        let mut rng = Rng::new(5);
        model.visit_params_mut(&mut |p| {
            if p.name.contains("lora_B") {
                let v: Vec<f32> = rng.vec(p.numel()).iter().map(|x| 0.2 * x).collect();
                p.value = kiln::tensor::Tensor::from_f32(g, &v, p.value.shape()).unwrap();
            }
        });
        let tape = Tape::train(g, 0, 1);
        let loss = model.loss(&tape, &input, &targets).unwrap();
        tape.backward(&loss, 1.0).unwrap();
        let mut grads = vec![loss.read(g).unwrap().0];
        model.visit_params(&mut |p| {
            if let Some(grad) = &p.grad {
                grads.extend(grad.to_f32_vec(g).unwrap());
            }
        });
        results.push(grads);
    }
    assert!(results[1].iter().filter(|x| **x != 0.0).count() > results[1].len() * 9 / 10);
    assert_close("bf16 vs f32 base: loss and LoRA gradients", &results[0], &f64s(&results[1]), 1e-5, 1e-4);
}

/// The estimate counts 16-bit weights at 2 bytes, and the GPU holds them so: against f32, the
/// linear weights take half.
#[test]
fn sixteen_bit_weights_take_half_the_memory() {
    let g = gpu();
    let dir = fixture("llama_bf16_tiny");
    let mut wide = load_causal_lm_with(g, &dir, BaseDtype::F32).unwrap();
    let mut half = load_causal_lm_with(g, &dir, BaseDtype::Auto).unwrap();
    let (ew, eh) = (estimate_lm(wide.as_mut(), 2, 7), estimate_lm(half.as_mut(), 2, 7));
    assert_eq!(ew.weights_16bit, 0);
    // Every linear moved from the f32 row to the 16-bit row at half the bytes.
    let linear_f32 = ew.weights_f32 - eh.weights_f32;
    assert!(linear_f32 > 0);
    assert_eq!(eh.weights_16bit * 2, linear_f32, "{ew:?}\n{eh:?}");
    let bytes: u64 = quantize::quantized_summary(half.as_mut()).values().map(|v| v.2).sum();
    assert_eq!(bytes, eh.weights_16bit);
    assert!(eh.table().contains("weights 16-bit"), "{}", eh.table());
}

#[test]
fn a_dtype_the_file_cannot_give_names_the_flag() {
    let e = BaseDtype::BF16.keep(GgmlType::Q4_K, "blk.0.attn_q.weight").unwrap_err().to_string();
    assert!(e.contains("--base-dtype") && e.contains("blk.0.attn_q.weight") && e.contains("Q4_K"), "{e}");
    // Rounding floats to 16 bits is a choice; auto and f32 take anything.
    assert_eq!(BaseDtype::BF16.keep(GgmlType::F32, "w").unwrap(), Some(QuantType::BF16));
    assert_eq!(BaseDtype::F16.keep(GgmlType::BF16, "w").unwrap(), Some(QuantType::F16));
    assert_eq!(BaseDtype::Auto.keep(GgmlType::Q4_K, "w").unwrap(), Some(QuantType::Q4_K));
    assert_eq!(BaseDtype::Auto.keep(GgmlType::F32, "w").unwrap(), None);
    assert_eq!(BaseDtype::F32.keep(GgmlType::BF16, "w").unwrap(), None);
}

/// `--quantize` on a base kept 16-bit quantizes it as it would the f32 one.
#[test]
fn a_sixteen_bit_base_quantizes_like_an_f32_one() {
    let g = gpu();
    let dir = fixture("llama_bf16_tiny");
    let mut half = load_causal_lm_with(g, &dir, BaseDtype::Auto).unwrap();
    let mut wide = load_causal_lm_with(g, &dir, BaseDtype::F32).unwrap();
    for m in [&mut half, &mut wide] {
        let report = quantize::quantize_linears(g, m.as_mut(), QuantType::Q8_0).unwrap();
        assert_eq!(report.tensors, LINEARS);
        assert_eq!(kept(m.as_mut()), vec![("q8_0".to_string(), LINEARS)]);
    }
    let e = Expected::read(&dir);
    let (input, _) = e.batch();
    let a = half.all_logits(g, &input).unwrap().to_f32_vec(g).unwrap();
    let b = wide.all_logits(g, &input).unwrap().to_f32_vec(g).unwrap();
    assert_eq!(a, b, "the same values quantized to the same blocks");
}
