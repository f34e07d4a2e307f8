//! Shared by the test binaries: one GPU for the whole binary (so each pipeline compiles once),
//! seeded inputs, and a comparison that prints how close the kernel came.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use kiln::gpu::AdapterChoice;
use kiln::kernels::matmul_coop::{self, CoopShape, Precision};
use kiln::{Gpu, Tensor};
use tokenizers::Tokenizer;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::Whitespace;

/// The adapter every test in this binary uses. Panics with the reason when there is none:
/// a GPU test must never pass by not running.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| open_gpu("kernel tests run on"))
}

/// A second device on the same adapter, for the tests that set the matmul precision to f16
/// (`tests/kernels/matmul_coop.rs`, the f16 model test): a device setting changed there never
/// reaches the products of the tests running meanwhile on [`gpu`].
pub fn coop_gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| open_gpu("cooperative-matrix tests run on a second device of"))
}

fn open_gpu(what: &str) -> Gpu {
    // Every shader the tests compile is also translated to Metal and DX12 (naga), so a construct
    // those back ends reject fails here.
    kiln::gpu::backend_check::enable();
    match Gpu::new(&AdapterChoice::from_flag_or_env(None)) {
        Ok(gpu) => {
            // The tests against references and fixtures hold every product to f32, also on a
            // GPU whose default is f16 for frozen bases; the mixed-precision tests ask for f16
            // themselves ([`under_f16`]). KILN_PRECISION wins.
            if std::env::var_os("KILN_PRECISION").is_none() {
                matmul_coop::set_precision(&gpu, Precision::F32).expect("f32 runs everywhere");
            }
            eprintln!("{what} {}", gpu.describe());
            gpu
        }
        Err(e) => panic!("GPU tests need an adapter and found none: {e}"),
    }
}

/// Runs `f` under each of `values` of a device setting in turn, then puts the setting back.
/// One lock for every such setting keeps the tests that switch them from doing it under each
/// other (other tests may run meanwhile: both values of each setting give correct results).
fn under_each<T: Copy>(values: [T; 2], get: impl Fn() -> T, set: impl Fn(T), mut f: impl FnMut(T)) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let saved = get();
    for v in values {
        set(v);
        f(v);
    }
    set(saved);
}

/// Runs `f` under each kind of workgroup reduction, subgroup then barrier (`f` gets the kind's
/// name for its messages). Panics where the adapter has no subgroup operations: the subgroup
/// path must not pass untested.
pub fn under_both_reductions(mut f: impl FnMut(&str)) {
    use kiln::kernels::workgroup_reduce::{Reductions, has_subgroups, reductions, set_reductions};
    let gpu = gpu();
    assert!(
        has_subgroups(gpu),
        "{} has no subgroup operations: the subgroup reductions cannot be tested here",
        gpu.describe()
    );
    let set = |r| set_reductions(gpu, r).unwrap();
    under_each([Reductions::Subgroup, Reductions::Barrier], || reductions(gpu), set, |r| f(r.name()));
}

/// Runs `f` with matmul epilogues fused, then separate (`f` gets which).
pub fn under_both_epilogues(mut f: impl FnMut(bool)) {
    use kiln::kernels::matmul::{FusedEpilogues, fused_epilogues, set_fused_epilogues};
    let gpu = gpu();
    let both = [FusedEpilogues(true), FusedEpilogues(false)];
    under_each(both, || fused_epilogues(gpu), |v| set_fused_epilogues(gpu, v), |v| f(v.0));
}

/// Trainable parameters of these names, values and shapes, for tests that take gradients
/// through the tape.
pub fn trainable_params(names: &[&str], data: &[Vec<f32>], shapes: &[Vec<usize>]) -> Vec<kiln::autograd::Param> {
    names
        .iter()
        .zip(data)
        .zip(shapes)
        .map(|((name, d), shape)| {
            let mut p = kiln::autograd::Param::new(*name, upload(d, shape));
            p.set_trainable(gpu(), true).unwrap();
            p
        })
        .collect()
}

/// A small deterministic generator (xorshift64*), so inputs are the same on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub fn upload(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_f32(gpu(), data, shape).expect("upload")
}

pub fn download(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec(gpu()).expect("download")
}

/// Asserts |got - want| <= atol + rtol·|want| everywhere; on failure prints the max errors and
/// the first mismatches. Always prints the max errors, so `--nocapture` shows the margin.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut max_abs, mut max_rel) = (0.0f64, 0.0f64);
    let mut bad = Vec::new();
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        max_abs = max_abs.max(err);
        max_rel = max_rel.max(err / w.abs().max(1e-12));
        if err > atol + rtol * w.abs() || !g.is_finite() {
            bad.push((i, g, w));
        }
    }
    eprintln!(
        "{what}: {} values, max abs err {max_abs:.3e}, max rel err {max_rel:.3e} (atol {atol:e}, rtol {rtol:e})",
        got.len()
    );
    if !bad.is_empty() {
        let first: Vec<String> = bad.iter().take(8).map(|(i, g, w)| format!("[{i}] got {g} want {w}")).collect();
        panic!("{what}: {} of {} values out of tolerance; first: {}", bad.len(), got.len(), first.join(", "));
    }
}

