//! A buffer pool. Buffers are bucketed by size (powers of two above 256 bytes, so a reused
//! buffer wastes at most half), and a dropped tensor's buffer becomes reusable only after the
//! next submit: until then commands recorded but not yet submitted may still read it, and an
//! upload through the queue into it would land before those commands run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) const USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

#[derive(Default)]
struct State {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    /// Released since the last submit; moved to `free` when the next submit is done.
    pending: Vec<(u64, wgpu::Buffer)>,
    /// Bytes held by live and pooled buffers, for `kiln devices` and memory reports.
    allocated: u64,
}

#[derive(Clone, Default)]
pub(crate) struct Pool {
    state: Arc<Mutex<State>>,
}

/// A pooled buffer; returns to the pool when the last tensor using it is dropped.
pub struct Allocation {
    buffer: Option<wgpu::Buffer>,
    bucket: u64,
    pool: Pool,
}

impl Allocation {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            let mut state = self.pool.state.lock().unwrap_or_else(|e| e.into_inner());
            state.pending.push((self.bucket, buffer));
        }
    }
}

pub(crate) fn bucket_for(bytes: u64) -> u64 {
    bytes.max(256).next_power_of_two()
}

impl Pool {
    pub(crate) fn take(&self, device: &wgpu::Device, bytes: u64, max_buffer: u64) -> Allocation {
        // Round up to a power of two, but never past the adapter's largest buffer.
        let bucket = bucket_for(bytes).min(max_buffer.max(bytes));
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let reused = state.free.get_mut(&bucket).and_then(Vec::pop);
        let buffer = match reused {
            Some(b) => b,
            None => {
                state.allocated += bucket;
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("kiln tensor"),
                    size: bucket,
                    usage: USAGE,
                    mapped_at_creation: false,
                })
            }
        };
        Allocation { buffer: Some(buffer), bucket, pool: self.clone() }
    }

    /// The buffers released so far; they become reusable once the commands recorded before
    /// their release are submitted ([`Pool::make_free`]).
    pub(crate) fn take_pending(&self) -> Vec<(u64, wgpu::Buffer)> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).pending)
    }

    pub(crate) fn make_free(&self, released: Vec<(u64, wgpu::Buffer)>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (bucket, buffer) in released {
            state.free.entry(bucket).or_default().push(buffer);
        }
    }

    /// Frees every pooled buffer not in use (e.g. between benchmark sizes).
    pub(crate) fn trim(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let freed: u64 = state.free.iter().map(|(b, v)| b * v.len() as u64).sum();
        state.free.clear();
        state.allocated -= freed;
    }

    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).allocated
    }
}
