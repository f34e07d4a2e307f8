//! Bind groups kept across dispatches and steps.
//!
//! A training step repeats the same kernels on the same buffers: the pool hands the same
//! buffers back in the same order once it has settled, and the parameters live in one arena
//! buffer bound at a dynamic offset. So a bind group is looked up by its layout and the exact
//! (buffer, offset, size) of each binding, and created only the first time.
//!
//! A cached group keeps its buffers alive, so the cache is cleared when the pool releases
//! buffers ([`BindCache::clear`] from `Gpu::trim_pool`) and when it grows past [`MAX_GROUPS`]
//! (shapes that keep changing, e.g. generation with a growing KV cache).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// Groups kept at most; past it the cache starts over.
const MAX_GROUPS: usize = 8192;

/// One binding: a buffer, the byte offset and the size bound.
pub(crate) type Slot<'a> = (&'a wgpu::Buffer, u64, u64);

struct Entry {
    layout: Arc<wgpu::BindGroupLayout>,
    slots: Vec<(wgpu::Buffer, u64, u64)>,
    group: wgpu::BindGroup,
}

#[derive(Default)]
pub(crate) struct BindCache {
    groups: Mutex<(HashMap<u64, Vec<Entry>>, usize)>,
}

fn key(layout: &Arc<wgpu::BindGroupLayout>, slots: &[Slot]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (Arc::as_ptr(layout) as usize).hash(&mut h);
    for (buffer, offset, size) in slots {
        (*buffer, offset, size).hash(&mut h);
    }
    h.finish()
}

impl BindCache {
    /// The group binding `slots` (binding 0 the uniform, then the storage buffers) to `layout`;
    /// `created` is bumped when it had to be made.
    pub(crate) fn get(
        &self,
        device: &wgpu::Device,
        label: &str,
        layout: &Arc<wgpu::BindGroupLayout>,
        slots: &[Slot],
        created: &std::sync::atomic::AtomicU64,
    ) -> wgpu::BindGroup {
        let k = key(layout, slots);
        let mut guard = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let same = |e: &Entry| {
            Arc::ptr_eq(&e.layout, layout)
                && e.slots.len() == slots.len()
                && e.slots.iter().zip(slots).all(|(a, b)| &a.0 == b.0 && a.1 == b.1 && a.2 == b.2)
        };
        if let Some(e) = guard.0.get(&k).and_then(|v| v.iter().find(|e| same(e))) {
            return e.group.clone();
        }
        let entries: Vec<wgpu::BindGroupEntry> = slots
            .iter()
            .enumerate()
            .map(|(i, (buffer, offset, size))| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: *offset,
                    size: wgpu::BufferSize::new(*size),
                }),
            })
            .collect();
        let group =
            device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(label), layout, entries: &entries });
        created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if guard.1 >= MAX_GROUPS {
            *guard = Default::default();
        }
        let slots = slots.iter().map(|(b, o, s)| ((*b).clone(), *o, *s)).collect();
        guard.0.entry(k).or_default().push(Entry { layout: layout.clone(), slots, group: group.clone() });
        guard.1 += 1;
        group
    }

    /// Drops every group (and with them the references that keep released buffers alive).
    pub(crate) fn clear(&self) {
        *self.groups.lock().unwrap_or_else(|e| e.into_inner()) = Default::default();
    }
}
