//! The pipeline cache. Each (shader file, constants header) is parsed into a module once, and
//! each entry point of it becomes a pipeline once; later dispatches only look them up.
//!
//! Bind group layouts are explicit, not derived from the shader: binding 0 is always the
//! params uniform (bound at a dynamic offset into the step's parameter arena), bindings 1.. are
//! storage buffers in the order the kernel lists them. An entry point that does not touch a
//! binding still accepts it, so every entry of one family shares one calling convention. Kernels
//! with the same bindings share one layout object, so a cached bind group serves all of them.
//!
//! A lookup hashes the spec's strings in place: the cache is consulted on every dispatch, and
//! building owned keys there cost an allocation or two each time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// A WGSL source file from `shaders/`.
#[derive(Clone, Copy, Debug)]
pub struct ShaderFile {
    pub name: &'static str,
    pub source: &'static str,
    /// The shared pieces (`shaders/common/`) a `// #include "NAME"` line of the source may
    /// name, by name.
    pub parts: &'static [(&'static str, &'static str)],
}

impl ShaderFile {
    /// The source with each `// #include "NAME"` line replaced by the part of that name: WGSL
    /// has no includes, and several shaders share their tiles or params. Parts include nothing.
    pub fn expand(&self) -> std::result::Result<String, String> {
        let mut out = String::with_capacity(self.source.len());
        for line in self.source.lines() {
            match line.trim().strip_prefix("// #include ") {
                Some(name) => {
                    let name = name.trim().trim_matches('"');
                    let Some((_, part)) = self.parts.iter().find(|(n, _)| *n == name) else {
                        let known: Vec<&str> = self.parts.iter().map(|(n, _)| *n).collect();
                        return Err(format!("#include \"{name}\": no such part (the parts are {known:?})"));
                    };
                    out.push_str(part);
                }
                None => out.push_str(line),
            }
            out.push('\n');
        }
        Ok(out)
    }
}

/// How a kernel uses one storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
}

/// Everything that identifies a pipeline.
#[derive(Clone, Debug)]
pub struct KernelSpec<'a> {
    pub file: ShaderFile,
    pub entry: &'static str,
    /// WGSL text prepended to the file, e.g. `const BM: u32 = 64u;` for tile shapes.
    pub header: &'a str,
    /// Storage bindings 1.. in order.
    pub access: &'a [Access],
}

/// A pipeline with the strings that identify it (shader file, constants header, entry point).
struct Entry {
    file: &'static str,
    header: String,
    entry: &'static str,
    pipeline: Arc<Pipeline>,
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<(String, String), Arc<wgpu::ShaderModule>>>,
    /// By the hash of (file, header, entry); a bucket holds every spec with that hash.
    pipelines: Mutex<HashMap<u64, Vec<Entry>>>,
    layouts: Mutex<HashMap<Vec<Access>, Arc<wgpu::BindGroupLayout>>>,
}

pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: Arc<wgpu::BindGroupLayout>,
}

fn spec_hash(spec: &KernelSpec) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (spec.file.name, spec.header, spec.entry).hash(&mut h);
    h.finish()
}

