//! The decoder families on the one configurable decoder, each against its transformers + PEFT
//! fixture (`scripts/make_fixtures.py`): logits, loss, every LoRA gradient, merged logits and
//! greedy generation through the KV cache; the gguf-py copy of each gives the same logits; and
//! configs that cannot work are refused naming the file and the key.
//!
//! What each fixture exercises: llama3_tiny RoPE scaling llama3 (original context 16, so every
//! branch of the ramp); qwen2_tiny q/k/v biases and a tied head; qwen3_tiny q/k RMSNorm per head
//! and head_dim 12 ≠ 32/4; mistral_tiny a sliding window of 4 over 7 tokens (and 14 when
//! generating); phi3_tiny fused qkv_proj and gate_up_proj, partial rotary 0.5 and LongRoPE's
//! attention factor; gemma3_tiny GeGLU, √hidden embeddings, sandwich norms stored as w for
//! x·(1 + w), q/k norms, five local layers (window 4, RoPE base 1e4) and a global one (base 1e6,
//! linear scaling 2), query_pre_attn_scalar 10 with head_dim 12, a tied head.

use std::path::Path;

use kiln::formats::gguf::GgufFile;
use kiln::models::gguf_decoder;
use kiln::models::load_causal_lm;

use super::*;

const FAMILIES: [&str; 5] = ["llama3_tiny", "qwen2_tiny", "qwen3_tiny", "mistral_tiny", "phi3_tiny"];

#[test]
fn families_load_as_their_model_type() {
    let all = FAMILIES.iter().chain(&["gemma3_tiny"]);
    for (name, model_type) in all.zip(["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma3_text"]) {
        let model = load_causal_lm(gpu(), &fixture(name)).unwrap();
        assert_eq!(model.model_type(), model_type, "{name}");
    }
}

#[test]
fn llama3_matches_transformers_and_peft() {
    base_matches("llama3_tiny");
    lora_matches("llama3_tiny");
    greedy_matches("llama3_tiny");
}

#[test]
fn qwen2_matches_transformers_and_peft() {
    base_matches("qwen2_tiny");
    lora_matches("qwen2_tiny");
    greedy_matches("qwen2_tiny");
}

#[test]
fn qwen3_matches_transformers_and_peft() {
    base_matches("qwen3_tiny");
    lora_matches("qwen3_tiny");
    greedy_matches("qwen3_tiny");
}

#[test]
fn mistral_matches_transformers_and_peft() {
    base_matches("mistral_tiny");
    lora_matches("mistral_tiny");
    greedy_matches("mistral_tiny");
}

#[test]
fn phi3_matches_transformers_and_peft() {
    base_matches("phi3_tiny");
    lora_matches("phi3_tiny");
    greedy_matches("phi3_tiny");
}

#[test]
fn gemma3_matches_transformers_and_peft() {
    base_matches("gemma3_tiny");
    lora_matches("gemma3_tiny");
    greedy_matches("gemma3_tiny");
}

/// gemma3_tiny as llama.cpp's converter writes it (norms as 1 + w, its own norm names, the
/// window as metadata, the layer pattern and local RoPE base implied) is the checkpoint, read
/// with the one thing a `gemma3` GGUF cannot say: llama.cpp scales scores by head_dim^-1/2
/// (query_pre_attn_scalar = head_dim in every Gemma 3 but 27B), where the fixture's is 10.
#[test]
fn gemma3_gguf_copy_is_the_checkpoint_with_head_dim_scaling() {
    let dir = fixture("gemma3_tiny");
    let e = Expected::read(&dir);
    let (input, _) = e.batch();
    let tmp = edited("gemma3_tiny", |c| c["query_pre_attn_scalar"] = 12.into());
    let hf = load_causal_lm(gpu(), tmp.path()).unwrap();
    let file = GgufFile::open(&dir.join("model.gguf")).unwrap();
    let gg = gguf_decoder::load_decoder(gpu(), &file).unwrap();
    let windows: Vec<Option<usize>> = gg.config.sliding_window.clone();
    assert_eq!(windows, [Some(4), Some(4), Some(4), Some(4), Some(4), None]);
    let want = hf.all_logits(gpu(), &input).unwrap().to_f32_vec(gpu()).unwrap();
    let got = gg.all_logits(gpu(), &input).unwrap().to_f32_vec(gpu()).unwrap();
    assert_close("gemma3 gguf vs checkpoint logits", &got, &f64s(&want), 1e-5, 1e-5);
    let prompt: Vec<u32> = e.i["greedy_ids"][..4].iter().map(|&x| x as u32).collect();
    let a = generate(gpu(), hf.as_ref(), &prompt, 10, Sampling::greedy(), &[], &mut |_| Ok(())).unwrap();
    let b = generate(gpu(), &gg, &prompt, 10, Sampling::greedy(), &[], &mut |_| Ok(())).unwrap();
    assert_eq!(a, b, "gemma3 gguf: greedy continuation");
}

