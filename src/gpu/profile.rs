//! What the runtime did, for `--profile` and the step benchmarks.
//!
//! Two levels. [`Counts`] are always on: relaxed atomics bumped once per event (a dispatch, a
//! compute pass, a buffer or bind group created, bytes uploaded, a submit, time spent waiting),
//! a few nanoseconds each, so they cost nothing worth measuring when nobody looks. While a
//! profile is open ([`crate::Gpu::profile_begin`]), each dispatch is also logged with its kernel,
//! its family (the shader file) and the CPU time spent recording it, and, where the adapter has
//! `TIMESTAMP_QUERY`, its GPU time: the dispatch gets a compute pass of its own whose beginning
//! and end write timestamps, resolved at each submit and read when the profile ends.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// wgpu's limit on queries per set: two per timed dispatch, so a chunk of this many dispatches
/// is submitted to free the set while a timed profile is open.
const QUERIES: u32 = wgpu::QUERY_SET_MAX_QUERIES;

#[derive(Default)]
pub(crate) struct Counters {
    pub dispatches: AtomicU64,
    pub passes: AtomicU64,
    pub buffers_created: AtomicU64,
    pub bind_groups_created: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub submits: AtomicU64,
    pub record_ns: AtomicU64,
    pub submit_ns: AtomicU64,
    pub wait_ns: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

/// The counters at one moment; [`Counts::since`] gives what happened in between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub dispatches: u64,
    pub passes: u64,
    /// GPU buffers created: tensors the pool could not serve, uniforms, readback staging.
    pub buffers_created: u64,
    pub bind_groups_created: u64,
    /// Bytes written through the queue: uploads and kernel parameters.
    pub bytes_uploaded: u64,
    pub submits: u64,
    /// CPU time inside `Gpu::dispatch` (counted only while a profile is open).
    pub record_ns: u64,
    /// CPU time in `queue.submit` and finishing the command encoder.
    pub submit_ns: u64,
    /// CPU time blocked on the GPU (readbacks, synchronize).
    pub wait_ns: u64,
}

impl Counts {
    pub fn since(&self, before: &Counts) -> Counts {
        Counts {
            dispatches: self.dispatches - before.dispatches,
            passes: self.passes - before.passes,
            buffers_created: self.buffers_created - before.buffers_created,
            bind_groups_created: self.bind_groups_created - before.bind_groups_created,
            bytes_uploaded: self.bytes_uploaded - before.bytes_uploaded,
            submits: self.submits - before.submits,
            record_ns: self.record_ns - before.record_ns,
            submit_ns: self.submit_ns - before.submit_ns,
            wait_ns: self.wait_ns - before.wait_ns,
        }
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Counts {
        Counts {
            dispatches: self.dispatches.load(Relaxed),
            passes: self.passes.load(Relaxed),
            buffers_created: self.buffers_created.load(Relaxed),
            bind_groups_created: self.bind_groups_created.load(Relaxed),
            bytes_uploaded: self.bytes_uploaded.load(Relaxed),
            submits: self.submits.load(Relaxed),
            record_ns: self.record_ns.load(Relaxed),
            submit_ns: self.submit_ns.load(Relaxed),
            wait_ns: self.wait_ns.load(Relaxed),
        }
    }
}

/// Where a profile's GPU times come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuTiming {
    /// Timestamps written at the beginning and end of each dispatch's own compute pass.
    PerDispatch,
    /// Timestamps were not asked for (they cost a compute pass per dispatch): CPU times only.
    Off,
    /// The adapter has no `TIMESTAMP_QUERY`: CPU times only.
    Unavailable,
}

impl GpuTiming {
    pub fn describe(self) -> &'static str {
        match self {
            GpuTiming::PerDispatch => "per-dispatch timestamp queries (one compute pass per dispatch while profiling)",
            GpuTiming::Off => "off: CPU times only (ask for GPU times to time each dispatch)",
            GpuTiming::Unavailable => "none: the adapter has no TIMESTAMP_QUERY, so only CPU times are shown",
        }
    }
}

/// One dispatch of a profile.
#[derive(Clone, Debug, Serialize)]
pub struct DispatchTime {
    /// The shader file (`matmul`, `elementwise`, ...).
    pub family: &'static str,
    /// The entry point.
    pub kernel: &'static str,
    pub cpu_ns: u64,
    /// From timestamps, when the adapter has them.
    pub gpu_ns: Option<f64>,
}

