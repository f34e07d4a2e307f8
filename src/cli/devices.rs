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
            "    max buffer {} MiB, max storage binding {} MiB, workgroup storage {} KiB, {} invocations/workgroup, matmul tile {}",
            r.max_buffer_size >> 20,
            r.max_storage_buffer_binding_size >> 20,
            r.max_compute_workgroup_storage_size >> 10,
            r.max_compute_invocations_per_workgroup,
            r.matmul_tile
        );
    }
    Ok(())
}
