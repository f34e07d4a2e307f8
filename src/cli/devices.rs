//! `kiln devices`: what wgpu sees, in the order `--adapter INDEX` uses.

use serde::Serialize;

use crate::error::Result;
use crate::gpu::adapter;

#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  kiln devices --json")]
pub struct DevicesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    index: usize,
    name: String,
    backend: String,
    device_type: String,
    driver: String,
    max_buffer_size: u64,
    max_storage_buffer_binding_size: u64,
    max_compute_workgroup_storage_size: u32,
    max_compute_invocations_per_workgroup: u32,
    matmul_tile: String,
    /// The tile of products at most `matmul::SHALLOW_K` deep (LoRA's through its rank).
    matmul_tile_shallow: String,
    /// The kernel paths kiln picks on this adapter: its workgroup reductions (subgroup or
    /// barrier), whether matmul epilogues run fused, and its split-K policy.
    kernels: Vec<String>,
    /// What faster kernels could use, where the adapter has it: subgroup operations (with its
    /// subgroup sizes), f16 arithmetic, timestamp queries (the profiler's GPU times) and
    /// cooperative matrices (tensor cores).
    features: Vec<String>,
}

fn features(adapter: &wgpu::Adapter) -> Vec<String> {
    let have = adapter.features();
    let info = adapter.get_info();
    let mut out = Vec::new();
    if have.contains(wgpu::Features::SUBGROUP) {
        out.push(format!("subgroups {}-{}", info.subgroup_min_size, info.subgroup_max_size));
    }
    for (feature, name) in [
        (wgpu::Features::SHADER_F16, "shader-f16"),
        (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
        (wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX, "cooperative-matrix"),
    ] {
        if have.contains(feature) {
            out.push(name.to_string());
        }
    }
    out
}

/// What `Gpu::new` would pick for this adapter, environment overrides included.
fn kernel_paths(adapter: &wgpu::Adapter) -> Vec<String> {
    use crate::kernels::{matmul, matmul_coop, workgroup_reduce};
    let info = adapter.get_info();
    let reductions = workgroup_reduce::default_reductions(adapter.features().contains(wgpu::Features::SUBGROUP));
    let epilogues = matmul::default_fused_epilogues(info.device_type);
    let configs = adapter.cooperative_matrix_properties();
    let shape = matmul_coop::coop_shape_of(adapter.features(), &configs, &info, &adapter.limits());
    let precision = match (matmul_coop::default_precision(info.device_type, &shape), &shape) {
        (matmul_coop::Precision::F16, Ok(shape)) => matmul_coop::describe_f16(*shape),
        (_, Ok(shape)) => format!("f32 matmuls (--precision f16 would run {})", shape.describe()),
        (_, Err(why)) => format!("f32 matmuls (no f16: {why})"),
    };
    vec![
        format!("{} reductions", reductions.name()),
        format!("{} matmul epilogues", epilogues.name()),
        matmul::split_k_for_adapter(&info).describe(),
        precision,
    ]
}

pub fn run(args: DevicesArgs) -> Result<()> {
    let instance = adapter::instance();
    let rows: Vec<Row> = adapter::list(&instance)
        .iter()
        .enumerate()
        .map(|(index, a)| {
            let info = a.get_info();
            let l = a.limits();
            Row {
                index,
                name: info.name.clone(),
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
                max_buffer_size: l.max_buffer_size,
                max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
                max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
                max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
                matmul_tile: crate::kernels::matmul::tile_for_adapter(&info).to_string(),
                matmul_tile_shallow: crate::kernels::matmul::shallow_tile_for_adapter(&info).0.to_string(),
                kernels: kernel_paths(a),
                features: features(a),
            }
        })
        .collect();
    if rows.is_empty() {
        return Err(crate::Error::NoAdapter);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialise"));
        return Ok(());
    }
    for r in &rows {
        println!("[{}] {} ({}, {}) driver: {}", r.index, r.name, r.backend, r.device_type, r.driver);
        println!(
            "    max buffer {} MiB, max storage binding {} MiB, workgroup storage {} KiB, {} invocations/workgroup, matmul tile {} ({} at most {} deep)",
            r.max_buffer_size >> 20,
            r.max_storage_buffer_binding_size >> 20,
            r.max_compute_workgroup_storage_size >> 10,
            r.max_compute_invocations_per_workgroup,
            r.matmul_tile,
            r.matmul_tile_shallow,
            crate::kernels::matmul::SHALLOW_K
        );
        let features = if r.features.is_empty() {
            "none of subgroups, f16, timestamps, cooperative matrices".to_string()
        } else {
            r.features.join(", ")
        };
        println!("    features: {features}");
        println!("    kernels: {}", r.kernels.join(", "));
    }
    Ok(())
}