/// The `bert_tiny` fixture's shapes (no head, no pooler) with weights of transformers' scale
/// (std 0.02, norms 1 and 0) written to `dir`: its pooled features still tell texts apart,
/// unlike the fixture's deliberately large random weights, whose features barely depend on
/// the input. Training tests start from it.
pub fn hf_initialised_bert(dir: &std::path::Path) {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert_tiny");
    let bytes = std::fs::read(fixture.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut rng = Rng::new(11);
    let mut tensors = Vec::new();
    // In name order: safetensors lists tensors in hash order, and the draws must not depend on it.
    let mut stored = st.tensors();
    stored.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, v) in stored {
        if name.starts_with("classifier.") || name.contains("pooler") {
            continue;
        }
        let n: usize = v.shape().iter().product();
        let data = if name.contains("LayerNorm") {
            vec![if name.ends_with(".weight") { 1.0 } else { 0.0 }; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            // Uniform in ±0.034: standard deviation 0.02.
            (0..n).map(|_| 0.02 * 3f32.sqrt() * rng.uniform()).collect()
        };
        tensors.push((name.to_string(), data, v.shape().to_vec()));
    }
    kiln::formats::safetensors::save_safetensors(&dir.join("model.safetensors"), &tensors, None).unwrap();
    std::fs::copy(fixture.join("config.json"), dir.join("config.json")).unwrap();
}

/// A copy of the fixture model with a word-level tokenizer `w0 .. w95` (id = number).
pub fn tiny_model(dir: &Path) {
    tiny_model_of("llama_tiny", dir);
}

/// [`tiny_model`] from another decoder fixture (all have the 96-token vocabulary).
pub fn tiny_model_of(fixture: &str, dir: &Path) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture);
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), dir.join(f)).unwrap();
    }
    let vocab: HashMap<String, u32> = (0..96).map(|i| (format!("w{i}"), i)).collect();
    let model = WordLevel::builder().vocab(vocab.into_iter().collect()).unk_token("w0".into()).build().unwrap();
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    tok.save(dir.join("tokenizer.json"), false).unwrap();
}

/// [`tiny_model`] with a chat template: the word-level vocabulary `w0 .. w93`, then
/// `<|im_start|>` (94) and `<|im_end|>` (95) as special tokens, and a ChatML template in
/// tokenizer_config.json with `<|im_end|>` as eos. Role names are not words of the vocabulary
/// and tokenize as the unknown `w0`.
pub fn tiny_chat_model(dir: &Path) {
    use tokenizers::AddedToken;
    tiny_model(dir);
    let vocab: HashMap<String, u32> = (0..94).map(|i| (format!("w{i}"), i)).collect();
    let model = WordLevel::builder().vocab(vocab.into_iter().collect()).unk_token("w0".into()).build().unwrap();
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    tok.add_special_tokens([AddedToken::from("<|im_start|>", true), AddedToken::from("<|im_end|>", true)]).unwrap();
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(95));
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    let template = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    let config = serde_json::json!({"eos_token": "<|im_end|>", "chat_template": template});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
}

/// A tiny BERT (transformers-scale weights) with a word-level tokenizer: `[PAD] [UNK] [CLS]
/// [SEP]` then `w4 .. w95`, texts wrapped as `[CLS] text [SEP]`.
pub fn tiny_bert(dir: &Path) {
    use tokenizers::processors::template::TemplateProcessing;
    hf_initialised_bert(dir);
    let mut vocab: HashMap<String, u32> = (4..96).map(|i| (format!("w{i}"), i)).collect();
    for (i, t) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"].iter().enumerate() {
        vocab.insert(t.to_string(), i as u32);
    }
    let model = WordLevel::builder().vocab(vocab.into_iter().collect()).unk_token("[UNK]".into()).build().unwrap();
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    let template = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .unwrap()
        .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
        .build()
        .unwrap();
    tok.with_post_processor(Some(template));
    tok.save(dir.join("tokenizer.json"), false).unwrap();
}

/// The cooperative-matrix tests hold this while they set [`coop_gpu`]'s precision to f16.
pub static PRECISION_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The adapter's shape for the kernel. Without one: fails under `KILN_REQUIRE_COOP`, else checks
/// the refusal and returns None after saying the kernel was not run.
pub fn shape_or_refusal() -> Option<CoopShape> {
    let gpu = coop_gpu();
    match matmul_coop::coop_shape(gpu) {
        Ok(shape) => Some(shape),
        Err(why) => {
            assert!(
                std::env::var_os("KILN_REQUIRE_COOP").is_none(),
                "KILN_REQUIRE_COOP is set, but on {} {why}",
                gpu.describe()
            );
            assert_eq!(
                matmul_coop::precision(gpu),
                Precision::F32,
                "f16 is the default on an adapter that cannot run it"
            );
            let err = matmul_coop::set_precision(gpu, Precision::F16)
                .expect_err("f16 was accepted without cooperative matrices");
            let text = err.to_string();
            assert!(
                text.contains(&why) && text.contains(&gpu.describe()) && text.contains("--precision f32"),
                "{text}"
            );
            eprintln!(
                "NOT RUN: the cooperative-matrix matmul, because on {} {why} (f16 refused as it should be)",
                gpu.describe()
            );
            None
        }
    }
}

/// Runs `f` with [`coop_gpu`]'s precision at `precision`, then puts the setting back, holding
/// [`PRECISION_LOCK`] (so another test's f16 does not reach an f32 baseline either).
pub fn under_precision<T>(precision: Precision, f: impl FnOnce() -> T) -> T {
    let gpu = coop_gpu();
    let _guard = PRECISION_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let saved = matmul_coop::precision(gpu);
    matmul_coop::set_precision(gpu, precision).unwrap();
    let out = f();
    matmul_coop::set_precision(gpu, saved).unwrap();
    out
}

/// [`under_precision`] at f16.
pub fn under_f16<T>(f: impl FnOnce() -> T) -> T {
    under_precision(Precision::F16, f)
}
