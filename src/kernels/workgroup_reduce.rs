//! How a workgroup sums, or takes the maximum of, one value per invocation: the row reductions
//! of the norms, of softmax/cross-entropy and of the global gradient norm.
//!
//! Shaders that reduce include `// #include "workgroup_reduce.wgsl"` and take a `Lanes` argument
//! in their entry points; [`reducing`] resolves that part for the device. Where the device has
//! subgroup operations (`wgpu::Features::SUBGROUP`), a reduction is a `subgroupAdd` in
//! registers and two barriers; elsewhere it is a barrier tree in workgroup memory, log2 of the
//! workgroup's size deep. Both stay: tests run each on any adapter with subgroups, and
//! [`set_reductions`] picks one to compare them.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, ShaderFile};

/// Which workgroup reductions the reducing kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reductions {
    /// `subgroupAdd`/`subgroupMax`, then one barrier to combine the subgroups.
    Subgroup,
    /// A halving tree in workgroup memory, a barrier per level.
    Barrier,
}

impl Reductions {
    pub fn name(self) -> &'static str {
        match self {
            Reductions::Subgroup => "subgroup",
            Reductions::Barrier => "barrier",
        }
    }
}

pub(crate) const BARRIER_PART: &[(&str, &str)] =
    &[("workgroup_reduce.wgsl", include_str!("../../shaders/common/workgroup_reduce_barrier.wgsl"))];
pub(crate) const SUBGROUP_PART: &[(&str, &str)] =
    &[("workgroup_reduce.wgsl", include_str!("../../shaders/common/workgroup_reduce_subgroup.wgsl"))];

/// Whether the device was opened with subgroup operations (`Gpu::new` asks for them wherever
/// the adapter has them).
pub fn has_subgroups(gpu: &Gpu) -> bool {
    gpu.features().contains(wgpu::Features::SUBGROUP)
}

/// The reductions for a device with or without subgroup operations: subgroups where it has
/// them. `KILN_REDUCTIONS=barrier` picks the barrier tree anyway (to compare the two).
pub fn default_reductions(subgroups: bool) -> Reductions {
    let default = if subgroups { Reductions::Subgroup } else { Reductions::Barrier };
    match std::env::var("KILN_REDUCTIONS").as_deref() {
        Err(_) | Ok("") => default,
        Ok("barrier") => Reductions::Barrier,
        Ok("subgroup") if subgroups => Reductions::Subgroup,
        Ok(other) => {
            let expected = if subgroups { "`barrier` or `subgroup`" } else { "`barrier` (no subgroups here)" };
            eprintln!("warning: KILN_REDUCTIONS={other:?} is not {expected}; using {} reductions", default.name());
            default
        }
    }
}

/// This device's reductions: [`default_reductions`] unless [`set_reductions`] said otherwise.
pub fn reductions(gpu: &Gpu) -> Reductions {
    // The features are read once, when the setting is first made, not on every dispatch.
    gpu.setting(|_| default_reductions(has_subgroups(gpu)))
}

/// Picks the reductions (tests run both; `kiln bench` compares them).
pub fn set_reductions(gpu: &Gpu, r: Reductions) -> Result<()> {
    if r == Reductions::Subgroup && !has_subgroups(gpu) {
        return Err(Error::invalid(
            "reductions",
            format!("subgroup reductions asked for, but {} has no subgroup operations", gpu.info().name),
        ));
    }
    gpu.set_setting(r);
    Ok(())
}

/// `file` with its "workgroup_reduce.wgsl" part resolved to this device's reductions, and
/// `header` with a first line naming them. The pipeline cache keys a module by its file's name
/// and its header, so that line is what keeps the two variants of one file apart.
///
/// A reducing shader includes no other part.
pub(crate) fn reducing(gpu: &Gpu, file: ShaderFile, header: &str) -> (ShaderFile, String) {
    let r = reductions(gpu);
    let parts = match r {
        Reductions::Subgroup => SUBGROUP_PART,
        Reductions::Barrier => BARRIER_PART,
    };
    (ShaderFile { parts, ..file }, format!("// reductions: {}\n{header}", r.name()))
}

#[cfg(test)]
mod tests {
    /// Both parts define the same functions with the same signatures, so a shader compiles
    /// with either.
    #[test]
    fn both_parts_define_the_same_functions() {
        let signatures =
            |part: &str| -> Vec<String> { part.lines().filter(|l| l.starts_with("fn ")).map(str::to_string).collect() };
        let barrier = signatures(super::BARRIER_PART[0].1);
        assert_eq!(barrier.len(), 2, "{barrier:?}");
        assert_eq!(barrier, signatures(super::SUBGROUP_PART[0].1));
    }
}
