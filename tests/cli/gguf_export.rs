//! `kiln export --format gguf`: every decoder family's tiny fixture with its PEFT adapter merged
//! and written as GGUF, read back by kiln's own GGUF reader with the merged model's logits
//! (f32 within 1e-5, f16 within 1e-2 of the largest logit, quantized types within a bound scaled to the logits, the
//! error printed); GPT-2 (which kiln reads from Hugging Face folders only) tensor by tensor; the
//! LoRA adapter GGUF against the merged file; the Modelfile; and the bad inputs.

use std::path::{Path, PathBuf};

use kiln::formats::gguf::GgufFile;
use kiln::models::gguf_export::{self, OutType, permute_rows};
use kiln::models::{LmInput, load_causal_lm};

use super::common::gpu;
use super::{Workspace, kiln, lm_workspace_of, max_abs_diff};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn adapter_of(name: &str) -> PathBuf {
    fixture(name).join("peft_adapter")
}

/// The fixture's model with its WordLevel tokenizer. Gemma's `query_pre_attn_scalar` is set to
/// its head dim: GGUF has no key for it and llama.cpp (like kiln's reader) scales by the head dim.
fn workspace(name: &str) -> Workspace {
    let ws = lm_workspace_of(name);
    if name == "gemma3_tiny" {
        let path = ws.model.join("config.json");
        let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["query_pre_attn_scalar"] = config["head_dim"].clone();
        std::fs::write(&path, config.to_string()).unwrap();
    }
    ws
}

const IDS: [u32; 6] = [10, 11, 12, 13, 14, 15];

/// The logits of the model in `dir` with the adapter merged.
fn merged_logits(dir: &Path, adapter: &Path) -> Vec<f32> {
    let gpu = gpu();
    let mut m = load_causal_lm(gpu, dir).unwrap();
    m.load_adapter(gpu, adapter).unwrap();
    m.merge_lora(gpu).unwrap();
    let input = LmInput::new(gpu, IDS.to_vec(), 1, IDS.len(), None).unwrap();
    m.all_logits(gpu, &input).unwrap().to_f32_vec(gpu).unwrap()
}

/// The logits of the GGUF at `path`, read by kiln's GGUF reader.
fn gguf_logits(path: &Path) -> Vec<f32> {
    let gpu = gpu();
    let file = GgufFile::open(path).unwrap();
    let m = kiln::models::gguf_decoder::load_decoder(gpu, &file).unwrap();
    let input = LmInput::new(gpu, IDS.to_vec(), 1, IDS.len(), None).unwrap();
    kiln::models::CausalLm::all_logits(&m, gpu, &input).unwrap().to_f32_vec(gpu).unwrap()
}

#[test]
fn every_decoder_family_round_trips_through_gguf() {
    for name in ["llama_tiny", "llama3_tiny", "mistral_tiny", "qwen2_tiny", "qwen3_tiny", "phi3_tiny", "gemma3_tiny"] {
        let ws = workspace(name);
        let adapter = adapter_of(name);
        let want = merged_logits(&ws.model, &adapter);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        // Quantized types: the logit error may grow at most 4× faster than the weight error
        // does from f16 to that type (these random 32-wide models amplify weight error about
        // 80-fold into their logits; the errors are printed).
        let mut f16: Option<(f32, f64)> = None;
        for ty in [OutType::F32, OutType::F16, OutType::Q8_0, OutType::Q4_K_M] {
            let out = ws.path(&format!("{name}-{ty}.gguf"));
            let report = gguf_export::export_merged(gpu(), &ws.model, &adapter, &out, ty).unwrap();
            let got = gguf_logits(&out);
            assert_eq!(want.len(), got.len());
            let err = max_abs_diff(&want, &got);
            let weight_err = report.error.map_or(0.0, |e| e.mean_abs);
            let tol = match ty {
                OutType::F32 => 1e-5,
                OutType::F16 => {
                    f16 = Some((err, weight_err));
                    1e-2 * scale.max(1.0)
                }
                _ => {
                    let (e16, w16) = f16.unwrap();
                    4.0 * e16.max(1e-4) * (weight_err / w16) as f32
                }
            };
            eprintln!(
                "{name} {ty}: max |logit error| {err:.3e} (max |logit| {scale:.3}, bound {tol:.3e}); mean |weight error| \
                 {weight_err:.3e}"
            );
            assert!(err <= tol, "{name} {ty}: logits differ by {err} (bound {tol})");
            assert!(out.with_file_name("Modelfile").is_file());
        }
    }
}

