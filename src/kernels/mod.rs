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
pub mod pool2d;
pub mod qmatmul;
pub mod reduce;
pub mod rope;
pub mod softmax_xent;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tensor::Tensor;

macro_rules! shader {
    ($name:literal) => {
        $crate::gpu::ShaderFile { name: $name, source: include_str!(concat!("../../shaders/", $name, ".wgsl")) }
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
