//! `kiln bench`: time every kernel, print GFLOP/s or GB/s and the % of the rooflines measured
//! in the same run. `--tune` times the matmul tile candidates and caches the best per adapter.

use crate::bench::{self, Figure, Scale};
use crate::error::Result;
use crate::kernels::matmul::write_tune_cache;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  kiln bench\n  kiln bench --tune\n  kiln bench --json --only matmul,attention")]
pub struct BenchArgs {
    #[command(flatten)]
    pub adapter: super::AdapterArgs,
    /// Time the matmul tile candidates at --tune-size³ first and cache the fastest for this adapter.
    #[arg(long)]
    pub tune: bool,
    /// Square size used by --tune.
    #[arg(long, default_value_t = 512)]
    pub tune_size: usize,
    /// Problem sizes [default: small on a CPU adapter such as lavapipe, full on a GPU]
    #[arg(long, value_enum)]
    pub scale: Option<Scale>,
    /// Only kernels whose name starts with one of these (e.g. matmul,attention,adamw).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let gpu = args.adapter.open()?;
    if args.tune {
        eprintln!("tuning matmul tiles on {} at {}³", gpu.describe(), args.tune_size);
        let ranked = bench::tune_matmul(&gpu, args.tune_size, |tile, r| match r {
            Ok(g) => eprintln!("  {:<18} {g:8.1} GFLOP/s", tile.to_string()),
            Err(e) => eprintln!("  {:<18} failed: {e}", tile.to_string()),
        });
        if let Some((best, g)) = ranked.first() {
            let path = write_tune_cache(gpu.info(), *best)?;
            eprintln!("best {best} ({g:.1} GFLOP/s), cached in {}", path.display());
            gpu.set_matmul_tile(*best);
        }
    }
    let scale = args.scale.unwrap_or_else(|| Scale::auto(&gpu));
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| name.starts_with(o.as_str()));
    let mut figures: Vec<Figure> = Vec::new();
    let record = |f: Figure, figures: &mut Vec<Figure>| {
        eprintln!("  {:<20} {:<26} {:>10.3} ms", f.kernel, f.shape, f.median_ms);
        figures.push(f);
    };
    let copy =
        bench::measure(&gpu, &mut bench::copy_case(&gpu, if scale == Scale::Small { 64 << 20 } else { 512 << 20 })?)?;
    let copy_gbps = copy.gbps.unwrap_or(f64::NAN);
    record(copy, &mut figures);
    // Each group's tensors are dropped (and the pool trimmed) before the next is built.
    for mm in bench::matmul_shapes(scale) {
        let mut case = bench::matmul_case(&gpu, mm)?;
        if wanted(&case.kernel) {
            record(bench::measure(&gpu, &mut case)?, &mut figures);
        }
    }
    gpu.trim_pool();
    if wanted("attention") {
        for t in bench::attention_lengths(scale) {
            for mut case in bench::attention_cases(&gpu, t)? {
                record(bench::measure(&gpu, &mut case)?, &mut figures);
            }
            gpu.trim_pool();
        }
    }
    // The group runs when `--only` names it or one of its kernels (`qmatmul_q4_k`).
    if args.only.is_empty() || args.only.iter().any(|o| o.starts_with("qmatmul") || "qmatmul".starts_with(o.as_str())) {
        for mut case in bench::qmatmul_cases(&gpu, scale)? {
            if wanted(&case.kernel) {
                record(bench::measure(&gpu, &mut case)?, &mut figures);
            }
        }
        gpu.trim_pool();
    }
    for mut case in bench::memory_cases(&gpu, scale)? {
        if wanted(&case.kernel) {
            record(bench::measure(&gpu, &mut case)?, &mut figures);
        }
    }
    gpu.trim_pool();
    if wanted("conv2d") {
        for mut case in bench::conv_cases(&gpu, scale)? {
            if wanted(&case.kernel) {
                record(bench::measure(&gpu, &mut case)?, &mut figures);
            }
        }
    }
    let best = bench::apply_rooflines(&mut figures, copy_gbps);
    if args.json {
        let doc = serde_json::json!({
            "adapter": gpu.describe(),
            "driver": format!("{} {}", gpu.info().driver, gpu.info().driver_info),
            "matmul_tile": gpu.matmul_tile().to_string(),
            "scale": format!("{scale:?}"),
            "copy_gbps": copy_gbps,
            "best_matmul_gflops": best,
            "figures": figures,
        });
        println!("{}", serde_json::to_string_pretty(&doc).expect("figures serialise"));
        return Ok(());
    }
    println!("kiln bench on {} (matmul tile {}, scale {scale:?})", gpu.describe(), gpu.matmul_tile());
    println!("{:<20} {:<26} {:>10} {:>9} {:>8} {:>9}", "kernel", "shape", "median ms", "GFLOP/s", "GB/s", "roofline");
    let opt = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.1}{unit}"));
    for f in &figures {
        println!(
            "{:<20} {:<26} {:>10.3} {:>9} {:>8} {:>9}",
            f.kernel,
            f.shape,
            f.median_ms,
            opt(f.gflops, ""),
            opt(f.gbps, ""),
            opt(f.roofline_pct, "%")
        );
    }
    println!(
        "roofline: compute-bound rows against the best matmul ({best:.1} GFLOP/s), memory-bound rows against the device copy ({copy_gbps:.1} GB/s)"
    );
    Ok(())
}
