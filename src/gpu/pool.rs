//! A buffer pool. Buffers are bucketed by size (four buckets per power of two above 256 bytes:
//! 1, 1.25, 1.5 and 1.75 times the power below, so a buffer wastes at most a fifth of itself).
//!
//! A dropped tensor's buffer may still be named by commands recorded but not yet submitted. A
//! kernel output may reuse it at once: commands of one submit run in the order recorded, so the
//! new writes land after the old reads (wgpu puts barriers between the passes), and a training
//! step's temporaries recycle within the step. An upload may not: a queue write lands before
//! every command of the next submit, so uploads take only buffers freed by an earlier submit.
//!
//! Free buffers are handed out lowest creation number first, whatever order they were released
//! in: a step that repeats the previous one's allocations then gets the same buffers back, so
//! the bind groups cached for that step's dispatches are found again (see `bind_cache`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

pub(crate) const USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// Buffers of one bucket by creation number.
type Numbered = BTreeMap<u64, wgpu::Buffer>;

#[derive(Default)]
struct State {
    free: HashMap<u64, Numbered>,
    /// Released since the last submit, by bucket; moved to `free` when the next submit is done.
    pending: HashMap<u64, Numbered>,
    /// Buffers created so far (each one's number).
    created: u64,
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
    number: u64,
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
            state.pending.entry(self.bucket).or_default().insert(self.number, buffer);
        }
    }
}

pub(crate) fn bucket_for(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let pow = bytes.next_power_of_two();
    if pow <= 1024 {
        return pow;
    }
    // Quarter steps of the octave below: [p/2, 5p/8, 3p/4, 7p/8, p].
    let step = pow / 8;
    bytes.div_ceil(step) * step
}

/// Which pooled buffers a new tensor may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// A kernel output: any, those released since the last submit first.
    Output,
    /// Written through the queue next: only buffers freed by an earlier submit.
    Upload,
    /// Kept across steps (optimizer moments): a new buffer. Taken mid-step from the pool, it
    /// would hold one of the step's recycled temporaries, and the next step would have to
    /// create that temporary again.
    Never,
}

impl Pool {
    /// A buffer of at least `bytes`, reusing a pooled one as `reuse` allows.
    /// `created` counts the buffers it had to create (the profiler's counter).
    pub(crate) fn take(
        &self,
        device: &wgpu::Device,
        bytes: u64,
        max_buffer: u64,
        reuse: Reuse,
        created: &std::sync::atomic::AtomicU64,
    ) -> Allocation {
        // Round up to a bucket, but never past the adapter's largest buffer.
        let bucket = bucket_for(bytes).min(max_buffer.max(bytes));
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // A kernel output takes a buffer released since the last submit before a free one, as
        // it must when the pool is still empty (the first step): later steps then repeat the
        // first one's choices sooner, and its bind groups are found again.
        let mut reused = None;
        if reuse == Reuse::Output {
            reused = state.pending.get_mut(&bucket).and_then(BTreeMap::pop_first);
        }
        if reused.is_none() && reuse != Reuse::Never {
            reused = state.free.get_mut(&bucket).and_then(BTreeMap::pop_first);
        }
        let (number, buffer) = match reused {
            Some(b) => b,
            None => {
                state.allocated += bucket;
                state.created += 1;
                created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("kiln tensor"),
                    size: bucket,
                    usage: USAGE,
                    mapped_at_creation: false,
                });
                (state.created, buffer)
            }
        };
        Allocation { buffer: Some(buffer), bucket, number, pool: self.clone() }
    }

    /// The buffers released so far; they become reusable once the commands recorded before
    /// their release are submitted ([`Pool::make_free`]).
    pub(crate) fn take_pending(&self) -> HashMap<u64, Numbered> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).pending)
    }

    pub(crate) fn make_free(&self, released: HashMap<u64, Numbered>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (bucket, buffers) in released {
            state.free.entry(bucket).or_default().extend(buffers);
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

#[cfg(test)]
mod tests {
    use super::bucket_for;

    #[test]
    fn buckets_waste_at_most_a_fifth() {
        assert_eq!(bucket_for(1), 256);
        assert_eq!(bucket_for(1000), 1024);
        assert_eq!(bucket_for(1025), 1280);
        assert_eq!(bucket_for(4 << 20), 4 << 20);
        // A 2048×576 f32 activation (4.7 MB) takes 5 MiB, not 8.
        assert_eq!(bucket_for(2048 * 576 * 4), 5 << 20);
        for bytes in (1024..1 << 22).step_by(4093) {
            let b = bucket_for(bytes);
            assert!(b >= bytes && (b - bytes) * 5 <= b, "{bytes} -> {b}");
        }
    }
}
