//! `kiln bench`: time every kernel, print GFLOP/s or GB/s and the % of the rooflines measured
//! in the same run. `--tune` times the matmul tile candidates and split-K policies and caches
//! the best of each per adapter.
//! `--step MODEL` times whole training steps instead, and `--profile` shows where they go.

use std::path::PathBuf;

use crate::bench::step::{StepBench, StepFigure, StepModel, StepShape};
use crate::bench::{self, Figure, Scale};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Profile};
use crate::kernels::matmul::{self, Matmul};
use crate::kernels::matmul_coop;
use crate::kernels::workgroup_reduce;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  kiln bench\n  kiln bench --tune\n  kiln bench --json --only matmul,attention\n  kiln bench --step smollm2 --scale small --profile --plot profile.png"
)]
pub struct BenchArgs {
    #[command(flatten)]
    pub adapter: super::AdapterArgs,
    /// Time the matmul tile candidates at --tune-size³ and on a rank-8 LoRA product, then the
    /// split-K policies on the steps' starved products, and cache the fastest of each for this
    /// adapter.
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
    /// Time whole training steps of this model (random weights of its real shape) instead of kernels
    #[arg(long, value_enum)]
    pub step: Option<StepModel>,
    /// Measured steps of --step; 0 builds the model and prints its memory estimate with and
    /// without gradient checkpointing, running nothing
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// With --step: checkpoint every block (recompute activations in backward)
    #[arg(long)]
    pub grad_checkpoint: bool,
    /// With --step: hold the decoder's linear weights in this type (f16, bf16, q4_0, ...) instead
    /// of f32 (laptop: q4_0)
    #[arg(long, value_enum)]
    pub base: Option<crate::quant::QuantType>,
    /// Steps run before measuring (the first compiles pipelines and fills the buffer pool)
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// With --step: log every dispatch of the measured steps; a table by kernel and family on stderr
    #[arg(long)]
    pub profile: bool,
    /// With --profile: time each dispatch on the GPU with timestamp queries where the adapter has
    /// them (each dispatch then gets a compute pass of its own)
    #[arg(long)]
    pub gpu_times: bool,
    /// With --profile: write a PNG of the time per kernel family, stacked, one bar per step
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.tune && args.tune_size <= matmul::SHALLOW_K {
        let why = format!(
            "{} is too small: --tune times the deep products' tile on size³, and deep means more than {}",
            args.tune_size,
            matmul::SHALLOW_K
        );
        return Err(Error::invalid("--tune-size", why));
    }
    let gpu = args.adapter.open()?;
    if args.tune {
        tune(&gpu, args.tune_size)?;
    }
    let scale = args.scale.unwrap_or_else(|| Scale::auto(&gpu));
    if let Some(model) = args.step {
        return run_step(&gpu, &args, model, scale);
    }
    if args.profile || args.plot.is_some() || args.gpu_times {
        return Err(Error::invalid("--profile", "profiles whole steps: add --step smollm2 or --step minilm"));
    }
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
    for mut case in bench::epilogue_cases(&gpu, scale)? {
        if wanted(&case.kernel) {
            record(bench::measure(&gpu, &mut case)?, &mut figures);
        }
    }
    for mut case in bench::split_k_cases(&gpu)? {
        if wanted(&case.kernel) {
            record(bench::measure(&gpu, &mut case)?, &mut figures);
        }
    }
    gpu.trim_pool();
    for mut case in bench::coop_cases(&gpu, scale)? {
        if wanted(&case.kernel) {
            record(bench::measure(&gpu, &mut case)?, &mut figures);
        }
    }
    gpu.trim_pool();
    if wanted("attention") {
        for shape in bench::attention_shapes(scale) {
            for mut case in bench::attention_cases(&gpu, shape)? {
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
    gpu.trim_pool();
    if ["batch_norm", "max_pool", "global_avg_pool"].iter().any(|k| wanted(k)) {
        for mut case in bench::cnn_cases(&gpu, scale)? {
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
            "matmul_tile": matmul::tile(&gpu).to_string(),
            "matmul_tile_shallow": matmul::shallow_tile(&gpu).to_string(),
            "split_k": matmul::split_k(&gpu).describe(),
            "precision": matmul_coop::describe(&gpu),
            "scale": format!("{scale:?}"),
            "copy_gbps": copy_gbps,
            "best_matmul_gflops": best,
            "figures": figures,
        });
        println!("{}", serde_json::to_string_pretty(&doc).expect("figures serialise"));
        return Ok(());
    }
    println!(
        "kiln bench on {} (matmul tiles {} and {} at most {} deep, {}, {} reductions, {}, scale {scale:?})",
        gpu.describe(),
        matmul::tile(&gpu),
        matmul::shallow_tile(&gpu),
        matmul::SHALLOW_K,
        matmul::split_k(&gpu).describe(),
        workgroup_reduce::reductions(&gpu).name(),
        matmul_coop::describe(&gpu)
    );
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

/// `--tune`: the deep products' tile at `size`³, the shallow ones' at LoRA's rank 8, then the
/// split-K policy; each best is cached for the adapter and used for the rest of the run.
fn tune(gpu: &Gpu, size: usize) -> Result<()> {
    // `tune_matmul` tunes the class of the product it is given, as does this loop.
    for mm in [Matmul::new(size, size, size), Matmul::new(2 * size, size, 8)] {
        let shallow = mm.k <= matmul::SHALLOW_K;
        let class = if shallow { "shallow" } else { "deep" };
        eprintln!("tuning the {class} products' matmul tile on {} at {}x{}x{}", gpu.describe(), mm.m, mm.n, mm.k);
        let ranked = bench::tune_matmul(gpu, mm, |tile, r| match r {
            Ok(g) => eprintln!("  {:<18} {g:8.1} GFLOP/s", tile.to_string()),
            Err(e) => eprintln!("  {:<18} failed: {e}", tile.to_string()),
        });
        if let Some(&(best, g)) = ranked.first() {
            let path = if shallow {
                matmul::set_shallow_tile(gpu, best);
                matmul::write_shallow_tune_cache(gpu.info(), best)?
            } else {
                matmul::set_tile(gpu, best);
                matmul::write_tune_cache(gpu.info(), best)?
            };
            eprintln!("best {best} ({g:.1} GFLOP/s), cached in {}", path.display());
        }
    }
    eprintln!("tuning split-K on the steps' products with too few tiles to fill a GPU (median of 3 rounds)");
    let ranked = bench::tune_split_k(gpu, |policy, r| match r {
        Ok(ms) => eprintln!("  {:<52} {ms:9.3} ms", policy.describe()),
        Err(e) => eprintln!("  {:<52} failed: {e}", policy.describe()),
    });
    if let Some((best, ms)) = ranked.first() {
        let path = matmul::write_split_k_cache(gpu.info(), *best)?;
        eprintln!("best: {} ({ms:.3} ms), cached in {}", best.describe(), path.display());
        matmul::set_split_k(gpu, *best);
    }
    Ok(())
}

fn run_step(gpu: &Gpu, args: &BenchArgs, model: StepModel, scale: Scale) -> Result<()> {
    if (args.plot.is_some() || args.gpu_times) && !args.profile {
        return Err(Error::invalid("--plot", "--plot and --gpu-times need --profile"));
    }
    let mut shape = StepShape::new(model, scale).with_checkpointing(args.grad_checkpoint);
    if let Some(kind) = args.base {
        shape = shape.with_base(kind);
    }
    eprintln!(
        "kiln bench --step on {}: {} (scale {scale:?}, matmul tiles {} and {} at most {} deep, {} reductions, {} matmul epilogues, {}, {})",
        gpu.describe(),
        shape.describe(),
        matmul::tile(gpu),
        matmul::shallow_tile(gpu),
        matmul::SHALLOW_K,
        workgroup_reduce::reductions(gpu).name(),
        matmul::fused_epilogues(gpu).name(),
        matmul::split_k(gpu).describe(),
        matmul_coop::describe(gpu)
    );
    let mut step = StepBench::new(gpu, shape)?;
    if args.steps == 0 {
        let e = step.estimate();
        println!("{}", e.clone().with_checkpointing(false).table());
        println!("{}", e.with_checkpointing(true).table());
        gpu.synchronize()?;
        println!("measured: the model holds {:.1} MiB of GPU buffers", gpu.allocated_bytes() as f64 / 1048576.0);
        return Ok(());
    }
    let profile = args.profile.then_some(args.gpu_times);
    let (figure, profiles) = bench::step::measure(gpu, &mut step, args.warmup, args.steps, profile)?;
    if args.profile {
        eprint!("{}", profile_table(&profiles));
    }
    if let Some(path) = &args.plot {
        let title = format!("{} step on {}", format!("{model:?}").to_lowercase(), gpu.info().name);
        bench::plot::profile_png(path, &profiles, &title)?;
        eprintln!("wrote {}", path.display());
    }
    if args.json {
        let doc = serde_json::json!({
            "figure": figure,
            "matmul_tile": matmul::tile(gpu).to_string(),
            "matmul_tile_shallow": matmul::shallow_tile(gpu).to_string(),
            "scale": format!("{scale:?}"),
            "profiles": profiles.iter().map(|p| serde_json::json!({
                "counts": p.counts, "timing": p.timing,
                "by_family": p.by_family(), "by_kernel": p.by_kernel(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc).expect("figures serialise"));
        return Ok(());
    }
    print!("{}", step_summary(&figure));
    Ok(())
}

/// The step figure as a few lines of text.
fn step_summary(f: &StepFigure) -> String {
    let c = |s: &crate::bench::step::StepSample| {
        format!(
            "{} dispatches, {} passes, {} buffers and {} bind groups created, {} KiB uploaded, {} submits",
            s.counts.dispatches,
            s.counts.passes,
            s.counts.buffers_created,
            s.counts.bind_groups_created,
            s.counts.bytes_uploaded >> 10,
            s.counts.submits
        )
    };
    let mut out = format!("kiln bench --step on {}\n{}\n", f.adapter, f.description);
    out += &format!(
        "median step {:.1} ms ({} steps: {}), {:.0} tokens/s\n",
        f.median_ms,
        f.steps.len(),
        f.steps.iter().map(|s| format!("{:.1}", s.ms)).collect::<Vec<_>>().join(", "),
        f.tokens_per_s
    );
    out += &format!("first step {:.1} ms: {}\n", f.first.ms, c(&f.first));
    out += &format!(
        "GPU memory: peak {:.1} MiB measured (the buffer pool), estimate {:.1} MiB (up to {:.1} with the pool's rounding)\n",
        f.peak_gpu_bytes as f64 / 1048576.0,
        f.estimate.total() as f64 / 1048576.0,
        f.estimate.total_with_pool() as f64 / 1048576.0
    );
    if let Some(last) = f.steps.last() {
        out += &format!("last step: {}\n", c(last));
        out += &format!(
            "CPU per step: {:.1} ms waiting on the GPU, {:.1} ms submitting\n",
            last.counts.wait_ns as f64 / 1e6,
            last.counts.submit_ns as f64 / 1e6
        );
    }
    out += &format!("host µs per dispatch (wall less waits and submits): {:.2}\n", f.host_us_per_dispatch);
    if let Some(r) = f.record_us_per_dispatch {
        out += &format!("recording µs per dispatch (inside Gpu::dispatch): {r:.2}\n");
    }
    out
}

/// The profiled steps by family and by kernel: dispatches, CPU recording and GPU time per step.
fn profile_table(profiles: &[Profile]) -> String {
    let Some(first) = profiles.first() else { return String::new() };
    let n = profiles.len() as f64;
    let mut out = format!("profile of {} step(s); GPU time: {}\n", profiles.len(), first.timing.describe());
    for (title, groups) in [
        ("family", profiles.iter().flat_map(|p| p.by_family()).collect::<Vec<_>>()),
        ("kernel", profiles.iter().flat_map(|p| p.by_kernel()).collect::<Vec<_>>()),
    ] {
        // Summed over the profiled steps, shown per step.
        let mut merged: Vec<crate::gpu::profile::Group> = Vec::new();
        for g in groups {
            match merged.iter_mut().find(|m| m.name == g.name) {
                Some(m) => {
                    m.dispatches += g.dispatches;
                    m.cpu_ns += g.cpu_ns;
                    if let Some(t) = g.gpu_ns {
                        *m.gpu_ns.get_or_insert(0.0) += t;
                    }
                }
                None => merged.push(g),
            }
        }
        merged
            .sort_by(|a, b| b.gpu_ns.unwrap_or(0.0).total_cmp(&a.gpu_ns.unwrap_or(0.0)).then(b.cpu_ns.cmp(&a.cpu_ns)));
        out += &format!(
            "{:<34} {:>10} {:>12} {:>10} {:>12}\n",
            title, "dispatches", "CPU ms/step", "CPU µs/d", "GPU ms/step"
        );
        for g in &merged {
            out += &format!(
                "{:<34} {:>10.0} {:>12.3} {:>10.2} {:>12}\n",
                g.name,
                g.dispatches as f64 / n,
                g.cpu_ns as f64 / 1e6 / n,
                g.cpu_ns as f64 / 1e3 / g.dispatches.max(1) as f64,
                g.gpu_ns.map_or("-".to_string(), |t| format!("{:.3}", t / 1e6 / n))
            );
        }
    }
    let c = &first.counts;
    out += &format!(
        "per step (first profiled): {} dispatches, {} passes, {} buffers, {} bind groups created, {} KiB uploaded, {} submits; CPU {:.2} ms recording, {:.2} ms submitting, {:.2} ms waiting\n",
        c.dispatches,
        c.passes,
        c.buffers_created,
        c.bind_groups_created,
        c.bytes_uploaded >> 10,
        c.submits,
        c.record_ns as f64 / 1e6,
        c.submit_ns as f64 / 1e6,
        c.wait_ns as f64 / 1e6
    );
    out
}
