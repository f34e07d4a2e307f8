//! Tokenizers and chat templates against transformers, on the tiny tokenizers of
//! `tests/fixtures/tokenizers/` (`scripts/tokenizer_fixtures.py`): each family's real
//! pre-tokenizer (Llama 3's and Qwen2's split regexes, SmolLM's digits, GPT-2's regex, a
//! Llama-2-style SentencePiece BPE) with a vocabulary of a few hundred merges, read from the
//! Hugging Face folder and from the same vocabulary written as GGUF metadata; and the chat
//! templates of Llama 3.2, Qwen2.5, Qwen3, Mistral, Phi-3 and SmolLM2 (ChatML) rendered and
//! tokenized as `apply_chat_template(tokenize=True)` does. No GPU is needed.

use super::*;

use kiln::data::lm::{Message, PromptFormat, Record, Role, tokenize};
use kiln::formats::gguf::GgufFile;
use kiln::formats::tokenizer::{GgufTokenizer, HfTokenizer};
use serde_json::Value;

const BYTE_LEVEL: [&str; 4] = ["llama3", "qwen2", "smollm", "gpt2"];
const TEMPLATES: [&str; 6] = ["llama3.2", "qwen2.5", "qwen3", "mistral", "phi3", "chatml"];

fn tokenizers_dir() -> PathBuf {
    fixture("tokenizers")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn id_lists(v: &Value) -> Vec<Vec<u32>> {
    v.as_array().unwrap().iter().map(ids).collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

/// The pieces `tok`'s pre-tokenizer cuts `text` into, in the byte-level spelling.
fn pre_tokens(tok: &::tokenizers::Tokenizer, text: &str) -> Vec<String> {
    use ::tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let mut s = PreTokenizedString::from(text);
    tok.get_pre_tokenizer().unwrap().pre_tokenize(&mut s).unwrap();
    s.get_splits(OffsetReferential::Original, OffsetType::Byte).into_iter().map(|(p, _, _)| p.to_string()).collect()
}

/// The regexes themselves: a tiny vocabulary may have no merge across a cut where two
/// pre-tokenizers differ, so ids alone could agree by luck.
fn check_pre_tokens(what: &str, tok: &::tokenizers::Tokenizer, texts: &[String], want: &Value) {
    let want: Vec<Vec<String>> = want.as_array().unwrap().iter().map(strings).collect();
    for (t, w) in texts.iter().zip(&want) {
        assert_eq!(&pre_tokens(tok, t), w, "{what}: pre-tokens of {t:?}");
    }
    eprintln!("{what}: {} strings cut into transformers' pre-tokens", texts.len());
}

/// Prints each mismatch with the string, so a failure shows which text split differently.
fn check_ids(what: &str, texts: &[String], got: &[Vec<u32>], want: &[Vec<u32>]) {
    let bad: Vec<String> = texts
        .iter()
        .zip(got.iter().zip(want))
        .filter(|(_, (g, w))| g != w)
        .map(|(t, (g, w))| format!("{t:?}: kiln {g:?}, transformers {w:?}"))
        .collect();
    eprintln!("{what}: {} of {} strings give transformers' ids", texts.len() - bad.len(), texts.len());
    assert!(bad.is_empty(), "{what}:\n{}", bad.join("\n"));
}

#[test]
fn hf_folders_tokenize_as_transformers() {
    for name in BYTE_LEVEL.iter().chain(&["sp"]) {
        let dir = tokenizers_dir().join(name);
        let e = read_json(&dir.join("expected.json"));
        let texts = strings(&e["strings"]);
        let tok = HfTokenizer::open(&dir).unwrap();
        let got: Vec<Vec<u32>> =
            texts.iter().map(|t| tok.tokenizer.encode(t.as_str(), false).unwrap().get_ids().to_vec()).collect();
        check_ids(&format!("{name} tokenizer.json"), &texts, &got, &id_lists(&e["ids"]));
        // A text record starts with bos exactly when transformers adds one (tokenizer_config's
        // add_bos_token, else tokenizer.json's post-processor).
        let format = tok.prompt_format(0, name).unwrap();
        let with_special: Vec<Vec<u32>> =
            got.iter().map(|ids| format.bos().into_iter().chain(ids.clone()).collect()).collect();
        check_ids(&format!("{name} with special tokens"), &texts, &with_special, &id_lists(&e["ids_special"]));
        if *name != "sp" {
            for (t, ids) in texts.iter().zip(&got) {
                assert_eq!(&tok.tokenizer.decode(ids, false).unwrap(), t, "{name}: decoding {ids:?}");
            }
        }
    }
}

#[test]
fn gguf_vocabularies_tokenize_as_transformers() {
    for name in BYTE_LEVEL {
        let dir = tokenizers_dir().join(name);
        let e = read_json(&dir.join("expected.json"));
        let texts = strings(&e["strings"]);
        let file = GgufFile::open(&dir.join("tokenizer.gguf")).unwrap();
        assert_eq!(file.get_str("tokenizer.ggml.pre").unwrap(), e["pre"].as_str());
        let tok = GgufTokenizer::from_gguf(&file).unwrap();
        let got: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t, false).unwrap()).collect();
        // The family's own tokenizer.json, and transformers' GGUF loader on the same file.
        check_ids(&format!("{name} GGUF vs tokenizer.json"), &texts, &got, &id_lists(&e["ids"]));
        // transformers' GGUF loader builds a GPT2Tokenizer, whose default special token
        // `<|endoftext|>` it appends to a vocabulary that lacks it (an id past the model's
        // embedding); the file has no such token, and kiln spells the text out as the folder does.
        let n_tokens = file.require_str_array("tokenizer.ggml.tokens").unwrap().len() as u32;
        let theirs = id_lists(&e["gguf_ids"]);
        let in_file: Vec<usize> = (0..texts.len()).filter(|&i| theirs[i].iter().all(|&id| id < n_tokens)).collect();
        if in_file.len() < texts.len() {
            eprintln!(
                "{name}: {} strings left out where transformers' GGUF tokenizer uses a token the file lacks",
                texts.len() - in_file.len()
            );
        }
        let pick = |v: &[Vec<u32>]| -> Vec<Vec<u32>> { in_file.iter().map(|&i| v[i].clone()).collect() };
        let picked: Vec<String> = in_file.iter().map(|&i| texts[i].clone()).collect();
        check_ids(&format!("{name} GGUF vs transformers' GGUF"), &picked, &pick(&got), &pick(&theirs));
        // The file's pre-tokenizer against the folder's tokenizer.json as written.
        let folder = HfTokenizer::open(&dir).unwrap();
        for t in &texts {
            assert_eq!(pre_tokens(&tok.tokenizer, t), pre_tokens(&folder.tokenizer, t), "{name}: pre-tokens of {t:?}");
        }
        // And against transformers, except smollm: transformers' GPT2Tokenizer class (the one
        // SmolLM2's tokenizer_config.json names) and its GGUF loader cut with the GPT-2 regex,
        // where the tokenizer.json and llama.cpp split digits first. The ids agree, above,
        // because a vocabulary trained on split digits (this one, SmolLM2's 48900 merges) has no
        // merge of two digits.
        if name != "smollm" {
            check_pre_tokens(&format!("{name} GGUF vs tokenizer.json"), &tok.tokenizer, &texts, &e["pre_tokens"]);
            check_pre_tokens(
                &format!("{name} GGUF vs transformers' GGUF"),
                &tok.tokenizer,
                &texts,
                &e["gguf_pre_tokens"],
            );
        }
        let with_bos: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t, true).unwrap()).collect();
        check_ids(&format!("{name} GGUF add_bos_token"), &texts, &with_bos, &id_lists(&e["ids_special"]));
    }
}

