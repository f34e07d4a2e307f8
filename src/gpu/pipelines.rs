//! The pipeline cache. Each (shader file, constants header) is parsed into a module once, and
//! each entry point of it becomes a pipeline once; later dispatches only look them up.
//!
//! Bind group layouts are explicit, not derived from the shader: binding 0 is always the
//! params uniform, bindings 1.. are storage buffers in the order the kernel lists them. An
//! entry point that does not touch a binding still accepts it, so every entry of one family
//! shares one calling convention.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// A WGSL source file from `shaders/`.
#[derive(Clone, Copy, Debug)]
pub struct ShaderFile {
    pub name: &'static str,
    pub source: &'static str,
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

/// (shader file, constants header, entry point).
type PipelineKey = (String, String, &'static str);

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<(String, String), Arc<wgpu::ShaderModule>>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
}

pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

impl PipelineCache {
    pub(crate) fn get(&self, device: &wgpu::Device, spec: &KernelSpec) -> Result<Arc<Pipeline>> {
        let key = (spec.file.name.to_string(), spec.header.to_string(), spec.entry);
        if let Some(p) = self.pipelines.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(p.clone());
        }
        let module = self.module(device, spec)?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = bind_group_layout(device, spec);
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
        self.pipelines.lock().unwrap_or_else(|e| e.into_inner()).insert(key, p.clone());
        Ok(p)
    }

    fn module(&self, device: &wgpu::Device, spec: &KernelSpec) -> Result<Arc<wgpu::ShaderModule>> {
        let key = (spec.file.name.to_string(), spec.header.to_string());
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(&key) {
            return Ok(m.clone());
        }
        let source = format!("{}\n{}", spec.header, spec.file.source);
        if super::backend_check::enabled() {
            super::backend_check::translate(&source).map_err(|message| Error::Shader {
                file: spec.file.name,
                entry: spec.entry,
                message,
            })?;
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(spec.file.name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader { file: spec.file.name, entry: spec.entry, message: err.to_string() });
        }
        let module = Arc::new(module);
        modules.insert(key, module.clone());
        Ok(module)
    }
}

fn bind_group_layout(device: &wgpu::Device, spec: &KernelSpec) -> wgpu::BindGroupLayout {
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
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