/// What a profile saw between [`crate::Gpu::profile_begin`] and [`crate::Gpu::profile_end`].
#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    pub counts: Counts,
    pub timing: GpuTiming,
    pub dispatches: Vec<DispatchTime>,
}

/// Dispatches grouped by a key: count, CPU and GPU time.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub dispatches: u64,
    pub cpu_ns: u64,
    /// Summed GPU time; None when no dispatch of the group was timed.
    pub gpu_ns: Option<f64>,
}

impl Profile {
    /// Grouped by entry point (`family/kernel`), most GPU time (else CPU time) first.
    pub fn by_kernel(&self) -> Vec<Group> {
        group(&self.dispatches, |d| format!("{}/{}", d.family, d.kernel))
    }

    /// Grouped by shader file, most time first.
    pub fn by_family(&self) -> Vec<Group> {
        group(&self.dispatches, |d| d.family.to_string())
    }
}

fn group(dispatches: &[DispatchTime], key: impl Fn(&DispatchTime) -> String) -> Vec<Group> {
    let mut map: std::collections::HashMap<String, Group> = Default::default();
    for d in dispatches {
        let name = key(d);
        let g = map.entry(name.clone()).or_insert_with(|| Group { name, ..Default::default() });
        g.dispatches += 1;
        g.cpu_ns += d.cpu_ns;
        if let Some(t) = d.gpu_ns {
            *g.gpu_ns.get_or_insert(0.0) += t;
        }
    }
    let mut v: Vec<Group> = map.into_values().collect();
    v.sort_by(|a, b| {
        (b.gpu_ns.unwrap_or(0.0), b.cpu_ns).partial_cmp(&(a.gpu_ns.unwrap_or(0.0), a.cpu_ns)).expect("finite times")
    });
    v
}

struct Timestamps {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
}

struct Logged {
    family: &'static str,
    kernel: &'static str,
    cpu_ns: u64,
    /// Index of the dispatch's timestamp pair in its chunk's query set.
    query: Option<u32>,
    gpu_ns: Option<f64>,
}

#[derive(Default)]
struct Session {
    logged: Vec<Logged>,
    begin: Counts,
    /// Timestamp pairs used by the chunk being recorded.
    queries: u32,
    /// Resolved timestamps of submitted chunks: the readback buffer and the logged dispatches
    /// of the chunk (query indices restart at each chunk).
    submitted: Vec<(wgpu::Buffer, std::ops::Range<usize>)>,
    /// The logged dispatch the current chunk starts at.
    chunk_start: usize,
}

pub(crate) struct Profiler {
    pub counters: Counters,
    active: AtomicBool,
    /// The open profile writes timestamps.
    timed: AtomicBool,
    timestamps: Option<Timestamps>,
    session: Mutex<Session>,
}