/// The same weights written by gguf-py as llama.cpp lays them out (Q/K rows permuted for
/// `llama`, Llama 3's scaling as rope_freqs divisors, Phi-3's LongRoPE as factor tensors, the
/// window as metadata) give transformers' logits, and generate the same tokens.
#[test]
fn gguf_copies_give_the_same_logits() {
    for name in FAMILIES {
        let dir = fixture(name);
        let e = Expected::read(&dir);
        let file = GgufFile::open(&dir.join("model.gguf")).unwrap();
        let model = gguf_decoder::load_decoder(gpu(), &file).unwrap();
        check_logits(&format!("{name} gguf logits"), &model, &e, "logits");
        let want: Vec<u32> = e.i["greedy_ids"].iter().map(|&x| x as u32).collect();
        let got =
            generate(gpu(), &model, &want[..4], want.len() - 4, Sampling::greedy(), &[], &mut |_| Ok(())).unwrap();
        assert_eq!(got, want[4..], "{name} gguf: greedy continuation");
    }
}

/// A copy of the fixture `name` in a temporary folder with config.json edited by `edit`.
fn edited(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = fixture(name);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("model.safetensors"), tmp.path().join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    tmp
}

fn refusal(dir: &Path) -> String {
    match load_causal_lm(gpu(), dir) {
        Ok(_) => panic!("{} was accepted", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// A fixture, how its config.json is spoiled, and what the refusal must say.
type BadConfig = (&'static str, Box<dyn FnOnce(&mut serde_json::Value)>, &'static [&'static str]);

/// Configs no decoder can follow are refused with one message naming the file and the key.
#[test]
fn impossible_configs_are_refused_by_name() {
    let cases: Vec<BadConfig> = vec![
        (
            "llama3_tiny",
            Box::new(|c| c["rope_parameters"]["rope_type"] = "ntk-by-parts".into()),
            &["config.json", "rope_type", "`ntk-by-parts`"],
        ),
        (
            "mistral_tiny",
            Box::new(|c| c["sliding_window"] = 0.into()),
            &["config.json", "`sliding_window`", "positive"],
        ),
        (
            "qwen2_tiny",
            Box::new(|c| {
                c["layer_types"] = serde_json::json!(["sliding_attention", "full_attention"]);
                c["sliding_window"] = 0.into();
            }),
            &["config.json", "`sliding_window`"],
        ),
        // head_dim 12 × 4 heads = 48 rows; 10 would make q_proj 40.
        (
            "qwen3_tiny",
            Box::new(|c| c["head_dim"] = 10.into()),
            &["model.safetensors", "self_attn.q_proj.weight", "num_attention_heads", "head_dim"],
        ),
        // 4 + 2·2 heads of 8 rows is 64, not the file's 96 rows of qkv_proj.
        (
            "phi3_tiny",
            Box::new(|c| c["num_key_value_heads"] = 2.into()),
            &["model.safetensors", "qkv_proj.weight", "does not split", "q | k | v"],
        ),
        (
            "phi3_tiny",
            Box::new(|c| c["intermediate_size"] = 40.into()),
            &["model.safetensors", "gate_up_proj.weight", "does not split", "gate | up"],
        ),
        (
            "phi3_tiny",
            Box::new(|c| c["rope_parameters"]["short_factor"] = serde_json::json!([1.0])),
            &["config.json", "`short_factor`", "expected 2"],
        ),
        ("qwen3_tiny", Box::new(|c| c["hidden_act"] = "gelu".into()), &["config.json", "hidden_act", "gelu"]),
        (
            "llama3_tiny",
            Box::new(|c| c["num_key_value_heads"] = 3.into()),
            &["config.json", "num_key_value_heads", "multiple"],
        ),
        (
            "gemma3_tiny",
            Box::new(|c| c["final_logit_softcapping"] = 30.0.into()),
            &["config.json", "`final_logit_softcapping`", "softcapping"],
        ),
        (
            "gemma3_tiny",
            Box::new(|c| c["attn_logit_softcapping"] = 50.0.into()),
            &["config.json", "`attn_logit_softcapping`"],
        ),
        (
            "gemma3_tiny",
            Box::new(|c| c["hidden_activation"] = "gelu".into()),
            &["config.json", "`hidden_activation`", "`gelu`"],
        ),
        (
            "gemma3_tiny",
            Box::new(|c| c["use_bidirectional_attention"] = true.into()),
            &["config.json", "`use_bidirectional_attention`"],
        ),
        ("gemma3_tiny", Box::new(|c| c["model_type"] = "gemma3".into()), &["config.json", "multimodal", "gemma3_text"]),
        (
            "gemma3_tiny",
            Box::new(|c| c["sliding_window"] = serde_json::Value::Null),
            &["config.json", "`sliding_window`", "null"],
        ),
    ];
    for (name, edit, want) in cases {
        let tmp = edited(name, edit);
        let err = refusal(tmp.path());
        for w in want {
            assert!(err.contains(w), "{name}: `{w}` missing from: {err}");
        }
        eprintln!("{name}: {err}");
    }
}