impl PipelineCache {
    pub(crate) fn get(&self, device: &wgpu::Device, spec: &KernelSpec) -> Result<Arc<Pipeline>> {
        let hash = spec_hash(spec);
        let found = |map: &HashMap<u64, Vec<Entry>>| {
            map.get(&hash)?
                .iter()
                .find(|e| e.file == spec.file.name && e.entry == spec.entry && e.header == spec.header)
                .map(|e| e.pipeline.clone())
        };
        if let Some(p) = found(&self.pipelines.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(p);
        }
        let module = self.module(device, spec)?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = self.layout(device, spec);
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(spec.entry),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(spec.entry),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(spec.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader { file: spec.file.name, entry: spec.entry, message: err.to_string() });
        }
        let p = Arc::new(Pipeline { pipeline, layout });
        let entry =
            Entry { file: spec.file.name, header: spec.header.to_string(), entry: spec.entry, pipeline: p.clone() };
        self.pipelines.lock().unwrap_or_else(|e| e.into_inner()).entry(hash).or_default().push(entry);
        Ok(p)
    }

    /// The layout for the spec's bindings, one object per distinct list of accesses.
    fn layout(&self, device: &wgpu::Device, spec: &KernelSpec) -> Arc<wgpu::BindGroupLayout> {
        let mut layouts = self.layouts.lock().unwrap_or_else(|e| e.into_inner());
        layouts.entry(spec.access.to_vec()).or_insert_with(|| Arc::new(bind_group_layout(device, spec))).clone()
    }

    fn module(&self, device: &wgpu::Device, spec: &KernelSpec) -> Result<Arc<wgpu::ShaderModule>> {
        let key = (spec.file.name.to_string(), spec.header.to_string());
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(&key) {
            return Ok(m.clone());
        }
        let body =
            spec.file.expand().map_err(|message| Error::Shader { file: spec.file.name, entry: spec.entry, message })?;
        let source = format!("{}\n{}", spec.header, body);
        if super::backend_check::enabled() {
            super::backend_check::translate(&source).map_err(|message| Error::Shader {
                file: spec.file.name,
                entry: spec.entry,
                message,
            })?;
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(spec.file.name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        };
        // SAFETY: `runtime_checks` turns off only wgpu's loop bounding, and every loop in
        // shaders/ ends (see there).
        let module = unsafe { device.create_shader_module_trusted(desc, runtime_checks()) };
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader { file: spec.file.name, entry: spec.entry, message: err.to_string() });
        }
        let module = Arc::new(module);
        modules.insert(key, module.clone());
        Ok(module)
    }
}

/// The runtime checks kiln's shaders are compiled with: wgpu's, less its loop bounding.
///
/// wgpu guards every loop against running forever with a counter it adds to the loop. That
/// counter hides the trip count, so the driver's compiler no longer unrolls the short loops
/// over a row held in registers (attention's head dim, matvec's columns) and keeps the row in
/// memory instead: on lavapipe the MiniLM training step is about 15% slower with it (README,
/// "Whole training steps and where their time goes").
///
/// kiln's loops all end: each runs to a constant or to an element count of a bound buffer, and
/// the host keeps bindings under `max_storage_buffer_binding_size` (at most 4 GiB, so under
/// 2^30 four-byte elements). A loop steps by its workgroup size or, in the
/// grid-stride kernels, by its grid, which is at most 2^22 invocations (`Gpu::grid_stride`) or
/// one per element rounded up to whole workgroups; either way no counter passes 2^32, so none
/// wraps back under its bound. Bounds checks on buffers and arrays stay on.
///
/// `KILN_SHADER_CHECKS=all` restores wgpu's full checks, to compare or to rule them out.
fn runtime_checks() -> wgpu::ShaderRuntimeChecks {
    let mut checks = wgpu::ShaderRuntimeChecks::checked();
    if std::env::var("KILN_SHADER_CHECKS").as_deref() != Ok("all") {
        checks.force_loop_bounding = false;
    }
    checks
}

fn bind_group_layout(device: &wgpu::Device, spec: &KernelSpec) -> wgpu::BindGroupLayout {
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: None,
        },
        count: None,
    }];
    for (i, access) in spec.access.iter().enumerate() {
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: i as u32 + 1,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: *access == Access::Read },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    }
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(spec.entry), entries: &entries })
}

#[cfg(test)]
mod tests {
    use super::ShaderFile;

    #[test]
    fn include_lines_are_replaced_by_their_part() {
        let parts = &[("two.wgsl", "const TWO: u32 = 2u;\n")];
        let file = ShaderFile { name: "t", source: "// head\n  // #include \"two.wgsl\"\nconst X: u32 = TWO;", parts };
        assert_eq!(file.expand().unwrap(), "// head\nconst TWO: u32 = 2u;\n\nconst X: u32 = TWO;\n");
        let missing = ShaderFile { source: "// #include \"three.wgsl\"", ..file };
        let e = missing.expand().unwrap_err();
        assert!(e.contains("three.wgsl") && e.contains("two.wgsl"), "{e}");
    }
}
