//! The Rust side of each shader family: params struct, bindings, dispatch geometry.
//!
//! Every dispatch function has the same shape: check shapes (errors name the tensor), build
//! the `#[repr(C)]` params, bind buffers in the order of the shader's `@binding`s (listed in
//! the doc comment), compute workgroups with `div_ceil`, and record one labelled pass.

pub mod adamw;
pub mod attention;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod layer_norm;
pub mod matmul;
pub mod reduce;
pub mod rope;
pub mod softmax_xent;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

macro_rules! shader {
    ($name:literal) => {
        $crate::gpu::ShaderFile {
            name: $name,
            source: include_str!(concat!("../../shaders/", $name, ".wgsl")),
        }
    };
}
pub(crate) use shader;

/// Checks that a tensor holds exactly `numel` elements, whatever its shape.
pub(crate) fn expect_numel(
    op: &'static str,
    name: &'static str,
    t: &Tensor,
    numel: usize,
    what: &str,
) -> Result<()> {
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
    u32::try_from(v).map_err(|_| {
        Error::invalid(
            op,
            format!("{what} = {v} does not fit the shader's 32-bit indices"),
        )
    })
}
