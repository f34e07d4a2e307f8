//! Hardening. Bad input from everywhere: broken model files, adapters, data and settings; every
//! case must end with a non-zero exit, no panic, and one message that names the file and the
//! line, tensor or key and says what was expected. The fuzzers' regressions: every input they
//! found (`tests/fixtures/fuzz/`) and seeded mutations of their seed corpus go through the
//! readers without a panic. Interruptions: Ctrl-C checkpoints and exits cleanly, `kill -9` at
//! random moments always leaves a checkpoint that resumes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{tiny_bert, tiny_model};
use kiln::formats::gguf::testing::{self as gg, GgufBuilder};
use kiln::formats::gguf::{GgmlType, GgufValue};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The workspace: good inputs that each case copies and breaks
// ---------------------------------------------------------------------------------------------

struct Workspace {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Workspace {
    fn new() -> Workspace {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        for d in ["llama", "bert", "lm_data", "cls_data"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        tiny_model(&root.join("llama"));
        tiny_bert(&root.join("bert"));
        let prompt = |s: usize| format!("{{\"prompt\": \"w{} w{}\", \"completion\": \" w{}\"}}\n", s, s + 1, s + 2);
        std::fs::write(root.join("lm_data/train.jsonl"), (3..40).map(prompt).collect::<String>()).unwrap();
        let labelled =
            |i: usize| format!("{{\"text\": \"w{} w{}\", \"label\": \"{}\"}}\n", 4 + i, 40 + i, ["a", "b"][i % 2]);
        std::fs::write(root.join("cls_data/train.jsonl"), (0..20).map(labelled).collect::<String>()).unwrap();
        let adapter = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_tiny/peft_adapter");
        copy_dir(&adapter, &root.join("adapter"));
        Workspace { _tmp: tmp, root }
    }

    /// A fresh copy of the good folder `from`, named `name`, for one case to break.
    fn copy(&self, from: &str, name: &str) -> PathBuf {
        let to = self.root.join(name);
        copy_dir(&self.root.join(from), &to);
        to
    }

    fn path(&self, name: &str) -> String {
        self.root.join(name).to_str().unwrap().to_string()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

// ---- safetensors surgery ----

fn read_st(path: &Path) -> (serde_json::Map<String, Value>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header.as_object().unwrap().clone(), bytes[8 + n..].to_vec())
}

fn write_st(path: &Path, header: &serde_json::Map<String, Value>, data: &[u8]) {
    let mut text = serde_json::to_string(header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend(text.as_bytes());
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// Edits the header of `dir/model.safetensors` in place.
fn edit_st(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>, &mut Vec<u8>)) {
    let file = dir.join("model.safetensors");
    let (mut header, mut data) = read_st(&file);
    edit(&mut header, &mut data);
    write_st(&file, &header, &data);
}

fn edit_json(file: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(file, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

// ---- GGUF files ----

/// A GGUF Llama header matching the tiny fixture's sizes; the tensors are left to each case.
fn llama_gguf() -> GgufBuilder {
    let u32s = GgufValue::U32;
    let tokens: Vec<String> = (0..96).map(|i| format!("w{i}")).collect();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    GgufBuilder::new()
        .kv("general.architecture", GgufValue::String("llama".into()))
        .kv("llama.attention.head_count", u32s(4))
        .kv("llama.attention.head_count_kv", u32s(2))
        .kv("llama.embedding_length", u32s(32))
        .kv("llama.feed_forward_length", u32s(48))
        .kv("llama.block_count", u32s(2))
        .kv("llama.context_length", u32s(64))
        .kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
        .kv("tokenizer.ggml.tokens", gg::strings(&tokens))
        .kv("tokenizer.ggml.merges", gg::strings(&[]))
}

// ---------------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------------

struct Case {
    name: &'static str,
    args: Vec<String>,
    /// Each must appear in stderr: the file, the line/tensor/key, what was expected.
    expect: Vec<String>,
}

fn case(name: &'static str, args: &[&str], expect: &[&str]) -> Case {
    Case {
        name,
        args: args.iter().map(|a| a.to_string()).collect(),
        expect: expect.iter().map(|e| e.to_string()).collect(),
    }
}

/// Runs every case; collects all failures before failing, so one run shows them all.
fn run_cases(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in &cases {
        let out =
            Command::new(env!("CARGO_BIN_EXE_kiln")).args(&c.args).env("XDG_RUNTIME_DIR", "/tmp").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        let mut problems = Vec::new();
        if out.status.success() {
            problems.push("exited 0".to_string());
        }
        // Rust exits with 101 after a panic; a signal leaves no code at all.
        if code == Some(101) || code.is_none() || stderr.contains("panicked") {
            problems.push(format!("crashed (exit {code:?})"));
        }
        let errors = stderr.lines().filter(|l| l.starts_with("error")).count();
        if errors != 1 {
            problems.push(format!("{errors} error lines, expected one message"));
        }
        if stderr.len() > 4000 {
            problems.push(format!("a {}-byte message", stderr.len()));
        }
        for e in &c.expect {
            if !stderr.contains(e.as_str()) {
                problems.push(format!("no `{e}` in the message"));
            }
        }
        if !problems.is_empty() {
            let shown: String = stderr.chars().take(1500).collect();
            failures.push(format!("{}: {}\n    kiln {}\n    {shown}", c.name, problems.join("; "), c.args.join(" ")));
        }
    }
    eprintln!("{} bad-input cases, {} failed", cases.len(), failures.len());
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

fn train_lm(model: &str, data: &str) -> Vec<String> {
    ["train", "--model", model, "--data", data, "--steps", "1", "--eval-every", "0"].map(String::from).to_vec()
}

fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn case_args(name: &'static str, args: Vec<String>, expect: &[&str]) -> Case {
    Case { name, args, expect: expect.iter().map(|e| e.to_string()).collect() }
}

// ---------------------------------------------------------------------------------------------
// Model files
// ---------------------------------------------------------------------------------------------

#[test]
fn broken_model_files_are_named_with_what_was_expected() {
    let ws = Workspace::new();
    let data = ws.path("lm_data");
    let mut cases = Vec::new();
    let mut model_case = |name: &'static str, expect: &[&str], breakit: &dyn Fn(&Path)| {
        let dir = ws.copy("llama", name);
        breakit(&dir);
        cases.push(case_args(name, train_lm(&s(&dir), &data), expect));
    };

    model_case("st_empty", &["model.safetensors", "not a safetensors file"], &|d| {
        std::fs::write(d.join("model.safetensors"), b"").unwrap();
    });
    model_case("st_truncated", &["model.safetensors", "not a safetensors file"], &|d| {
        let b = std::fs::read(d.join("model.safetensors")).unwrap();
        std::fs::write(d.join("model.safetensors"), &b[..b.len() / 2]).unwrap();
    });
    model_case("st_absurd_header_length", &["model.safetensors", "not a safetensors file"], &|d| {
        let mut b = std::fs::read(d.join("model.safetensors")).unwrap();
        b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(d.join("model.safetensors"), b).unwrap();
    });
    model_case("st_header_not_json", &["model.safetensors", "not a safetensors file"], &|d| {
        let mut b = 16u64.to_le_bytes().to_vec();
        b.extend(b"{not json at all");
        std::fs::write(d.join("model.safetensors"), b).unwrap();
    });
    model_case("st_offset_past_end", &["model.safetensors", "not a safetensors file"], &|d| {
        edit_st(d, |h, data| h["model.norm.weight"]["data_offsets"] = json!([data.len(), data.len() + 128]));
    });
    model_case("st_wrong_shape", &["model.safetensors", "model.norm.weight", "[2, 16]", "[32]"], &|d| {
        edit_st(d, |h, _| h["model.norm.weight"]["shape"] = json!([2, 16]));
    });
    model_case("st_missing_tensor", &["model.layers.1.mlp.up_proj.weight", "missing"], &|d| {
        edit_st(d, |h, _| {
            let t = h.remove("model.layers.1.mlp.up_proj.weight").unwrap();
            h.insert("model.layers.1.mlp.up_proj.weight_renamed".into(), t);
        });
    });
    model_case("st_unexpected_tensor", &["model.safetensors", "model.layers.7.extra.weight", "unexpected"], &|d| {
        edit_st(d, |h, data| {
            let n = data.len();
            data.extend([0u8; 16]);
            h.insert(
                "model.layers.7.extra.weight".into(),
                json!({"dtype": "F32", "shape": [4], "data_offsets": [n, n + 16]}),
            );
        });
    });
    model_case("st_unknown_dtype", &["model.safetensors", "model.norm.weight", "I32", "F32, F16 and BF16"], &|d| {
        edit_st(d, |h, _| h["model.norm.weight"]["dtype"] = json!("I32"));
    });
    model_case("config_not_json", &["config.json", "line 1"], &|d| {
        std::fs::write(d.join("config.json"), "hidden_size = 32\n").unwrap();
    });
    model_case("config_missing_key", &["config.json", "hidden_size"], &|d| {
        edit_json(&d.join("config.json"), |v| {
            v.as_object_mut().unwrap().remove("hidden_size");
        });
    });
    model_case("config_heads_do_not_divide", &["config.json", "num_key_value_heads", "num_attention_heads"], &|d| {
        edit_json(&d.join("config.json"), |v| v["num_key_value_heads"] = json!(3));
    });
    model_case(
        "config_size_contradicts_tensors",
        &["model.safetensors", "model.embed_tokens.weight", "[96, 32]"],
        &|d| {
            edit_json(&d.join("config.json"), |v| v["vocab_size"] = json!(97));
        },
    );
    model_case("config_zero_layers", &["config.json", "num_hidden_layers"], &|d| {
        edit_json(&d.join("config.json"), |v| v["num_hidden_layers"] = json!(0));
    });
    model_case("config_absurd_size", &["config.json", "vocab_size"], &|d| {
        edit_json(&d.join("config.json"), |v| v["vocab_size"] = json!(1u64 << 40));
    });
    model_case("config_unknown_model_type", &["config.json", "mamba", "llama"], &|d| {
        edit_json(&d.join("config.json"), |v| v["model_type"] = json!("mamba"));
    });
    model_case("no_weights", &["safetensors"], &|d| {
        std::fs::remove_file(d.join("model.safetensors")).unwrap();
    });
    model_case("tokenizer_corrupt", &["tokenizer.json"], &|d| {
        std::fs::write(d.join("tokenizer.json"), "{\"model\": 3").unwrap();
    });

    // GGUF: header damage first, then metadata and tensors that do not fit the model.
    let mut gguf_case = |name: &'static str, expect: &[&str], bytes: Vec<u8>| {
        let file = ws.root.join(format!("{name}.gguf"));
        std::fs::write(&file, bytes).unwrap();
        cases.push(case_args(name, train_lm(&s(&file), &data), expect));
    };
    let good = llama_gguf().build();
    gguf_case("gguf_empty", &["gguf_empty.gguf", "magic"], Vec::new());
    gguf_case("gguf_bad_magic", &["gguf_bad_magic.gguf", "GGUF"], [b"GGML".as_slice(), &good[4..]].concat());
    gguf_case("gguf_version_1", &["gguf_version_1.gguf", "version 1", "2 and 3"], llama_gguf().version(1).build());
    let mut absurd = good.clone();
    absurd[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    gguf_case("gguf_absurd_tensor_count", &["gguf_absurd_tensor_count.gguf", "tensor"], absurd);
    let mut long_key = good.clone();
    long_key[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    gguf_case("gguf_absurd_string_length", &["gguf_absurd_string_length.gguf", "metadata entry 0"], long_key);
    gguf_case("gguf_truncated", &["gguf_truncated.gguf", "truncated"], good[..good.len() / 2].to_vec());
    let x = gg::seeded(32 * 96, 3);
    gguf_case(
        "gguf_tensor_past_end",
        &["gguf_tensor_past_end.gguf", "token_embd.weight", "truncated"],
        llama_gguf()
            .raw_tensor("token_embd.weight", &[32, 96], GgmlType::F32.to_u32(), gg::encode_f32(&x).0, Some(1 << 20))
            .build(),
    );
    gguf_case(
        "gguf_unknown_type",
        &["gguf_unknown_type.gguf", "token_embd.weight", "type"],
        llama_gguf().raw_tensor("token_embd.weight", &[32, 96], 99, vec![0; 64], None).build(),
    );
    gguf_case(
        "gguf_too_many_dims",
        &["gguf_too_many_dims.gguf", "output_norm.weight", "dims"],
        llama_gguf().raw_tensor("output_norm.weight", &[1, 1, 1, 1, 32], 0, vec![0; 128], None).build(),
    );
    gguf_case(
        "gguf_bad_alignment",
        &["gguf_bad_alignment.gguf", "general.alignment", "power of two"],
        llama_gguf().kv("general.alignment", GgufValue::U32(3)).build(),
    );
    gguf_case(
        "gguf_wrong_architecture",
        &["gguf_wrong_architecture.gguf", "gptneox", "llama"],
        GgufBuilder::new().kv("general.architecture", GgufValue::String("gptneox".into())).build(),
    );
    gguf_case(
        "gguf_missing_key",
        &["gguf_missing_key.gguf", "llama.attention.head_count", "missing"],
        GgufBuilder::new().kv("general.architecture", GgufValue::String("llama".into())).build(),
    );
    gguf_case("gguf_missing_tensor", &["gguf_missing_tensor.gguf", "token_embd.weight"], llama_gguf().build());
    gguf_case(
        "gguf_wrong_tensor_shape",
        &["gguf_wrong_tensor_shape.gguf", "token_embd.weight", "[95, 32]"],
        llama_gguf().tensor("token_embd.weight", &[32, 95], GgmlType::F32, gg::encode_f32(&x[..32 * 95]).0).build(),
    );
    run_cases(cases);
}

// ---------------------------------------------------------------------------------------------
// Adapters
// ---------------------------------------------------------------------------------------------

#[test]
fn broken_adapters_are_named_with_what_was_expected() {
    let ws = Workspace::new();
    let model = ws.path("llama");
    let mut cases = Vec::new();
    let mut adapter_case = |name: &'static str, expect: &[&str], breakit: &dyn Fn(&Path)| {
        let dir = ws.copy("adapter", name);
        breakit(&dir);
        let args = ["generate", "--model", &model, "--lora", &s(&dir), "--prompt", "w3 w4", "--max-tokens", "1"];
        cases.push(case(name, &args, expect));
    };
    adapter_case("adapter_config_corrupt", &["adapter_config.json", "line"], &|d| {
        std::fs::write(d.join("adapter_config.json"), "{\"r\": 4,").unwrap();
    });
    adapter_case("adapter_rank_mismatch", &["adapter_model.safetensors", "lora_A", "[8, 32]"], &|d| {
        edit_json(&d.join("adapter_config.json"), |v| v["r"] = json!(8));
    });
    adapter_case("adapter_rank_zero", &["adapter_config.json", "r"], &|d| {
        edit_json(&d.join("adapter_config.json"), |v| v["r"] = json!(0));
    });
    adapter_case("adapter_unknown_target", &["adapter_config.json", "qkv_proj"], &|d| {
        edit_json(&d.join("adapter_config.json"), |v| v["target_modules"] = json!(["qkv_proj"]));
    });
    adapter_case("adapter_missing_weights", &["adapter_model.safetensors"], &|d| {
        std::fs::remove_file(d.join("adapter_model.safetensors")).unwrap();
    });
    adapter_case("adapter_tensor_for_missing_layer", &["adapter_model.safetensors", "layers.9"], &|d| {
        let file = d.join("adapter_model.safetensors");
        let (mut h, data) = read_st(&file);
        let key = h.keys().find(|k| k.contains("layers.1.") && k.contains("lora_A")).unwrap().clone();
        let v = h.remove(&key).unwrap();
        h.insert(key.replace("layers.1.", "layers.9."), v);
        write_st(&file, &h, &data);
    });
    adapter_case("adapter_wrong_peft_type", &["adapter_config.json", "IA3", "LORA"], &|d| {
        edit_json(&d.join("adapter_config.json"), |v| v["peft_type"] = json!("IA3"));
    });
    run_cases(cases);
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

#[test]
fn broken_data_is_named_with_file_line_and_what_was_expected() {
    let ws = Workspace::new();
    let (llama, bert) = (ws.path("llama"), ws.path("bert"));
    let mut cases = Vec::new();
    let mut data_case = |name: &'static str, model: &str, files: &[(&str, Vec<u8>)], expect: &[&str]| {
        let dir = ws.root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (f, bytes) in files {
            std::fs::write(dir.join(f), bytes).unwrap();
        }
        cases.push(case_args(name, train_lm(model, &s(&dir)), expect));
    };
    let good = "{\"text\": \"w4 w5\", \"label\": \"a\"}\n{\"text\": \"w6 w7\", \"label\": \"b\"}\n";
    let b = |t: &str| t.as_bytes().to_vec();
    data_case(
        "bad_json_line",
        &bert,
        &[("train.jsonl", b(&format!("{good}{{\"text\": \"w8\", \"label\": }}\n")))],
        &["train.jsonl", "line 3", "invalid JSON"],
    );
    data_case(
        "missing_label",
        &bert,
        &[("train.jsonl", b(&format!("{good}{{\"text\": \"w8\", \"label\": \"a\"}}\n{{\"text\": \"w9\"}}\n")))],
        &["train.jsonl", "line 4", "`label` is missing"],
    );
    data_case(
        "mistyped_text",
        &bert,
        &[("train.jsonl", b(&format!("{good}{{\"text\": 3, \"label\": \"a\"}}\n")))],
        &["train.jsonl", "line 3", "`text` must be a string"],
    );
    data_case("empty_file", &bert, &[("train.jsonl", Vec::new())], &["train.jsonl", "no examples"]);
    data_case(
        "not_utf8",
        &bert,
        &[("train.jsonl", [b(good), vec![b'{', 0xff, 0xfe, b'}', b'\n']].concat())],
        &["train.jsonl", "line 3", "UTF-8"],
    );
    data_case(
        "ragged_csv",
        &bert,
        &[("train.csv", b("text,label\nw4 w5,a\nw6,b,extra\n"))],
        &["train.csv", "line 3", "3 fields", "header row has 2"],
    );
    data_case(
        "one_class_only",
        &bert,
        &[("train.jsonl", b("{\"text\": \"w4\", \"label\": \"a\"}\n{\"text\": \"w5\", \"label\": \"a\"}\n"))],
        &["train.jsonl", "the label [\"a\"]", "at least two labels"],
    );
    data_case(
        "unseen_test_label",
        &bert,
        &[("train.jsonl", b(good)), ("test.jsonl", b("{\"text\": \"w4\", \"label\": \"zebra\"}\n"))],
        &["test.jsonl", "line 1", "`zebra`", "not in the training labels"],
    );
    let huge = format!("{{\"text\": \"{}", "w5 ".repeat(2_000_000));
    data_case(
        "megabyte_line",
        &bert,
        &[("train.jsonl", b(&format!("{good}{huge}\n")))],
        &["train.jsonl", "line 3", "invalid JSON"],
    );
    data_case("no_train_file", &bert, &[("valid.jsonl", b(good))], &["train.jsonl or train.csv"]);
    data_case(
        "lm_mixed_formats",
        &llama,
        &[("train.jsonl", b("{\"text\": \"w4 w5\"}\n{\"prompt\": \"w4\", \"completion\": \" w5\"}\n"))],
        &["train.jsonl", "line 2", "line 1"],
    );
    data_case(
        "lm_bad_role",
        &llama,
        &[("train.jsonl", b("{\"messages\": [{\"role\": \"wizard\", \"content\": \"w4\"}]}\n"))],
        &["train.jsonl", "line 1", "wizard", "user"],
    );
    run_cases(cases);
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_settings_name_the_flag_or_key_and_the_valid_range() {
    let ws = Workspace::new();
    let (llama, data) = (ws.path("llama"), ws.path("lm_data"));
    let base = train_lm(&llama, &data);
    let toml = |name: &str, text: &str| {
        let f = ws.root.join(name);
        std::fs::write(&f, text).unwrap();
        s(&f)
    };
    let bad_toml = toml("bad.toml", "lr = 5e-4\nbatch_size = = 3\n");
    let unknown_key = toml("unknown.toml", "lr = 5e-4\nlearning_rate = 3\n");
    let wrong_type = toml("wrong_type.toml", "batch_size = \"eight\"\n");
    let cases = vec![
        case_args("toml_syntax", with(base.clone(), &["--config", &bad_toml]), &["bad.toml", "line 2"]),
        case_args(
            "toml_unknown_key",
            with(base.clone(), &["--config", &unknown_key]),
            &["unknown.toml", "learning_rate"],
        ),
        case_args(
            "toml_wrong_type",
            with(base.clone(), &["--config", &wrong_type]),
            &["wrong_type.toml", "batch_size", "eight"],
        ),
        case_args("negative_lr", with(base.clone(), &["--lr=-1e-3"]), &["--lr", "positive"]),
        case_args("nan_lr", with(base.clone(), &["--lr", "NaN"]), &["--lr", "NaN", "positive"]),
        case_args("zero_batch", with(base.clone(), &["--batch-size", "0"]), &["--batch-size", "at least 1"]),
        case_args("rank_zero", with(base.clone(), &["--lora-r", "0"]), &["--lora-r", "at least 1"]),
        case_args("lora_dropout_one", with(base.clone(), &["--lora-dropout", "1"]), &["--lora-dropout", "[0, 1)"]),
        case_args("warmup_over_one", with(base.clone(), &["--warmup-ratio", "2"]), &["--warmup-ratio", "[0, 1]"]),
        case_args("max_len_beyond_model", with(base.clone(), &["--max-len", "1000"]), &["--max-len", "1000", "64"]),
        case_args("unknown_target_module", with(base.clone(), &["--target-modules", "qkv"]), &["qkv", "q_proj"]),
        case_args(
            "classifier_over_memory_budget",
            with(train_lm(&ws.path("bert"), &ws.path("cls_data")), &["--gpu-memory", "0"]),
            &["--gpu-memory", "lower --batch-size (now 8)"],
        ),
        case_args("lm_over_memory_budget", with(base.clone(), &["--gpu-memory", "0"]), &["--gpu-memory", "--quantize"]),
        case_args(
            "resume_without_run",
            ["train", "--resume", &ws.path("nowhere")].map(String::from).to_vec(),
            &["nowhere", "config.toml"],
        ),
    ];
    run_cases(cases);
}

// ---------------------------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------------------------

/// An existing run folder, export, cleaned file or report is never replaced without
/// `--overwrite` (what `--overwrite` replaces: `overwrite_replaces_only_what_kiln_wrote`).
#[test]
fn existing_outputs_need_overwrite() {
    let ws = Workspace::new();
    let (llama, data) = (ws.path("llama"), ws.path("lm_data"));
    let taken = ws.root.join("taken");
    std::fs::create_dir_all(taken.join("checkpoints/step-0000007")).unwrap();
    std::fs::write(taken.join("precious.txt"), "keep me").unwrap();
    let rows = ws.root.join("rows.jsonl");
    std::fs::write(&rows, "{\"text\": \"w4 w5\", \"label\": \"a\"}\n{\"text\": \"w6\", \"label\": \"b\"}\n").unwrap();
    let report = ws.root.join("report.md");
    std::fs::write(&report, "an old report").unwrap();
    let split_out = ws.root.join("split");
    std::fs::create_dir_all(&split_out).unwrap();
    std::fs::write(split_out.join("train.jsonl"), "old").unwrap();
    std::fs::write(split_out.join("rows.jsonl"), "old").unwrap();
    let t = s(&taken);
    run_cases(vec![
        case_args("train_into_existing", with(train_lm(&llama, &data), &["--out", &t]), &["taken", "--overwrite"]),
        case(
            "export_into_existing",
            &["export", "--merge", "--model", &llama, "--lora", &ws.path("adapter"), "--out", &t],
            &["taken", "--overwrite"],
        ),
        case(
            "clean_into_existing",
            &["data", "clean", &s(&rows), "--out", &s(&split_out)],
            &["rows.jsonl", "--overwrite"],
        ),
        case(
            "split_into_existing",
            &["data", "split", &s(&rows), "--out", &s(&split_out)],
            &["train.jsonl", "--overwrite"],
        ),
        case(
            "report_over_existing",
            &["data", "inspect", &s(&rows), "--report", &s(&report)],
            &["report.md", "--overwrite"],
        ),
        case(
            "import_over_existing",
            &["data", "import", "spamassassin", &ws.path("nowhere"), "--out", &s(&report)],
            &["report.md", "--overwrite"],
        ),
    ]);
    assert_eq!(std::fs::read_to_string(taken.join("precious.txt")).unwrap(), "keep me");
    assert_eq!(std::fs::read_to_string(&report).unwrap(), "an old report");
    assert_eq!(std::fs::read_to_string(split_out.join("train.jsonl")).unwrap(), "old");
}

fn kiln_output(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).env("XDG_RUNTIME_DIR", "/tmp").output().unwrap()
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// `--overwrite` replaces only a folder kiln wrote (it carries a `.kiln` marker): a user's own
/// folder given to `--out` is refused, train's and export's alike, with nothing in it touched. A
/// kiln run folder is replaced whole: the old run's checkpoint and a file the user added to it
/// go, and nothing is left beside it.
#[test]
fn overwrite_replaces_only_what_kiln_wrote() {
    let ws = Workspace::new();
    let (llama, data) = (ws.path("llama"), ws.path("lm_data"));
    let users = ws.root.join("users");
    std::fs::create_dir_all(users.join("checkpoints/step-0000007")).unwrap();
    std::fs::write(users.join("precious.txt"), "keep me").unwrap();
    let u = s(&users);
    run_cases(vec![
        case_args(
            "train_overwrite_a_users_folder",
            with(train_lm(&llama, &data), &["--out", &u, "--overwrite"]),
            &["--out", "users", "not a kiln run or export folder", "remove it yourself"],
        ),
        case(
            "export_overwrite_a_users_folder",
            &["export", "--merge", "--model", &llama, "--lora", &ws.path("adapter"), "--out", &u, "--overwrite"],
            &["--out", "users", "not a kiln run or export folder", "remove it yourself"],
        ),
    ]);
    assert_eq!(names(&users), ["checkpoints", "precious.txt"]);
    assert_eq!(std::fs::read_to_string(users.join("precious.txt")).unwrap(), "keep me");

    let run = ws.root.join("runs").join("run");
    let r = s(&run);
    let out = kiln_output(&with(train_lm(&llama, &data), &["--out", &r, "--save-every", "1"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(run.join(".kiln").is_file() && run.join("checkpoints/step-0000001").is_dir());
    std::fs::write(run.join("notes.txt"), "a note added to the run").unwrap();
    let out = kiln_output(&with(train_lm(&llama, &data), &["--out", &r, "--overwrite"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inside = names(&run);
    assert!(!inside.contains(&"notes.txt".to_string()) && !inside.contains(&"checkpoints".to_string()), "{inside:?}");
    assert!(run.join(".kiln").is_file() && run.join("adapter/adapter_model.safetensors").is_file());
    assert_eq!(names(&ws.root.join("runs")), ["run"], "nothing left beside the run (old folder, lock)");

    // An export is marked too, so exporting again with --overwrite replaces it whole.
    let export = ws.root.join("export");
    let args: Vec<String> =
        ["export", "--merge", "--model", &llama, "--lora", &ws.path("adapter"), "--out", &s(&export)]
            .map(String::from)
            .to_vec();
    assert!(kiln_output(&args).status.success());
    std::fs::write(export.join("extra.txt"), "x").unwrap();
    let out = kiln_output(&with(args, &["--overwrite"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(export.join(".kiln").is_file() && !export.join("extra.txt").exists(), "{:?}", names(&export));
}

/// A run that fails after its folder exists removes it when no checkpoint was written (no
/// folder left behind, the message is the failure's own); with a checkpoint the folder stays
/// and the message points at it. A run refused in validation leaves an existing run untouched.
#[test]
fn a_failed_run_leaves_no_folder_unless_it_has_a_checkpoint() {
    let ws = Workspace::new();
    let diverging = |out: &Path, save_every: &str| -> Vec<String> {
        ["train", "--model", &ws.path("bert"), "--data", &ws.path("cls_data"), "--strategy", "full"]
            .iter()
            .chain(&[
                "--lr",
                "1e38",
                "--steps",
                "6",
                "--max-grad-norm",
                "0",
                "--warmup-ratio",
                "0",
                "--eval-every",
                "0",
            ])
            .chain(&["--batch-size", "8", "--save-every", save_every, "--out", out.to_str().unwrap()])
            .map(|a| a.to_string())
            .collect()
    };
    let gone = ws.root.join("gone");
    let kept = ws.root.join("kept");
    run_cases(vec![
        case_args("diverged_without_checkpoint", diverging(&gone, "0"), &["loss became", "at step"]),
        case_args("diverged_with_checkpoint", diverging(&kept, "1"), &["loss became", "last good checkpoint"]),
    ]);
    assert!(!gone.exists(), "a failed run without a checkpoint left {:?}", names(&gone));
    assert!(kiln::train::checkpoint::list(&kept.join("checkpoints")).unwrap().pop().is_some());
    assert!(kept.join(".kiln").is_file());

    // A refusal in validation (here a --max-len past the positions) under --overwrite: the old
    // run stays as it was.
    let before = names(&kept);
    let (llama, data) = (ws.path("llama"), ws.path("lm_data"));
    run_cases(vec![case_args(
        "refused_overwrite_keeps_the_old_run",
        with(train_lm(&llama, &data), &["--out", &s(&kept), "--overwrite", "--max-len", "100000"]),
        &["--max-len"],
    )]);
    assert_eq!(names(&kept), before);
}

/// One writer per run folder: two `kiln train --overwrite --out SAME` started together give
/// one run and one refusal that names the holder's pid, every time, over 20 tries. The run
/// folder then holds exactly one run's metrics, and no lock file is left.
#[test]
fn two_trainings_on_one_folder_give_one_run_and_one_refusal() {
    let ws = Workspace::new();
    let run = ws.root.join("runs").join("same");
    let args = with(train_lm(&ws.path("llama"), &ws.path("lm_data")), &["--out", &s(&run), "--overwrite"]);
    let mut outcomes = Vec::new();
    for attempt in 0..20 {
        let (a, b) = (spawn_kiln(&args), spawn_kiln(&args));
        let (pa, pb) = (a.id(), b.id());
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let (ok, refused, holder) = match (a.status.success(), b.status.success()) {
            (true, false) => (&a, &b, pa),
            (false, true) => (&b, &a, pb),
            _ => panic!(
                "attempt {attempt}: exits {:?} and {:?}\n{}\n{}",
                a.status.code(),
                b.status.code(),
                String::from_utf8_lossy(&a.stderr),
                String::from_utf8_lossy(&b.stderr)
            ),
        };
        let message = String::from_utf8_lossy(&refused.stderr);
        let errors: Vec<&str> = message.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "attempt {attempt}: {message}");
        assert!(
            errors[0].contains("in use by another kiln") && errors[0].contains(&format!("pid {holder} ")),
            "attempt {attempt}: {message}"
        );
        assert_eq!(refused.status.code(), Some(1), "attempt {attempt}: {message}");
        assert!(ok.stderr.len() < 100_000);
        assert_eq!(logged_steps(&run), [1], "attempt {attempt}: one run's metrics");
        assert_eq!(names(run.parent().unwrap()), ["same"], "attempt {attempt}: a lock file or old folder left");
        outcomes.push(if pa == holder { 'a' } else { 'b' });
    }
    eprintln!("winners over 20 tries: {}", outcomes.iter().collect::<String>());
}

// ---------------------------------------------------------------------------------------------
// Numerical faults
// ---------------------------------------------------------------------------------------------

/// A NaN in one gradient shows in the global norm (computed on the GPU), and the per-tensor
/// norms kept beside it name that tensor, nearest the loss first.
#[test]
fn a_non_finite_gradient_is_named() {
    use kiln::models::load_causal_lm;
    use kiln::nn::LoraConfig;
    use kiln::train::optim::Optimizer;
    let gpu = common::gpu();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_tiny");
    let mut model = load_causal_lm(gpu, &fixture).unwrap();
    let lora = LoraConfig {
        r: 2,
        alpha: 4.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into()],
        use_rslora: false,
        use_dora: false,
    };
    model.add_lora(gpu, &lora, 0).unwrap();
    let poisoned = ["model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.1.self_attn.q_proj.lora_B.weight"];
    let mut names = Vec::new();
    model.visit_params(&mut |p| {
        if let Some(g) = &p.grad {
            let mut values = vec![0.01f32; g.numel()];
            if poisoned.contains(&p.name.as_str()) {
                values[g.numel() / 2] = if p.name.contains("lora_A") { f32::NAN } else { f32::INFINITY };
            }
            g.write_f32(gpu, &values).unwrap();
            names.push(p.name.clone());
        }
    });
    assert_eq!(names.len(), 4, "{names:?}");
    let mut opt = Optimizer::new(Default::default(), Some(1.0));
    opt.step(gpu, model.as_ref(), 1e-3).unwrap();
    assert!(!opt.last_grad_norm(gpu).unwrap().unwrap().is_finite());
    // Backward order: layer 1 (nearer the loss) before layer 0.
    assert_eq!(opt.non_finite_grads(gpu).unwrap(), [poisoned[1], poisoned[0]]);

    // A clean step afterwards: finite norm, nothing named.
    model.visit_params(&mut |p| {
        if let Some(g) = &p.grad {
            g.write_f32(gpu, &vec![0.5; g.numel()]).unwrap();
        }
    });
    opt.step(gpu, model.as_ref(), 1e-3).unwrap();
    let mut elements = 0;
    model.visit_params(&mut |p| elements += p.grad.as_ref().map_or(0, |g| g.numel()));
    let norm = opt.last_grad_norm(gpu).unwrap().unwrap();
    let expected = 0.5 * (elements as f32).sqrt();
    assert!((norm - expected).abs() < 1e-4 * expected, "norm {norm}, expected {expected}");
    assert!(opt.non_finite_grads(gpu).unwrap().is_empty());
}

/// A lost device (what a driver reset looks like to wgpu) is an error that says so, not a hang:
/// the work runs on its own thread and must come back within a minute.
#[test]
fn a_lost_device_is_reported_not_waited_on() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let gpu = kiln::Gpu::new(&kiln::gpu::AdapterChoice::from_flag_or_env(None)).expect("a GPU adapter");
        let t = kiln::Tensor::from_f32(&gpu, &[1.0, 2.0, 3.0], &[3]).unwrap();
        assert_eq!(t.to_f32_vec(&gpu).unwrap(), [1.0, 2.0, 3.0]);
        gpu.lose_device_for_tests();
        let _ = tx.send(t.to_f32_vec(&gpu).map_err(|e| e.to_string()));
    });
    let result = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("a readback on a lost device hung");
    let err = result.expect_err("a readback on a lost device succeeded");
    assert!(err.contains("was lost") && err.contains("--resume"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Fuzz regressions
// ---------------------------------------------------------------------------------------------

/// Every input the fuzzers found (and the hand-made hostile ones beside them) goes through its
/// reader without a panic.
#[test]
fn fuzz_findings_stay_fixed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut replayed = 0;
    for (target, read) in kiln::fuzz::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            read(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} fuzz findings");
    assert!(replayed > 0, "no fuzz findings under {}", root.display());
}

/// The seeds are real inputs: each parses, so the fuzzers and the mutations below start deep
/// inside the readers rather than at their first check.
#[test]
fn fuzz_seeds_are_valid_inputs() {
    use kiln::formats::gguf::GgufFile;
    let gguf = GgufFile::parse(kiln::fuzz::seeds("gguf").remove(0), "seed.gguf").unwrap();
    kiln::models::gguf_decoder::config_from_metadata(&gguf).unwrap();
    kiln::formats::tokenizer::GgufTokenizer::from_gguf(&gguf).unwrap();
    for t in &gguf.tensors {
        gguf.tensor_f32(&t.name).unwrap();
    }
    let st = kiln::formats::safetensors::SafetensorsSource::from_bytes(
        Path::new("seed.safetensors"),
        &kiln::fuzz::seeds("safetensors").remove(0),
    )
    .unwrap();
    assert_eq!(st.names().len(), 4);
    let tmp = tempfile::tempdir().unwrap();
    for (ext, seeds) in [("jsonl", kiln::fuzz::seeds("jsonl")), ("csv", kiln::fuzz::seeds("csv"))] {
        for (i, seed) in seeds.iter().enumerate() {
            let f = tmp.path().join(format!("{i}.{ext}"));
            std::fs::write(&f, seed).unwrap();
            kiln::curate::rows::read_rows(&f).unwrap();
        }
    }
}

/// Seeded mutations of the seed corpus (bit flips, truncations, huge lengths written over any
/// 8 bytes, spliced copies): a cheap, deterministic stand-in for the fuzzers that runs in CI.
#[test]
fn mutated_seeds_never_panic() {
    const MUTANTS_PER_SEED: usize = 1500;
    let mut rng = kiln::util::SplitMix64::new(0x5EED);
    let mut total = 0;
    for (target, read) in kiln::fuzz::TARGETS {
        for seed in kiln::fuzz::seeds(target) {
            for i in 0..MUTANTS_PER_SEED {
                let mutant = mutate(&seed, &mut rng);
                let result = std::panic::catch_unwind(|| read(&mutant));
                if result.is_err() {
                    let keep = std::env::temp_dir().join(format!("kiln-mutant-{target}-{i}"));
                    std::fs::write(&keep, &mutant).unwrap();
                    panic!("{target}: mutant {i} panicked; input saved as {}", keep.display());
                }
                total += 1;
            }
        }
    }
    eprintln!("{total} mutants read without a panic");
}

fn mutate(seed: &[u8], rng: &mut kiln::util::SplitMix64) -> Vec<u8> {
    let mut m = seed.to_vec();
    let below = |rng: &mut kiln::util::SplitMix64, n: usize| rng.below(n.max(1));
    for _ in 0..1 + below(rng, 4) {
        if m.is_empty() {
            m.push(0);
        }
        match below(rng, 6) {
            0 => {
                let i = below(rng, m.len());
                m[i] ^= 1 << below(rng, 8);
            }
            1 => m.truncate(below(rng, m.len())),
            2 if m.len() >= 8 => {
                let i = below(rng, m.len() - 7);
                let v = [u64::MAX, 1 << 32, 1 << 62, 0, 0x7fff_ffff][below(rng, 5)];
                m[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            3 => {
                let i = below(rng, m.len());
                m[i] = [0, 0xff, b'"', b'\n', b'{', b',', b'='][below(rng, 7)];
            }
            4 => {
                let (a, b) = (below(rng, m.len()), below(rng, m.len()));
                let chunk = m[a.min(b)..a.max(b)].to_vec();
                let at = below(rng, m.len());
                m.splice(at..at, chunk);
            }
            _ => {
                let i = below(rng, m.len());
                m.remove(i);
            }
        }
    }
    m
}

// ---------------------------------------------------------------------------------------------
// Interruption
// ---------------------------------------------------------------------------------------------

fn spawn_kiln(args: &[String]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("XDG_RUNTIME_DIR", "/tmp")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The steps of metrics.jsonl's complete `step` events, in file order.
fn logged_steps(run: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "step")
        .map(|e| e["step"].as_u64().unwrap())
        .collect()
}

/// Waits until the run has logged `n` steps; the child must still be running.
fn wait_for_steps(child: &mut std::process::Child, run: &Path, n: usize) {
    let start = std::time::Instant::now();
    while logged_steps(run).len() < n {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before logging {n} steps");
        }
        assert!(start.elapsed().as_secs() < 300, "no {n} steps within 5 minutes");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn signal(child: &std::process::Child, sig: &str) {
    let status = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill {sig} failed");
}

fn interrupt_args(ws: &Workspace, run: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = train_lm(&ws.path("llama"), &ws.path("lm_data"));
    let steps = args.iter().position(|a| a == "--steps").unwrap();
    args[steps + 1] = "60".into();
    with(args, &[&["--out", run.to_str().unwrap(), "--batch-size", "4", "--lr", "1e-2"], extra].concat())
}

fn resume(run: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["train", "--resume", run.to_str().unwrap()])
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .unwrap()
}

#[test]
fn ctrl_c_finishes_the_step_checkpoints_and_resumes() {
    let ws = Workspace::new();
    let run = ws.root.join("run");
    // Checkpoints on, but none periodic before the interrupt: the one found is the interrupt's.
    let mut child = spawn_kiln(&interrupt_args(&ws, &run, &["--save-every", "1000"]));
    wait_for_steps(&mut child, &run, 5);
    signal(&child, "-INT");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted after step") && stderr.contains("--resume"), "{stderr}");
    let steps = logged_steps(&run);
    let (saved, dir) = kiln::train::checkpoint::list(&run.join("checkpoints")).unwrap().pop().expect("a checkpoint");
    assert_eq!(saved as u64, *steps.last().unwrap(), "the checkpoint is of the last finished step");
    assert_eq!(kiln::train::checkpoint::read_state(&dir).unwrap().step, saved);

    let out = resume(&run);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(logged_steps(&run), (1..=60).collect::<Vec<u64>>(), "every step once, in order");
    assert!(run.join("adapter/adapter_model.safetensors").is_file());
}

#[test]
fn kill_9_at_random_moments_always_leaves_a_resumable_checkpoint() {
    let ws = Workspace::new();
    let run = ws.root.join("run");
    let mut rng = kiln::util::SplitMix64::new(9);
    // A checkpoint every step, so kills land in the middle of writing one as well.
    let mut args = interrupt_args(&ws, &run, &["--save-every", "1", "--keep-checkpoints", "2"]);
    let mut kills = Vec::new();
    for round in 0..3 {
        let mut child = spawn_kiln(&args);
        let before = logged_steps(&run).len();
        wait_for_steps(&mut child, &run, before + 2 + rng.below(6));
        std::thread::sleep(std::time::Duration::from_millis(rng.below(150) as u64));
        signal(&child, "-KILL");
        child.wait().unwrap();
        let (step, dir) = kiln::train::checkpoint::list(&run.join("checkpoints"))
            .unwrap()
            .pop()
            .unwrap_or_else(|| panic!("round {round}: no complete checkpoint"));
        assert_eq!(kiln::train::checkpoint::read_state(&dir).unwrap().step, step, "round {round}");
        kills.push(step);
        args = vec!["train".into(), "--resume".into(), run.to_str().unwrap().into()];
    }
    eprintln!("killed with checkpoints at steps {kills:?}");
    let out = resume(&run);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(logged_steps(&run), (1..=60).collect::<Vec<u64>>(), "every step once, in order");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["steps"], 60, "{report}");
}

/// A lock file left by a process that was killed (no one holds its OS lock any more) does not
/// block the next run: it is reported, naming the dead holder, and taken over; none is left.
#[test]
fn a_stale_lock_is_reported_and_taken_over() {
    let ws = Workspace::new();
    let run = ws.root.join("run");
    let lock = kiln::util::lock::lock_path(&run);
    std::fs::write(&lock, "pid 999999999\nhost elsewhere\nstarted 1700000000\nwhat kiln train\n").unwrap();
    let out = kiln_output(&with(train_lm(&ws.path("llama"), &ws.path("lm_data")), &["--out", &s(&run)]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("took over the lock") && stderr.contains("pid 999999999 on host elsewhere"), "{stderr}");
    assert!(!lock.exists() && run.join("adapter/adapter_model.safetensors").is_file());
}