/// Q4_K_M on rows that are not whole super-blocks: every weight falls back as llama.cpp does,
/// and the report lists it.
#[test]
fn q4_k_m_fallbacks_are_reported() {
    let ws = workspace("llama_tiny");
    let out = ws.path("m.gguf");
    let report =
        gguf_export::export_merged(gpu(), &ws.model, &adapter_of("llama_tiny"), &out, OutType::Q4_K_M).unwrap();
    let file = GgufFile::open(&out).unwrap();
    assert_eq!(file.get_u64("general.file_type").unwrap(), Some(15));
    // Hidden 32: no 256-wide rows, so Q4_K → Q5_0, Q6_K → Q8_0, norms F32.
    let ty = |n: &str| file.require_tensor(n).unwrap().ggml_type.to_string();
    assert_eq!(ty("blk.0.attn_q.weight"), "Q5_0");
    // Two layers: use_more_bits picks the last (i >= 7·n/8), not the first.
    assert_eq!(ty("blk.0.attn_v.weight"), "Q5_0");
    assert_eq!(ty("blk.1.attn_v.weight"), "Q8_0");
    // ffn_down's rows are intermediate_size 48 wide: no 32-block fits, so F16.
    assert_eq!(ty("blk.1.ffn_down.weight"), "F16");
    assert_eq!(ty("blk.0.attn_norm.weight"), "F32");
    assert!(report.fallbacks.iter().any(|f| f.contains("blk.0.attn_q.weight")), "{:?}", report.fallbacks);
    assert!(report.lines().iter().any(|l| l.contains("fallback")), "{:?}", report.lines());
}

/// GPT-2: every tensor under llama.cpp's name, Conv1D weights transposed to [out, in].
#[test]
fn gpt2_tensors_are_written_as_the_converter_names_and_lays_them_out() {
    let ws = workspace("gpt2_tiny");
    let adapter = adapter_of("gpt2_tiny");
    let out = ws.path("gpt2.gguf");
    gguf_export::export_merged(gpu(), &ws.model, &adapter, &out, OutType::F32).unwrap();
    let file = GgufFile::open(&out).unwrap();
    assert_eq!(file.require_str("general.architecture").unwrap(), "gpt2");
    let mut m = load_causal_lm(gpu(), &ws.model).unwrap();
    m.load_adapter(gpu(), &adapter).unwrap();
    m.merge_lora(gpu()).unwrap();
    let weights = m.hf_weights(gpu()).unwrap();
    let find = |hf: &str| weights.iter().find(|(n, _, _)| n.ends_with(hf)).unwrap();
    let (_, c_attn, shape) = find("h.0.attn.c_attn.weight");
    let (got, gshape) = file.tensor_f32("blk.0.attn_qkv.weight").unwrap();
    assert_eq!(gshape, [shape[1], shape[0]]);
    for r in 0..shape[0] {
        for c in 0..shape[1] {
            assert_eq!(got[c * shape[0] + r], c_attn[r * shape[1] + c]);
        }
    }
    let (_, wte, _) = find("wte.weight");
    assert_eq!(&file.tensor_f32("token_embd.weight").unwrap().0, wte);
    for name in ["position_embd.weight", "output_norm.bias", "blk.1.ffn_down.weight", "blk.1.attn_norm.bias"] {
        file.require_tensor(name).unwrap();
    }
    assert_eq!(file.tensors.len(), weights.len());
}