impl Profiler {
    /// `timed`: the device was opened with `TIMESTAMP_QUERY`.
    pub(crate) fn new(device: &wgpu::Device, queue: &wgpu::Queue, timed: bool) -> Profiler {
        let timestamps = timed.then(|| Timestamps {
            set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kiln profile"),
                ty: wgpu::QueryType::Timestamp,
                count: QUERIES,
            }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kiln profile resolve"),
                size: QUERIES as u64 * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            period_ns: queue.get_timestamp_period() as f64,
        });
        Profiler {
            counters: Counters::default(),
            active: AtomicBool::new(false),
            timed: AtomicBool::new(false),
            timestamps,
            session: Default::default(),
        }
    }

    /// What a profile asking for GPU times (`timed`) gets on this device.
    pub(crate) fn timing(&self, timed: bool) -> GpuTiming {
        match (timed, self.timestamps.is_some()) {
            (true, true) => GpuTiming::PerDispatch,
            (true, false) => GpuTiming::Unavailable,
            (false, _) => GpuTiming::Off,
        }
    }

    pub(crate) fn active(&self) -> bool {
        self.active.load(Relaxed)
    }

    /// Opens a profile: from now on dispatches are logged, and timed on the GPU when `timed`
    /// and the adapter can.
    pub(crate) fn begin(&self, timed: bool) {
        let mut s = self.session.lock().unwrap_or_else(|e| e.into_inner());
        *s = Session { begin: self.counters.snapshot(), ..Default::default() };
        self.timed.store(timed, Relaxed);
        self.active.store(true, Relaxed);
    }

    fn timing_now(&self) -> bool {
        self.active() && self.timed.load(Relaxed) && self.timestamps.is_some()
    }

    /// Whether the chunk being recorded has used every timestamp pair: the caller submits
    /// before the next timed dispatch.
    pub(crate) fn queries_full(&self) -> bool {
        self.timing_now() && {
            let s = self.session.lock().unwrap_or_else(|e| e.into_inner());
            s.queries >= QUERIES / 2
        }
    }

    /// The timestamp writes for the next dispatch's pass (None when not profiling or untimed);
    /// the returned index goes back to [`Profiler::logged`].
    pub(crate) fn next_timestamps(&self) -> Option<(u32, wgpu::ComputePassTimestampWrites<'_>)> {
        let ts = self.timestamps.as_ref().filter(|_| self.timing_now())?;
        let mut s = self.session.lock().unwrap_or_else(|e| e.into_inner());
        if s.queries >= QUERIES / 2 {
            return None;
        }
        let q = s.queries;
        s.queries += 1;
        Some((
            q,
            wgpu::ComputePassTimestampWrites {
                query_set: &ts.set,
                beginning_of_pass_write_index: Some(2 * q),
                end_of_pass_write_index: Some(2 * q + 1),
            },
        ))
    }

    /// Logs a dispatch recorded since `start`, less `submitting` (a chunk it submitted first).
    pub(crate) fn logged(
        &self,
        start: Instant,
        submitting: std::time::Duration,
        family: &'static str,
        kernel: &'static str,
        query: Option<u32>,
    ) {
        let cpu_ns = start.elapsed().saturating_sub(submitting).as_nanos() as u64;
        bump(&self.counters.record_ns, cpu_ns);
        let mut s = self.session.lock().unwrap_or_else(|e| e.into_inner());
        s.logged.push(Logged { family, kernel, cpu_ns, query, gpu_ns: None });
    }

    /// Before a chunk is finished: resolves its timestamps into a buffer read when the profile
    /// ends (the profiler's own buffers are not counted as the run's).
    pub(crate) fn resolve(&self, device: &wgpu::Device, encoder: &mut wgpu::CommandEncoder) {
        let Some(ts) = &self.timestamps else { return };
        let mut s = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let n = s.queries;
        let chunk = s.chunk_start..s.logged.len();
        s.chunk_start = chunk.end;
        s.queries = 0;
        if n == 0 {
            return;
        }
        let bytes = 2 * n as u64 * 8;
        encoder.resolve_query_set(&ts.set, 0..2 * n, &ts.resolve, 0);
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kiln profile readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        encoder.copy_buffer_to_buffer(&ts.resolve, 0, &readback, 0, bytes);
        s.submitted.push((readback, chunk));
    }

    /// Closes the profile after everything was submitted and waited for: reads the timestamps.
    pub(crate) fn end(&self, device: &wgpu::Device) -> Profile {
        self.active.store(false, Relaxed);
        let mut s = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let submitted = std::mem::take(&mut s.submitted);
        for (buffer, chunk) in submitted {
            let slice = buffer.slice(..);
            let (tx, rx) = std::sync::mpsc::channel();
            slice.map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r.is_ok());
            });
            let _ = device.poll(wgpu::PollType::wait_indefinitely());
            if !rx.recv().unwrap_or(false) {
                continue;
            }
            let Ok(view) = slice.get_mapped_range() else { continue };
            let ticks: &[u64] = bytemuck::cast_slice(&view);
            let period = self.timestamps.as_ref().map_or(1.0, |t| t.period_ns);
            for d in s.logged[chunk].iter_mut() {
                if let Some(q) = d.query
                    && let (Some(&t0), Some(&t1)) = (ticks.get(2 * q as usize), ticks.get(2 * q as usize + 1))
                {
                    d.gpu_ns = Some(t1.saturating_sub(t0) as f64 * period);
                }
            }
            drop(view);
            buffer.unmap();
        }
        let counts = self.counters.snapshot().since(&s.begin);
        let dispatches = s
            .logged
            .drain(..)
            .map(|d| DispatchTime { family: d.family, kernel: d.kernel, cpu_ns: d.cpu_ns, gpu_ns: d.gpu_ns })
            .collect();
        s.queries = 0;
        s.chunk_start = 0;
        Profile { counts, timing: self.timing(self.timed.load(Relaxed)), dispatches }
    }
}