/// A folder with the template's tokenizer_config.json over its tokenizer's tokenizer.json.
fn template_folder(name: &str) -> (tempfile::TempDir, Value) {
    let src = tokenizers_dir().join("templates").join(name);
    let e = read_json(&src.join("expected.json"));
    let tmp = tempfile::tempdir().unwrap();
    let tok_dir = tokenizers_dir().join(e["tokenizer"].as_str().unwrap());
    std::fs::copy(tok_dir.join("tokenizer.json"), tmp.path().join("tokenizer.json")).unwrap();
    std::fs::copy(src.join("tokenizer_config.json"), tmp.path().join("tokenizer_config.json")).unwrap();
    (tmp, e)
}

fn messages(v: &Value) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(Role::parse(m["role"].as_str().unwrap()).unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

fn kwargs(e: &Value) -> Vec<(String, String)> {
    e["kwargs"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect()
}

/// Renders and tokenizes `expected.json`'s conversation three ways and compares with
/// transformers: the prompt (add_generation_prompt), the same without, and the whole chat.
fn check_template(what: &str, format: &PromptFormat, tokenizer: &::tokenizers::Tokenizer, e: &Value) {
    let PromptFormat::Chat { template, .. } = format else { panic!("{what}: no chat template was read") };
    let all = messages(&e["messages"]);
    let kw = kwargs(e);
    let kw: Vec<(&str, &str)> = kw.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (msgs, gen_prompt, key) in [
        (&all[..all.len() - 1], true, "prompt"),
        (&all[..all.len() - 1], false, "no_generation"),
        (&all[..], false, "full"),
    ] {
        let text = template.render_with(msgs, gen_prompt, &kw).unwrap();
        assert_eq!(text, e[format!("{key}_text")].as_str().unwrap(), "{what}: {key} text");
        let got = tokenizer.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(got, ids(&e[format!("{key}_ids")]), "{what}: {key} ids");
    }
    eprintln!("{what}: prompt, prompt without generation header and whole chat equal apply_chat_template's");
}

#[test]
fn chat_templates_render_and_tokenize_as_transformers() {
    for name in TEMPLATES {
        let (dir, e) = template_folder(name);
        let tok = HfTokenizer::open(dir.path()).unwrap();
        let format = tok.prompt_format(e["eos_id"].as_u64().unwrap() as u32, name).unwrap();
        check_template(&format!("{name} (tokenizer_config.json)"), &format, &tok.tokenizer, &e);
    }
}

#[test]
fn gguf_chat_templates_render_and_tokenize_as_transformers() {
    let mut checked = 0;
    for name in BYTE_LEVEL {
        let dir = tokenizers_dir().join(name);
        let tok_e = read_json(&dir.join("expected.json"));
        let path = dir.join("tokenizer.gguf");
        let tok = GgufTokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
        let format = tok.prompt_format(&path, name).unwrap();
        let Some(template) = tok_e["template"].as_str() else {
            assert!(matches!(format, PromptFormat::Plain { .. }), "{name}: no template in the file, plain format");
            continue;
        };
        let e = read_json(&tokenizers_dir().join("templates").join(template).join("expected.json"));
        check_template(&format!("{template} (GGUF tokenizer.chat_template)"), &format, &tok.tokenizer, &e);
        checked += 1;
    }
    assert_eq!(checked, 3, "llama3, qwen2 and smollm carry templates");
}

/// Training on a chat: the ids are the whole rendered chat's; each assistant turn is trained from
/// right after its generation prompt (whose ids are a prefix of the chat's, so generation starts
/// where training did) through the template's end-of-turn token, and nothing else is.
#[test]
fn chat_records_train_only_the_assistant_turns() {
    for name in TEMPLATES {
        let (dir, e) = template_folder(name);
        let tok = HfTokenizer::open(dir.path()).unwrap();
        let format = tok.prompt_format(e["eos_id"].as_u64().unwrap() as u32, name).unwrap();
        let PromptFormat::Chat { eos, end_of_turn, .. } = format else { panic!("{name}: no template") };
        let all = messages(&e["messages"]);
        let ex = tokenize(&Record::Chat(all.clone()), &tok.tokenizer, &format, 4096).unwrap();
        let whole = format.render_chat(&all, false).unwrap();
        assert_eq!(ex.ids, tok.tokenizer.encode(whole.as_str(), false).unwrap().get_ids(), "{name}: ids");

        let mut starts = Vec::new();
        for (i, m) in all.iter().enumerate().filter(|(_, m)| m.role == Role::Assistant) {
            let prompt = format.render_chat(&all[..i], true).unwrap();
            let p = tok.tokenizer.encode(prompt.as_str(), false).unwrap().get_ids().to_vec();
            assert_eq!(&ex.ids[..p.len()], &p[..], "{name}: the prompt before {:?} tokenizes as a prefix", m.content);
            assert!(!ex.loss_mask[p.len() - 1] && ex.loss_mask[p.len()], "{name}: training starts after the prompt");
            starts.push(p.len());
        }
        // Each trained run starts at a prompt's end and ends with the end-of-turn token.
        let mut runs = Vec::new();
        let mut t = 0;
        while t < ex.ids.len() {
            if ex.loss_mask[t] {
                let s = t;
                while t < ex.ids.len() && ex.loss_mask[t] {
                    t += 1;
                }
                runs.push((s, t));
            } else {
                t += 1;
            }
        }
        assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), starts, "{name}: trained runs {runs:?}");
        for &(_, end) in &runs {
            let last = ex.ids[end - 1];
            assert!(last == end_of_turn || last == eos, "{name}: a turn ends with {last}, not {end_of_turn}/{eos}");
        }
        eprintln!("{name}: {} assistant turns trained, {} of {} tokens", runs.len(), ex.target_count(), ex.ids.len());
    }
}
