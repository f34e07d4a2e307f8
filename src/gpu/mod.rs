//! The GPU runtime: one device and queue, the pipeline cache, the buffer pool, and the command
//! encoder that a training step records into.
//!
//! Kernels never submit. They record dispatches into the pending encoder; it is submitted when
//! someone needs results on the CPU ([`Gpu::read_bytes`]), writes into a live buffer through
//! the queue, calls [`Gpu::submit`] at the end of a step, or when the chunk being recorded
//! reaches [`Gpu::submit_every`] dispatches, so the GPU starts on a long step while the CPU
//! still records it. The CPU waits only where it reads.
//!
//! What a dispatch costs on the CPU is kept small, because a step is thousands of them (see
//! [`profile`] for how it is measured):
//! - parameters go into one arena buffer per chunk, bound at a dynamic offset and written with
//!   one queue write at submit, instead of a uniform buffer created per dispatch;
//! - bind groups are cached across steps ([`bind_cache`]): a step's buffers repeat;
//! - consecutive dispatches share one compute pass (wgpu puts the barriers a later dispatch
//!   needs between them); a copy, a clear or a submit ends the pass.

pub mod adapter;
pub mod backend_check;
pub(crate) mod bind_cache;
pub(crate) mod pipelines;
pub(crate) mod pool;
pub mod profile;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use adapter::AdapterChoice;
pub use pipelines::{Access, KernelSpec, ShaderFile};
pub(crate) use pool::Reuse;
pub use profile::{Counts, GpuTiming, Profile};

use crate::error::{Error, Result};

pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    pipelines: pipelines::PipelineCache,
    pool: pool::Pool,
    recorder: Mutex<Recorder>,
    /// Held around `queue.submit` and each `device.poll`: wgpu 30 asserts in a poll that waits
    /// for "the latest submission" when another thread submits during it (seen as "current
    /// submission index should be at least the wait submission index" in tests that share one
    /// device), so the two never interleave.
    queue_lock: Mutex<()>,
    /// The parameters of a chunk's dispatches, [`ARENA_BYTES`] long.
    arena: wgpu::Buffer,
    /// The adapter's `min_uniform_buffer_offset_alignment`: each dispatch's parameters start at
    /// a multiple of it.
    arena_align: u64,
    bind_cache: bind_cache::BindCache,
    submit_every: AtomicU32,
    /// Mappable buffers for readbacks, by pool bucket, kept for the next read of that size.
    staging: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    /// Errors wgpu reports asynchronously (validation, out of memory), surfaced at the next
    /// submit instead of wgpu's default panic.
    errors: Arc<Mutex<Vec<String>>>,
    /// Why the device was lost (driver reset, out of memory, destroyed), once it is: every wait
    /// on the GPU checks it, so a lost device is an error instead of a hang.
    lost: Arc<Mutex<Option<String>>>,
    /// Bound where a kernel has an optional input that is absent (e.g. no bias); one per
    /// binding slot, because one buffer in two slots of a dispatch would alias a writable one.
    dummies: Vec<wgpu::Buffer>,
    /// Settings kernels keep per device (the matmul tile, the skinny path's shape), by type:
    /// the runtime holds them without knowing them, so it depends on no kernel above it.
    settings: Mutex<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
    /// Counters of dispatches, buffers, submits... and the open profile, if any.
    profiler: profile::Profiler,
    /// The cooperative-matrix configurations the device was opened with (none without the
    /// feature).
    cooperative_matrices: Vec<wgpu::CooperativeMatrixProperties>,
}

/// What is being recorded: the encoder of the current chunk, its open compute pass, and the
/// parameters of its dispatches (written into the arena when the chunk is submitted).
#[derive(Default)]
struct Recorder {
    // Declared before `encoder`: the pass ends before its encoder goes.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    params: Vec<u8>,
    dispatches: u32,
}

/// Bytes of the parameter arena: 4096 dispatches at the largest alignment adapters ask (256).
const ARENA_BYTES: u64 = 1 << 20;

/// Dispatches per submitted chunk unless `KILN_SUBMIT_EVERY` says otherwise.
const SUBMIT_EVERY: u32 = 256;

/// Readbacks up to this size keep their staging buffer for the next one (the loss, a norm).
const STAGING_KEPT: u64 = 1 << 20;

