//! Every shader module kiln builds, translated with naga to Metal Shading Language and HLSL
//! (DX12) as wgpu would translate it on those backends, so a WGSL construct that Metal or DX12
//! rejects fails a test on Linux rather than reaching a user first. The test binaries turn it
//! on ([`enable`]); `KILN_CHECK_BACKENDS=1` turns it on for any kiln command. Off, it costs
//! nothing.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use naga::back::{hlsl, msl};
use naga::valid::{Capabilities, ValidationFlags, Validator};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Translates every shader module compiled from now on (in this process) before wgpu sees it.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub(crate) fn enabled() -> bool {
    static FROM_ENV: OnceLock<bool> = OnceLock::new();
    ENABLED.load(Ordering::Relaxed) || *FROM_ENV.get_or_init(|| std::env::var_os("KILN_CHECK_BACKENDS").is_some())
}

/// Translates `source` (the header and shader file as compiled) to MSL and HLSL, every entry
/// point; the error names the back end and what naga said.
pub(crate) fn translate(source: &str) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| format!("naga's WGSL front end: {e}"))?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .map_err(|e| format!("naga validation: {e}"))?;
    // Metal 2.4 (macOS 12, every Apple-silicon Mac); shader model 6.0, as wgpu's DX12 back end
    // with DXC.
    // The back ends assert on some constructs they cannot write (an f64 in Metal), so a panic
    // is caught and reported like an error.
    let guarded = |backend: &str, write: &dyn Fn() -> Result<(), String>| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(write)).unwrap_or_else(|panic| {
            let what =
                panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(format!("naga's {backend} writer panicked: {}", what.unwrap_or_default()))
        })
    };
    // Cooperative matrices exist on Vulkan and Metal (8x8 simdgroup matrices) only: wgpu's DX12
    // back end never offers them, and Metal never a 16x16 one, so a module using them is
    // checked only where it can be asked for.
    let coop_sizes: Vec<naga::CooperativeSize> = module
        .types
        .iter()
        .filter_map(|(_, ty)| match ty.inner {
            naga::TypeInner::CooperativeMatrix { columns, .. } => Some(columns),
            _ => None,
        })
        .collect();
    let metal_can = coop_sizes.iter().all(|&s| s == naga::CooperativeSize::Eight);
    let msl_options = msl::Options { lang_version: (2, 4), ..Default::default() };
    if !metal_can {
        return Ok(());
    }
    guarded("Metal (MSL)", &|| {
        msl::write_string(&module, &info, &msl_options, &msl::PipelineOptions::default())
            .map(drop)
            .map_err(|e| format!("Metal (MSL): {e}"))
    })?;
    if !coop_sizes.is_empty() {
        return Ok(());
    }
    let hlsl_options = hlsl::Options { shader_model: hlsl::ShaderModel::V6_0, ..Default::default() };
    guarded("DX12 (HLSL)", &|| {
        let mut out = String::new();
        hlsl::Writer::new(&mut out, &hlsl_options, &hlsl::PipelineOptions::default())
            .write(&module, &info, None)
            .map(drop)
            .map_err(|e| format!("DX12 (HLSL): {e}"))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_shader_metal_rejects_is_caught() {
        let ok = "@group(0) @binding(0) var<storage, read_write> x: array<f32>;\n\
                  @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) i: vec3<u32>) { x[i.x] = 1.0; }";
        super::translate(ok).unwrap();
        // f64 is WGSL that naga parses and validates, but Metal has no double.
        let bad = "@group(0) @binding(0) var<storage, read_write> x: array<f64>;\n\
                   @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) i: vec3<u32>) { x[i.x] = 1.0lf; }";
        let e = super::translate(bad).unwrap_err();
        assert!(e.contains("Metal (MSL)"), "{e}");
    }
}
