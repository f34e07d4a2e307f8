//! The Rust side of each shader family: params struct, bindings, dispatch geometry.
//!
//! Every dispatch function has the same shape: check shapes (errors name the tensor), build
//! the `#[repr(C)]` params, bind buffers in the order of the shader's `@binding`s (listed in
//! the doc comment), compute workgroups with `div_ceil`, and record one labelled pass.

pub mod adamw;
pub mod attention;
pub mod batch_norm;
pub mod conv2d;
pub mod dora;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod layer_norm;
pub mod matmul;
pub mod matmul_coop;
pub mod pool2d;
pub mod qmatmul;
pub mod reduce;
pub mod rope;
pub mod softmax_xent;
pub mod workgroup_reduce;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tensor::Tensor;

/// WGSL that several shader files share, which they pull in with a `// #include "NAME"` line
/// ([`ShaderFile::expand`](crate::gpu::ShaderFile::expand)).
pub(crate) const SHADER_PARTS: &[(&str, &str)] = &[
    ("activations.wgsl", include_str!("../../shaders/common/activations.wgsl")),
    ("coop_tiles.wgsl", include_str!("../../shaders/common/coop_tiles.wgsl")),
    ("dropout_hash.wgsl", include_str!("../../shaders/common/dropout_hash.wgsl")),
    ("matmul_params.wgsl", include_str!("../../shaders/common/matmul_params.wgsl")),
    ("matmul_stage.wgsl", include_str!("../../shaders/common/matmul_stage.wgsl")),
    ("matmul_store.wgsl", include_str!("../../shaders/common/matmul_store.wgsl")),
    ("matmul_tiles.wgsl", include_str!("../../shaders/common/matmul_tiles.wgsl")),
    ("qmatmul_dequant.wgsl", include_str!("../../shaders/common/qmatmul_dequant.wgsl")),
];

macro_rules! shader {
    ($name:literal) => {
        $crate::gpu::ShaderFile {
            name: $name,
            source: include_str!(concat!("../../shaders/", $name, ".wgsl")),
            parts: $crate::kernels::SHADER_PARTS,
        }
    };
}
pub(crate) use shader;

/// Checks that a tensor holds exactly `numel` elements, whatever its shape.
pub(crate) fn expect_numel(op: &'static str, name: &'static str, t: &Tensor, numel: usize, what: &str) -> Result<()> {
    if t.numel() != numel {
        return Err(Error::Shape {
            op,
            tensor: name,
            expected: format!("{numel} elements ({what})"),
            found: t.shape().to_vec(),
        });
    }
    Ok(())
}

/// Converts a size into the u32 the shaders index with, or says which size is too large.
pub(crate) fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} = {v} does not fit the shader's 32-bit indices")))
}

/// Splits `rows` rows of `row_bytes` each into chunks that fit one storage binding and start
/// at offsets the adapter can bind: `(first row, row count)` pairs covering all rows. A table
/// that fits is one chunk.
pub(crate) fn row_chunks(op: &'static str, gpu: &Gpu, rows: usize, row_bytes: u64) -> Result<Vec<(usize, usize)>> {
    let limits = gpu.limits();
    let max = limits.max_storage_buffer_binding_size;
    if rows as u64 * row_bytes <= max {
        return Ok(vec![(0, rows)]);
    }
    let align = limits.min_storage_buffer_offset_alignment as u64;
    // Chunk starts must be multiples of `step` rows to land on an aligned byte offset.
    let step = align / gcd(row_bytes, align);
    let per_chunk = (max / row_bytes) / step * step;
    if per_chunk == 0 {
        return Err(Error::TooLarge {
            op,
            tensor: "one row",
            bytes: row_bytes * step,
            limit_name: "max_storage_buffer_binding_size",
            limit: max,
        });
    }
    Ok((0..rows).step_by(per_chunk as usize).map(|s| (s, (per_chunk as usize).min(rows - s))).collect())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    /// Every part the shaders name exists, and every part is named by some shader.
    #[test]
    fn the_shaders_parts_are_all_there_and_all_used() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        let mut used = std::collections::HashSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "wgsl") {
                let source: &'static str = std::fs::read_to_string(&path).unwrap().leak();
                // A reducing shader takes its part from workgroup_reduce, in either variant.
                let reduces = source.contains("// #include \"workgroup_reduce.wgsl\"");
                let tables = if reduces {
                    vec![super::workgroup_reduce::BARRIER_PART, super::workgroup_reduce::SUBGROUP_PART]
                } else {
                    vec![super::SHADER_PARTS]
                };
                for parts in tables {
                    let file = crate::gpu::ShaderFile { name: "t", source, parts };
                    file.expand().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                }
                used.extend(
                    source
                        .lines()
                        .filter_map(|l| l.trim().strip_prefix("// #include "))
                        .map(|n| n.trim_matches('"').to_string()),
                );
            }
        }
        for (name, _) in super::SHADER_PARTS {
            assert!(used.contains(*name), "shaders/common/{name} is included by no shader");
        }
    }
}