/// Runs a closure when dropped (counting time on every way out of a function).
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Storage bindings a kernel may have (adapters guarantee at least 8 per stage).
const MAX_BINDINGS: usize = 8;

/// What the device binds, copies, clears and reads: a stretch of one buffer. The tensor type is
/// its one implementor; gpu names this trait rather than that type because tensors are made of
/// gpu's allocations (the tensor module builds on this one, never the other way round).
pub trait BufferRange {
    fn buffer(&self) -> &wgpu::Buffer;
    /// Byte offset of the stretch's start in its buffer.
    fn offset(&self) -> u64;
    fn byte_len(&self) -> u64;
}

/// One storage binding of a dispatch: a named tensor, or nothing for an unused optional input.
pub type Binding<'a, T> = (&'static str, Option<&'a T>);

impl Gpu {
    /// Opens the chosen adapter with all of its limits (wgpu's defaults are smaller than a
    /// GPT-2 embedding table), and picks the matmul tile shape cached for it by
    /// `kiln bench --tune`, or a default by device type.
    pub fn new(choice: &AdapterChoice) -> Result<Gpu> {
        let instance = adapter::instance();
        let adapter = adapter::choose(adapter::list(&instance), choice)?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        // Timestamps serve only the profiler; asking for them costs nothing when unused.
        // Subgroup operations serve the row reductions (`kernels::workgroup_reduce`); f16 and
        // cooperative matrices the mixed-precision matmuls (`kernels::matmul_coop`), which
        // only run where the precision setting asks for them.
        let features = adapter.features()
            & (wgpu::Features::TIMESTAMP_QUERY
                | wgpu::Features::SUBGROUP
                | wgpu::Features::SHADER_F16
                | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
        let coop = features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("kiln"),
            required_features: features,
            required_limits: limits.clone(),
            // SAFETY: wgpu marks cooperative matrices experimental. kiln asks for them only
            // where the adapter lists a configuration, and uses them in two kernels
            // (`matmul_coop.wgsl`, `qmatmul_coop.wgsl`) whose results the tests check against
            // the reference on every adapter that has them.
            experimental_features: if coop {
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            ..Default::default()
        }))
        .map_err(|e| Error::RequestDevice { adapter: adapter::describe(&info), reason: e.to_string() })?;
        // No binding past 4 GiB, whatever the backend allows: the shaders index with u32, and
        // their loops end only because no element count comes near 2^32
        // (`pipelines::runtime_checks`).
        let mut limits = limits;
        limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(u64::from(u32::MAX));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
        }));
        let lost = Arc::new(Mutex::new(None));
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            *lost_sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{reason:?}: {message}"));
        });
        let arena = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kiln params"),
            size: ARENA_BYTES,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let submit_every = std::env::var("KILN_SUBMIT_EVERY").ok().and_then(|v| v.parse().ok()).unwrap_or(SUBMIT_EVERY);
        let profiler = profile::Profiler::new(&device, &queue, features.contains(wgpu::Features::TIMESTAMP_QUERY));
        let dummies = (0..MAX_BINDINGS)
            .map(|_| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("kiln dummy"),
                    size: 16,
                    usage: pool::USAGE,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let cooperative_matrices = if coop { adapter.cooperative_matrix_properties() } else { Vec::new() };
        Ok(Gpu {
            device,
            queue,
            info,
            limits: limits.clone(),
            pipelines: Default::default(),
            pool: Default::default(),
            recorder: Default::default(),
            queue_lock: Mutex::new(()),
            arena,
            arena_align: (limits.min_uniform_buffer_offset_alignment as u64).max(16),
            bind_cache: Default::default(),
            submit_every: AtomicU32::new(submit_every.max(1)),
            staging: Default::default(),
            errors,
            lost,
            dummies,
            settings: Default::default(),
            profiler,
            cooperative_matrices,
        })
    }

    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The features the device was opened with (those of the adapter's that kiln uses).
    pub fn features(&self) -> wgpu::Features {
        self.device.features()
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The cooperative-matrix configurations (sizes and types) the device can run: empty unless
    /// it was opened with `EXPERIMENTAL_COOPERATIVE_MATRIX`.
    pub fn cooperative_matrices(&self) -> &[wgpu::CooperativeMatrixProperties] {
        &self.cooperative_matrices
    }

    /// Lowers the storage binding size kiln will use below the adapter's, to see how code
    /// behaves on a smaller adapter (tests, and reproducing a user's limit).
    pub fn cap_storage_binding(&mut self, bytes: u64) {
        self.limits.max_storage_buffer_binding_size = self.limits.max_storage_buffer_binding_size.min(bytes);
    }

    /// "name (backend, type)", for logs and benchmark reports.
    pub fn describe(&self) -> String {
        adapter::describe(&self.info)
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The device's setting of type `T`, made from the adapter's info by `init` on first use
    /// (e.g. `kernels::matmul::tile`).
    pub fn setting<T: Any + Copy + Send + Sync>(&self, init: impl FnOnce(&wgpu::AdapterInfo) -> T) -> T {
        let mut settings = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let value = settings.entry(TypeId::of::<T>()).or_insert_with(|| Box::new(init(&self.info)));
        *value.downcast_ref::<T>().expect("settings are keyed by their type")
    }

    /// Replaces the device's setting of type `T`.
    pub fn set_setting<T: Any + Send + Sync>(&self, value: T) {
        self.settings.lock().unwrap_or_else(|e| e.into_inner()).insert(TypeId::of::<T>(), Box::new(value));
    }

    /// Bytes held in GPU buffers by tensors and the pool.
    pub fn allocated_bytes(&self) -> u64 {
        self.pool.allocated_bytes()
    }

    /// Command buffers submitted since the device was opened.
    pub fn submit_count(&self) -> u64 {
        self.counts().submits
    }

    /// The runtime's counters since the device was opened; subtract two with [`Counts::since`].
    pub fn counts(&self) -> Counts {
        self.profiler.counters.snapshot()
    }

    /// Where a profile's GPU times come from on this adapter, when asked for.
    pub fn gpu_timing(&self) -> GpuTiming {
        self.profiler.timing(true)
    }

    /// Opens a profile: each dispatch from now on is logged with its CPU recording time and,
    /// with `gpu_times` where the adapter has timestamps, its GPU time (see [`profile`]).
    pub fn profile_begin(&self, gpu_times: bool) {
        self.profiler.begin(gpu_times);
    }

    /// Submits, waits, and closes the profile opened by [`Gpu::profile_begin`].
    pub fn profile_end(&self) -> Result<Profile> {
        self.synchronize()?;
        Ok(self.profiler.end(&self.device))
    }

    /// Releases pooled buffers that no tensor uses (and the cached bind groups that would
    /// keep them alive).
    pub fn trim_pool(&self) {
        self.bind_cache.clear();
        self.staging.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.pool.trim();
    }

    /// Dispatches recorded before a chunk is submitted without waiting for the end of the step.
    pub fn submit_every(&self) -> u32 {
        self.submit_every.load(Relaxed)
    }

    /// Sets [`Gpu::submit_every`] (at least 1); `KILN_SUBMIT_EVERY` sets it when the device opens.
    pub fn set_submit_every(&self, dispatches: u32) {
        self.submit_every.store(dispatches.max(1), Relaxed);
    }

    fn recorder(&self) -> std::sync::MutexGuard<'_, Recorder> {
        self.recorder.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of at least `bytes` from the pool; checks the adapter's buffer size limit.
    /// `reuse` says which pooled buffers it may be ([`Reuse::Upload`]: it is about to be
    /// written through the queue, [`Gpu::write_fresh`]).
    pub(crate) fn allocate(
        &self,
        op: &'static str,
        tensor: &'static str,
        bytes: u64,
        reuse: Reuse,
    ) -> Result<pool::Allocation> {
        if bytes > self.limits.max_buffer_size {
            return Err(Error::TooLarge {
                op,
                tensor,
                bytes,
                limit_name: "max_buffer_size",
                limit: self.limits.max_buffer_size,
            });
        }
        Ok(self.pool.take(
            &self.device,
            bytes,
            self.limits.max_buffer_size,
            reuse,
            &self.profiler.counters.buffers_created,
        ))
    }

    /// Records into the pending encoder (ending the open compute pass), creating it if needed.
    pub(crate) fn record<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut rec = self.recorder();
        rec.pass = None;
        f(rec.encoder.get_or_insert_with(|| self.new_encoder()))
    }

    fn new_encoder(&self) -> wgpu::CommandEncoder {
        self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("kiln step") })
    }

    /// Writes bytes into a tensor's buffer through the queue. Pending commands are submitted
    /// first, because a queue write lands before any command buffer submitted after it.
    pub(crate) fn write_bytes(&self, tensor: &impl BufferRange, data: &[u8]) -> Result<()> {
        let pending = self.recorder().encoder.is_some();
        if pending {
            self.submit()?;
        }
        if !data.is_empty() {
            self.queue.write_buffer(tensor.buffer(), tensor.offset(), data);
            profile::bump(&self.profiler.counters.bytes_uploaded, data.len() as u64);
        }
        Ok(())
    }

    /// Fills a buffer just taken from the pool for an upload. No recorded command can touch it
    /// yet (such buffers come only from commands already submitted), so unlike
    /// [`Gpu::write_bytes`] this needs no submit first: uploads inside a training step (ids,
    /// targets, positions) keep the whole step in one submit.
    pub(crate) fn write_fresh(&self, tensor: &impl BufferRange, data: &[u8]) {
        if !data.is_empty() {
            self.queue.write_buffer(tensor.buffer(), tensor.offset(), data);
            profile::bump(&self.profiler.counters.bytes_uploaded, data.len() as u64);
        }
    }

    /// Submits everything recorded so far (one `queue.submit`), and reports any error wgpu
    /// raised while recording it.
    pub fn submit(&self) -> Result<()> {
        self.submit_chunk(&mut self.recorder());
        self.check_errors("submit")
    }

    /// Submits the chunk being recorded: its parameters into the arena (a queue write lands
    /// after the commands submitted before it and before those submitted with it), then its
    /// commands.
    ///
    /// The recorder lock is held throughout, and only buffers released before the encoder was
    /// taken become reusable: a buffer dropped by another thread after recording into a newer
    /// encoder must stay reserved until that encoder is submitted too.
    fn submit_chunk(&self, rec: &mut Recorder) {
        let released = self.pool.take_pending();
        rec.pass = None;
        if let Some(mut encoder) = rec.encoder.take() {
            let start = Instant::now();
            let counters = &self.profiler.counters;
            if !rec.params.is_empty() {
                self.queue.write_buffer(&self.arena, 0, &rec.params);
                profile::bump(&counters.bytes_uploaded, rec.params.len() as u64);
            }
            if self.profiler.active() {
                self.profiler.resolve(&self.device, &mut encoder);
            }
            let commands = encoder.finish();
            let _queue = self.queue_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.queue.submit([commands]);
            profile::bump(&counters.submit_ns, start.elapsed().as_nanos() as u64);
            profile::bump(&counters.submits, 1);
        }
        rec.params.clear();
        rec.dispatches = 0;
        self.pool.make_free(released);
    }

    /// Submits and blocks until the GPU has finished everything (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.submit()?;
        self.wait("synchronize")?;
        self.check_errors("synchronize")
    }

    /// Blocks until the GPU has finished what was submitted. Waits in slices (a long kernel on
    /// lavapipe takes seconds) and between them checks whether the device was lost, so a
    /// driver reset ends in an error instead of a wait forever.
    fn wait(&self, context: &str) -> Result<()> {
        const SLICE: std::time::Duration = std::time::Duration::from_millis(500);
        let start = Instant::now();
        let _count = Defer(|| profile::bump(&self.profiler.counters.wait_ns, start.elapsed().as_nanos() as u64));
        loop {
            if let Some(lost) = self.lost_error() {
                return Err(lost);
            }
            let polled = {
                let _queue = self.queue_lock.lock().unwrap_or_else(|p| p.into_inner());
                self.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: Some(SLICE) })
            };
            match polled {
                Ok(_) => return Ok(()),
                Err(wgpu::PollError::Timeout) => continue,
                Err(e) => return Err(Error::Gpu { context: context.into(), message: e.to_string() }),
            }
        }
    }

    /// The error to report once the device is lost: it explains every failure after it.
    fn lost_error(&self) -> Option<Error> {
        let reason = self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        Some(Error::DeviceLost { adapter: self.describe(), reason })
    }

    /// Destroys the device as a driver reset would lose it (tests of the lost-device path).
    #[doc(hidden)]
    pub fn lose_device_for_tests(&self) {
        self.device.destroy();
    }

    fn check_errors(&self, context: &str) -> Result<()> {
        if let Some(lost) = self.lost_error() {
            return Err(lost);
        }
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.is_empty() {
            return Ok(());
        }
        let message = errors.drain(..).collect::<Vec<_>>().join("; ");
        Err(Error::Gpu { context: context.to_string(), message })
    }

    /// Copies `len` bytes at `offset` of a tensor to the CPU, mapping only that range.
    pub fn read_bytes(&self, tensor: &impl BufferRange, offset: u64, len: u64) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        debug_assert!(offset.is_multiple_of(4) && len.is_multiple_of(4), "readback must be 4-byte aligned");
        let bucket = pool::bucket_for(len);
        let kept = self.staging.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&bucket).and_then(Vec::pop);
        let staging = kept.unwrap_or_else(|| {
            profile::bump(&self.profiler.counters.buffers_created, 1);
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kiln readback"),
                size: bucket,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        self.record(|enc| enc.copy_buffer_to_buffer(tensor.buffer(), tensor.offset() + offset, &staging, 0, len));
        self.submit()?;
        let slice = staging.slice(..len);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait("readback")?;
        rx.recv().map_err(|e| Error::Gpu { context: "readback".into(), message: e.to_string() })?.map_err(|e| {
            self.lost_error().unwrap_or(Error::Gpu { context: "readback map".into(), message: e.to_string() })
        })?;
        let bytes = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu { context: "readback view".into(), message: e.to_string() })?
            .to_vec();
        staging.unmap();
        if bucket <= STAGING_KEPT {
            self.staging.lock().unwrap_or_else(|e| e.into_inner()).entry(bucket).or_default().push(staging);
        }
        self.check_errors("readback")?;
        Ok(bytes)
    }

    /// Fills a tensor with zero bytes (recorded, so it is ordered with the kernels around it).
    pub fn clear(&self, tensor: &impl BufferRange) {
        let bytes = tensor.byte_len().next_multiple_of(4);
        if bytes > 0 {
            self.record(|enc| enc.clear_buffer(tensor.buffer(), tensor.offset(), Some(bytes)));
        }
    }

    /// Copies all of `src` into `dst` (same byte size), recorded in order.
    pub fn copy(&self, src: &impl BufferRange, dst: &impl BufferRange) -> Result<()> {
        if src.byte_len() != dst.byte_len() {
            return Err(Error::invalid(
                "copy",
                format!("source has {} bytes, destination {}", src.byte_len(), dst.byte_len()),
            ));
        }
        let bytes = src.byte_len();
        if bytes > 0 {
            self.record(|enc| enc.copy_buffer_to_buffer(src.buffer(), src.offset(), dst.buffer(), dst.offset(), bytes));
        }
        Ok(())
    }

    /// Records one compute dispatch. `bindings` are storage bindings 1.. in the shader's
    /// order; `params` is the uniform at binding 0 (a `#[repr(C)]` Pod struct's bytes).
    pub fn dispatch<T: BufferRange>(
        &self,
        op: &'static str,
        spec: &KernelSpec,
        params: &[u8],
        bindings: &[Binding<T>],
        groups: [u32; 3],
    ) -> Result<()> {
        debug_assert_eq!(bindings.len(), spec.access.len(), "{op}: binding count");
        debug_assert!(bindings.len() <= MAX_BINDINGS, "{op}: too many bindings");
        let max_groups = self.limits.max_compute_workgroups_per_dimension;
        for g in groups {
            if g > max_groups {
                return Err(Error::DispatchTooLarge { op, groups: g as u64, limit: max_groups });
            }
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let max_binding = self.limits.max_storage_buffer_binding_size;
        let align = self.limits.min_storage_buffer_offset_alignment as u64;
        for (name, tensor) in bindings {
            let Some(t) = tensor else { continue };
            if t.byte_len() > max_binding {
                return Err(Error::TooLarge {
                    op,
                    tensor: name,
                    bytes: t.byte_len(),
                    limit_name: "max_storage_buffer_binding_size",
                    limit: max_binding,
                });
            }
            if t.offset() % align != 0 {
                return Err(Error::invalid(
                    op,
                    format!(
                        "tensor `{name}` is a view at byte {}, not a multiple of the adapter's storage offset alignment {align}",
                        t.offset()
                    ),
                ));
            }
        }
        let start = self.profiler.active().then(Instant::now);
        let pipeline = self.pipelines.get(&self.device, spec)?;
        let counters = &self.profiler.counters;
        // Binding 0 is the parameters' stretch of the arena; the group is cached with it, and
        // each dispatch passes where its parameters start as the dynamic offset.
        let uniform_size = (params.len() as u64).next_multiple_of(16).max(16);
        let mut slots: [bind_cache::Slot; MAX_BINDINGS + 1] = [(&self.arena, 0, uniform_size); MAX_BINDINGS + 1];
        for (i, (_, tensor)) in bindings.iter().enumerate() {
            slots[i + 1] = match tensor {
                Some(t) => (t.buffer(), t.offset(), t.byte_len().max(4).next_multiple_of(4)),
                None => (&self.dummies[i], 0, self.dummies[i].size()),
            };
        }
        let group = self.bind_cache.get(
            &self.device,
            op,
            &pipeline.layout,
            &slots[..bindings.len() + 1],
            &counters.bind_groups_created,
        );
        let mut rec = self.recorder();
        let mut submitted = std::time::Duration::ZERO;
        let stride = uniform_size.next_multiple_of(self.arena_align);
        if rec.dispatches >= self.submit_every()
            || rec.params.len() as u64 + stride > ARENA_BYTES
            || self.profiler.queries_full()
        {
            // Counted as submitting, not recording: on lavapipe a submit waits for the chunk
            // before it to finish.
            let t = Instant::now();
            self.submit_chunk(&mut rec);
            submitted = t.elapsed();
        }
        let offset = rec.params.len();
        rec.params.extend_from_slice(params);
        rec.params.resize(offset + stride as usize, 0);
        // A timed dispatch gets a pass of its own: pass timestamps bracket exactly it.
        let timed = start.and_then(|_| self.profiler.next_timestamps());
        let (query, timestamp_writes) = timed.map_or((None, None), |(q, w)| (Some(q), Some(w)));
        let Recorder { pass, encoder, dispatches, .. } = &mut *rec;
        if timestamp_writes.is_some() {
            *pass = None;
        }
        let pass = match pass {
            Some(p) => p,
            None => {
                profile::bump(&counters.passes, 1);
                let encoder = encoder.get_or_insert_with(|| self.new_encoder());
                let desc = wgpu::ComputePassDescriptor { label: Some("kiln"), timestamp_writes };
                pass.insert(encoder.begin_compute_pass(&desc).forget_lifetime())
            }
        };
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &group, &[offset as u32]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        *dispatches += 1;
        if query.is_some() {
            rec.pass = None;
        }
        drop(rec);
        profile::bump(&counters.dispatches, 1);
        if let Some(start) = start {
            self.profiler.logged(start, submitted, spec.file.name, spec.entry, query);
        }
        Ok(())
    }

    /// Workgroups for a grid-stride kernel over `n` elements, 256 per workgroup: one per 256
    /// elements up to a cap by device type. A CPU adapter (lavapipe) pays per workgroup, and
    /// runs elementwise kernels 2.5-3x faster with 256 workgroups looping than with one per
    /// 256 elements (measured on Mesa 25.0.7); a GPU wants enough to fill every core.
    pub fn grid_stride(&self, n: u64) -> [u32; 3] {
        let cap = if self.info.device_type == wgpu::DeviceType::Cpu { 256 } else { 16_384 };
        self.grid_1d(n.div_ceil(256).clamp(1, cap))
    }

    /// Workgroup counts for `n` groups along one logical axis, folded into x and y so no axis
    /// passes the adapter's per-dimension limit. Shaders rebuild the index as
    /// `(wg.y * num_workgroups.x + wg.x)`.
    pub fn grid_1d(&self, n: u64) -> [u32; 3] {
        let max = self.limits.max_compute_workgroups_per_dimension as u64;
        if n <= max { [n as u32, 1, 1] } else { [max as u32, n.div_ceil(max) as u32, 1] }
    }
}
