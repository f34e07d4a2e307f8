//! `kiln bench`: time every kernel, print GFLOP/s or GB/s and the % of the rooflines measured
//! in the same run. `--tune` times the matmul tile candidates and caches the best per adapter.

use crate::bench::{self, Figure};
use crate::error::Result;
use crate::kernels::matmul::{Matmul, write_tune_cache};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  kiln bench\n  kiln bench --tune\n  kiln bench --json --sizes 512,1024"
)]
pub struct BenchArgs {
    #[command(flatten)]
    pub adapter: super::AdapterArgs,
    /// Time the matmul tile candidates at --tune-size³ and cache the fastest for this adapter.
    #[arg(long)]
    pub tune: bool,
    /// Square size used by --tune.
    #[arg(long, default_value_t = 512)]
    pub tune_size: usize,
    /// Square matmul sizes to time.
    #[arg(long, value_delimiter = ',', default_values_t = [256usize, 512, 1024])]
    pub sizes: Vec<usize>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let gpu = args.adapter.open()?;
    if args.tune {
        eprintln!(
            "tuning matmul tiles on {} at {}³",
            gpu.describe(),
            args.tune_size
        );
        let ranked = bench::tune_matmul(&gpu, args.tune_size, |tile, r| match r {
            Ok(g) => eprintln!("  {tile:<18} {g:8.1} GFLOP/s"),
            Err(e) => eprintln!("  {tile:<18} failed: {e}"),
        });
        if let Some((best, g)) = ranked.first() {
            let path = write_tune_cache(gpu.info(), *best)?;
            eprintln!("best {best} ({g:.1} GFLOP/s), cached in {}", path.display());
            gpu.set_matmul_tile(*best);
        }
    }
    let mut figures: Vec<Figure> = Vec::new();
    let copy = bench::copy_bandwidth(&gpu, 64 << 20)?;
    let bandwidth = copy.gbps.unwrap_or(f64::NAN);
    figures.push(copy);
    let mut matmuls = Vec::new();
    for &s in &args.sizes {
        matmuls.push(Matmul::new(s, s, s));
    }
    // Transformer shapes: MiniLM's MLP (tokens × hidden × intermediate) and its backward.
    matmuls.push(Matmul::new(4096, 1536, 384));
    matmuls.push(Matmul::new(4096, 384, 1536).trans_b(true));
    matmuls.push(Matmul::new(384, 1536, 4096).trans_a(true));
    for mm in matmuls {
        figures.push(bench::matmul_figure(&gpu, mm)?);
        gpu.trim_pool();
    }
    let best_gflops = figures.iter().filter_map(|f| f.gflops).fold(0.0, f64::max);
    for f in &mut figures {
        if let Some(g) = f.gflops {
            f.roofline_pct = Some(100.0 * g / best_gflops);
        } else if let Some(b) = f.gbps {
            f.roofline_pct = Some(100.0 * b / bandwidth);
        }
    }
    if args.json {
        let doc = serde_json::json!({
            "adapter": gpu.describe(),
            "driver": format!("{} {}", gpu.info().driver, gpu.info().driver_info),
            "matmul_tile": gpu.matmul_tile().to_string(),
            "copy_gbps": bandwidth,
            "best_matmul_gflops": best_gflops,
            "figures": figures,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("figures serialise")
        );
        return Ok(());
    }
    println!(
        "kiln bench on {} (matmul tile {})",
        gpu.describe(),
        gpu.matmul_tile()
    );
    println!(
        "{:<22} {:<18} {:>10} {:>10} {:>9} {:>9}",
        "kernel", "shape", "median ms", "GFLOP/s", "GB/s", "roofline"
    );
    for f in &figures {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!(
            "{:<22} {:<18} {:>10.3} {:>10} {:>9} {:>8}%",
            f.kernel,
            f.shape,
            f.median_ms,
            opt(f.gflops),
            opt(f.gbps),
            opt(f.roofline_pct)
        );
    }
    Ok(())
}