/// The adapter GGUF: llama.cpp's keys, A as PEFT stores it, B with llama's Q/K permutation,
/// and alpha / r · B·A equal to what the merge added to the weight in the merged GGUF.
#[test]
fn lora_gguf_holds_what_the_merge_adds() {
    let name = "llama_tiny";
    let ws = workspace(name);
    let adapter = adapter_of(name);
    let (lora, merged) = (ws.path("adapter.gguf"), ws.path("merged/model.gguf"));
    std::fs::create_dir_all(merged.parent().unwrap()).unwrap();
    kiln("export").model(&ws.model).flag("lora", &adapter).args(["--format", "gguf"]).out(&lora).run();
    gguf_export::export_merged(gpu(), &ws.model, &adapter, &merged, OutType::F32).unwrap();
    let file = GgufFile::open(&lora).unwrap();
    assert_eq!(file.require_str("general.architecture").unwrap(), "llama");
    assert_eq!(file.require_str("general.type").unwrap(), "adapter");
    assert_eq!(file.require_str("adapter.type").unwrap(), "lora");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    let (r, alpha) = (config["r"].as_f64().unwrap(), config["lora_alpha"].as_f64().unwrap());
    let file_alpha = file.require_f64("adapter.lora.alpha").unwrap();
    assert!((file_alpha - alpha).abs() < 1e-6, "alpha {file_alpha}, adapter_config says {alpha}");
    // 7 adapted linears per block.
    assert_eq!(file.tensors.len(), 2 * 7 * config_layers(&ws.model));

    let base = load_causal_lm(gpu(), &ws.model).unwrap().hf_weights(gpu()).unwrap();
    let merged = GgufFile::open(&merged).unwrap();
    let heads = |k: &str| read_config(&ws.model)[k].as_u64().unwrap() as usize;
    for (layer, hf, g, h) in [
        (1, "self_attn.q_proj", "attn_q", Some(heads("num_attention_heads"))),
        (0, "self_attn.k_proj", "attn_k", Some(heads("num_key_value_heads"))),
        (1, "mlp.down_proj", "ffn_down", None),
    ] {
        let (a, a_shape) = file.tensor_f32(&format!("blk.{layer}.{g}.weight.lora_a")).unwrap();
        let (b, b_shape) = file.tensor_f32(&format!("blk.{layer}.{g}.weight.lora_b")).unwrap();
        assert_eq!(a_shape[0], r as usize);
        assert_eq!(b_shape[1], r as usize);
        let (_, w0, shape) = base.iter().find(|(n, _, _)| n == &format!("model.layers.{layer}.{hf}.weight")).unwrap();
        let w0 = match h {
            Some(h) => permute_rows(w0, shape[0], shape[1], h),
            None => w0.clone(),
        };
        let (w1, _) = merged.tensor_f32(&format!("blk.{layer}.{g}.weight")).unwrap();
        let (rows, cols, rank) = (shape[0], shape[1], r as usize);
        let mut err = 0f32;
        for i in 0..rows {
            for j in 0..cols {
                let ba: f32 = (0..rank).map(|k| b[i * rank + k] * a[k * cols + j]).sum();
                err = err.max((w0[i * cols + j] + (file_alpha / r) as f32 * ba - w1[i * cols + j]).abs());
            }
        }
        assert!(err < 1e-5, "{g}: W + alpha/r·B·A differs from the merged weight by {err}");
    }
    let modelfile = std::fs::read_to_string(lora.with_file_name("Modelfile")).unwrap();
    assert!(modelfile.contains("\nADAPTER ./adapter.gguf\n"), "{modelfile}");
    let base_path = std::fs::canonicalize(&ws.model).unwrap();
    assert!(modelfile.contains(&format!("FROM {}\n", base_path.display())), "{modelfile}");
}

fn read_config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

fn config_layers(dir: &Path) -> usize {
    read_config(dir)["num_hidden_layers"].as_u64().unwrap() as usize
}

/// The CLI: the Modelfile's ChatML turns from the model's template, the report, --overwrite.
#[test]
fn cli_writes_the_gguf_and_a_chatml_modelfile_and_refuses_to_overwrite() {
    let ws = Workspace::new(super::common::tiny_chat_model, |_| {});
    let adapter = adapter_of("llama_tiny");
    let out = ws.path("export/model.gguf");
    let export = || {
        kiln("export --merge")
            .model(&ws.model)
            .flag("lora", &adapter)
            .args(["--format", "gguf", "--quantize", "q8_0"])
            .out(&out)
    };
    let (stdout, _) = export().run();
    assert!(stdout.contains("quantization error"), "{stdout}");
    let modelfile = std::fs::read_to_string(out.with_file_name("Modelfile")).unwrap();
    assert!(modelfile.contains("FROM ./model.gguf\n"), "{modelfile}");
    assert!(modelfile.contains("<|im_start|>assistant\n{{ .Response }}<|im_end|>"), "{modelfile}");
    assert!(modelfile.contains("PARAMETER stop \"<|im_end|>\""), "{modelfile}");
    let file = GgufFile::open(&out).unwrap();
    assert!(file.require_str("tokenizer.chat_template").unwrap().contains("<|im_start|>"));
    assert_eq!(file.require_str("tokenizer.ggml.model").unwrap(), "none");

    let before = std::fs::read(&out).unwrap();
    export().fails_naming(&["model.gguf", "--overwrite"]);
    assert_eq!(std::fs::read(&out).unwrap(), before, "a refused export changed the file");
    export().on("overwrite").run();
    // Nothing but the two files: no temporary left behind.
    let names: Vec<String> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn bad_inputs_are_refused_and_leave_nothing() {
    let ws = workspace("llama_tiny");
    let out = ws.path("out/x.gguf");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    // An adapter made for another base names a module it cannot place.
    kiln("export --merge")
        .model(&ws.model)
        .flag("lora", adapter_of("phi3_tiny"))
        .args(["--format", "gguf"])
        .out(&out)
        .fails_naming(&["gate_up_proj"]);
    // Adapters are not quantized.
    kiln("export")
        .model(&ws.model)
        .flag("lora", adapter_of("llama_tiny"))
        .args(["--format", "gguf", "--quantize", "q4_k_m"])
        .out(&out)
        .fails_naming(&["--quantize", "f16"]);
    kiln("export")
        .model(&ws.model)
        .flag("lora", adapter_of("llama_tiny"))
        .args(["--format", "gguf"])
        .out(&ws.path("x.bin"))
        .fails_naming(&["--out", ".gguf"]);
    assert_eq!(std::fs::read_dir(out.parent().unwrap()).unwrap().count(), 0, "a failed export left files");
}
