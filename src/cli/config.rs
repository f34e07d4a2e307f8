//! `--config run.toml`: a run's settings in a file. Each key is a flag of the subcommand
//! (`lr = 5e-4`, `strategy = "lora"`, `target_modules = ["query", "value"]`, `full = true`);
//! the file's flags are placed right after the subcommand, so flags given on the command line
//! come later and win. Every run folder gets the resolved settings back as `config.toml`, which
//! `--config` reads again.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The command line with the flags of any `--config FILE` inserted after the subcommand;
/// `--resume RUN` reads `RUN/config.toml` the same way.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(path) = config_path(&args).or_else(|| flag_value(&args, "--resume").map(|r| r.join("config.toml"))) else {
        return Ok(args);
    };
    let flags = flags_of(&path)?;
    if let Some(sub) = args.get(1).and_then(|a| a.to_str()) {
        check_flags(&path, sub, &flags)?;
    }
    let mut out = args;
    let at = out.len().min(2);
    out.splice(at..at, flags);
    Ok(out)
}

fn config_path(args: &[OsString]) -> Option<PathBuf> {
    flag_value(args, "--config")
}

/// The value of `flag` (`--flag V` or `--flag=V`), if given.
fn flag_value(args: &[OsString], flag: &str) -> Option<PathBuf> {
    // Not past `--`: what follows it is another command's flags (`kiln tune ... -- TRAIN FLAGS`).
    let mut it = args.iter().map(|a| a.to_string_lossy()).take_while(|a| a != "--");
    while let Some(a) = it.next() {
        if a == flag {
            return it.next().map(|p| PathBuf::from(p.as_ref()));
        }
        if let Some(p) = a.strip_prefix(&format!("{flag}=")) {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// The flags a TOML file stands for, in key order.
fn flags_of(path: &Path) -> Result<Vec<OsString>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| Error::Parse { path: path.to_path_buf(), message: e.to_string() })?;
    table_flags(path, &table)
}

/// The flags a table of settings stands for, in key order (`path` names it in errors).
pub fn table_flags(path: &Path, table: &toml::Table) -> Result<Vec<OsString>> {
    let bad = |key: &str, what: &str| Error::Parse {
        path: path.to_path_buf(),
        message: format!("`{key}`: {what} (keys are the subcommand's flags: strings, numbers, booleans, lists)"),
    };
    let mut flags = Vec::new();
    for (key, value) in table {
        if key == "config" {
            return Err(bad(key, "a config file cannot name another"));
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let scalar = |v: &toml::Value| -> Result<String> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                _ => Err(bad(key, "expected a string or a number")),
            }
        };
        match value {
            toml::Value::Boolean(true) => flags.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) if items.is_empty() => {}
            toml::Value::Array(items) => {
                let parts = items.iter().map(scalar).collect::<Result<Vec<_>>>()?;
                flags.push(flag.into());
                flags.push(parts.join(",").into());
            }
            toml::Value::Table(_) | toml::Value::Datetime(_) => return Err(bad(key, "not a flag value")),
            v => {
                flags.push(flag.into());
                flags.push(scalar(v)?.into());
            }
        }
    }
    Ok(flags)
}

/// Parses each key's flags alone as `kiln SUB --flag value`, so an unknown key or a value of the
/// wrong type is reported with the file and the key instead of as a bare command-line error.
fn check_flags(path: &Path, sub: &str, flags: &[OsString]) -> Result<()> {
    use clap::error::ErrorKind;
    let mut i = 0;
    while i < flags.len() {
        // A flag is followed by its value unless the next item is the next flag (booleans).
        let takes_value = flags.get(i + 1).is_some_and(|v| !v.to_string_lossy().starts_with("--"));
        let n = if takes_value { 2 } else { 1 };
        let one: Vec<OsString> =
            ["kiln".into(), sub.into()].into_iter().chain(flags[i..i + n].iter().cloned()).collect();
        if let Err(e) = super::Cli::try_parse_args(&one) {
            let key = flags[i].to_string_lossy().trim_start_matches("--").replace('-', "_");
            let message = match e.kind() {
                ErrorKind::UnknownArgument => {
                    format!(
                        "`{key}` is not a setting of `kiln {sub}` (the keys are its flags, see `kiln {sub} --help`)"
                    )
                }
                ErrorKind::InvalidValue
                | ErrorKind::ValueValidation
                | ErrorKind::NoEquals
                | ErrorKind::TooManyValues
                | ErrorKind::TooFewValues
                | ErrorKind::WrongNumberOfValues => {
                    let clap_says = e.to_string();
                    let first = clap_says.lines().next().unwrap_or_default().trim_start_matches("error: ");
                    format!("`{key}`: {first}")
                }
                _ => {
                    i += n;
                    continue;
                }
            };
            return Err(Error::Parse { path: path.to_path_buf(), message });
        }
        i += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_flags_go_after_the_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "lr = 0.001\nstrategy = \"top:2\"\ntarget_modules = [\"query\", \"value\"]\nfull = true\nno_restore_best = false\nepochs = 3\n").unwrap();
        let args: Vec<OsString> =
            ["kiln", "train", "--config", path.to_str().unwrap(), "--lr", "0.5"].iter().map(OsString::from).collect();
        let out: Vec<String> = expand(args).unwrap().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let p = path.to_str().unwrap();
        assert_eq!(
            out,
            [
                "kiln",
                "train",
                "--epochs",
                "3",
                "--full",
                "--lr",
                "0.001",
                "--strategy",
                "top:2",
                "--target-modules",
                "query,value",
                "--config",
                p,
                "--lr",
                "0.5"
            ]
        );
    }

    #[test]
    fn bad_config_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "[train]\nlr = 1\n").unwrap();
        let args: Vec<OsString> =
            ["kiln", "train", "--config", path.to_str().unwrap()].iter().map(OsString::from).collect();
        let err = expand(args).unwrap_err().to_string();
        assert!(err.contains("run.toml") && err.contains("`train`"), "{err}");
    }
}
