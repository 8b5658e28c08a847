//! The GPU backend on wgpu: Vulkan (NVIDIA, AMD, Intel; lavapipe in CI), Metal, DX12. Kernels are the WGSL
//! variants build.rs renders from wgsl/ (see kernels.rs); this module owns the device, the buffers and the
//! recording of dispatches, and ops.rs implements the forward pass's operations with them.
//!
//! A forward pass records every dispatch into one compute pass and submits once, when its logits are read: the
//! CPU waits for the GPU once per call. Activation buffers come from a pool keyed by size, and bind groups are
//! cached by the buffers they bind, so a decode step allocates nothing after the first.

pub mod kernels;
mod ops;
mod stream;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use wgpu::util::DeviceExt;

pub use ops::{GpuExperts, GpuMatrix};

/// Bytes of immediate data (push constants) every kernel may use for its parameters.
const IMMEDIATE_BYTES: u32 = 64;

/// Storage buffers the kernel with the most binds (a Gated DeltaNet decode step, wgsl/delta_step.wgsl). Desktop
/// GPUs offer far more; WebGPU's minimum is 8.
const STORAGE_BINDINGS: u32 = 11;

/// Bytes of workgroup memory the largest kernel declares: the decode matmul's x tile of 4,096 columns (16 KiB) and
/// its partial sums (4 KiB). Desktop GPUs offer 32 KiB or more; WebGPU's minimum is 16 KiB.
const WORKGROUP_BYTES: u32 = 20 << 10;

/// GPU memory for streamed experts when `--gpu-mem` is not given.
pub const DEFAULT_EXPERT_MEMORY: u64 = 4 << 30;

/// Which adapter `--backend` asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AdapterChoice {
    /// A hardware GPU, or none (then the caller falls back to the CPU).
    Hardware,
    /// Any adapter, software ones (lavapipe) included.
    Any,
}

/// The GPU: device, queue, kernels, buffer pool and the dispatches being recorded.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    pipelines: RefCell<HashMap<&'static str, Rc<Pipeline>>>,
    bind_groups: Rc<RefCell<BindGroups>>,
    pool: Rc<RefCell<Pool>>,
    recorder: RefCell<Recorder>,
    next_id: Cell<u64>,
    /// Dispatches recorded and CPU↔GPU waits, since the start (for `--timing`; see `Backend::counters`).
    dispatches: Cell<u64>,
    syncs: Cell<u64>,
    wait_nanos: Cell<u64>,
    profiler: RefCell<Option<Profiler>>,
    /// Whether the matrix kernels reduce with subgroup operations (`…_sg` variants): where the adapter has them.
    subgroups: Cell<bool>,
    /// Whether the prefill's dense matmuls run on tensor cores (`gemm_f16`): where the adapter has them, unless the
    /// environment sets FLOE_TENSOR_CORES=0 (on the H100, the 512-token prefill 3,760 → 5,121 tok/s: docs/PERF.md,
    /// "Tensor cores from f16 copies").
    tensor_cores: Cell<bool>,
    /// Whether streamed experts are read straight into their GPU slots (mappable slot buffers) instead of through a
    /// staging buffer and copies: on adapters that share the host's memory (integrated GPUs, Apple Silicon,
    /// software ones) and offer MAPPABLE_PRIMARY_BUFFERS; FLOE_ZERO_COPY=0 or 1 overrides (stream.rs).
    zero_copy: Cell<bool>,
    /// The mappable buffer results are read back through.
    staging: RefCell<Option<wgpu::Buffer>>,
    /// The 4-byte mappable buffers chosen tokens come back through ([`ops::Chosen`]), back here when dropped, and
    /// how many were made: a decode step makes none once a few are in use.
    chosen_readbacks: Rc<RefCell<Vec<wgpu::Buffer>>>,
    chosen_readbacks_made: Cell<usize>,
    /// The last RoPE cos/sin table uploaded and what it was for (pos0, tokens, rotary dims, theta's bits): every
    /// attention layer of a forward call rotates q and k with the same one.
    rope_table: RefCell<Option<((usize, usize, usize, u64), Rc<Buf>)>>,
    /// Buffers to map for writing again once the copies reading them are submitted, and their "mapped" flags.
    remap: RefCell<Vec<(wgpu::Buffer, Arc<std::sync::atomic::AtomicBool>)>>,
    /// GPU memory for streamed experts' slots and the slots' policy (`--gpu-mem`, `--cache`), and the slots of
    /// the model being uploaded.
    expert_memory: Cell<(u64, crate::store::CachePolicy)>,
    slots: RefCell<Option<Rc<stream::ExpertSlots>>>,
    /// A binding limit below the adapter's (`Gpu::limit_bindings`), to exercise splitting in tests.
    binding_cap: Cell<u64>,
    /// Kernels the uploaded weights need (`matmul_q4g64bf16`, `expert_down_bf16`, …, before their variant
    /// suffixes), to build their pipelines ahead of the first token.
    weight_kernels: RefCell<std::collections::BTreeSet<String>>,
}

/// GPU time per kernel, from timestamps written around every dispatch (`Gpu::start_profiling`).
struct Profiler {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    /// The kernel of each timed dispatch since the last read-back.
    pending: Vec<&'static str>,
    /// Per kernel: total seconds and dispatches.
    totals: HashMap<&'static str, (f64, u64)>,
}

/// Timestamps one submission can hold (two per dispatch); dispatches past it go untimed.
const MAX_QUERIES: u32 = 4096;

struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    /// Dispatches recorded since the last submission.
    recorded: u32,
    /// Dispatches the next submission waits for: [`FIRST_SUBMIT`] after a wait for the device, doubling up to
    /// [`SUBMIT_EVERY`].
    batch: u32,
}

/// Dispatches recorded before they are submitted (without waiting), so the GPU starts on the first layers while
/// the CPU records the rest of a forward pass.
const SUBMIT_EVERY: u32 = 64;

/// The first submission after a wait for the device, which is then idle: sooner than [`SUBMIT_EVERY`], whose
/// dispatches take the CPU ~0.35 ms to record (H200 machine, 35B-A3B decode).
const FIRST_SUBMIT: u32 = 8;

/// Free activation buffers by size class.
#[derive(Default)]
struct Pool {
    free: HashMap<u64, Vec<(u64, wgpu::Buffer)>>,
}

/// Bind groups by kernel and the ids of the buffers they bind (at most [`STORAGE_BINDINGS`]; 0 after the last).
type BindGroups = HashMap<(&'static str, [u64; STORAGE_BINDINGS as usize]), wgpu::BindGroup>;

/// A GPU buffer with an identity (for the bind-group cache). Dropped, a pooled one goes back to the pool (its
/// bind groups stay valid for its next use); any other takes its bind groups out of the cache, so per-call inputs
/// and the states of finished sequences are freed.
pub struct Buf {
    id: u64,
    buffer: wgpu::Buffer,
    pool: Option<Rc<RefCell<Pool>>>,
    bind_groups: Rc<RefCell<BindGroups>>,
}

impl Drop for Buf {
    fn drop(&mut self) {
        match &self.pool {
            Some(pool) => pool.borrow_mut().free.entry(self.buffer.size()).or_default().push((self.id, self.buffer.clone())),
            None => {
                if let Ok(mut groups) = self.bind_groups.try_borrow_mut() {
                    groups.retain(|(_, ids), _| !ids.contains(&self.id));
                }
            }
        }
    }
}

/// The features the tensor-core kernels need.
const TENSOR_CORE_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::SUBGROUP)
    .union(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);

/// Whether `adapter` can run the tensor-core kernel (wgsl/gemm_f16.wgsl): cooperative matrices of 16×16×16 with
/// f16 inputs and f32 sums, subgroups of exactly 32 (it splits a workgroup of 128 threads into 4 subgroups) and 47
/// KiB of workgroup memory. NVIDIA's Vulkan drivers have them; Metal's simdgroup matrices are 8×8, and wgpu's DX12 has
/// none.
fn tensor_cores_of(adapter: &wgpu::Adapter) -> bool {
    let info = adapter.get_info();
    let f16_to_f32 = adapter.cooperative_matrix_properties().iter().any(|c| {
        (c.m_size, c.n_size, c.k_size) == (16, 16, 16)
            && c.ab_type == wgpu::CooperativeScalarType::F16
            && c.cr_type == wgpu::CooperativeScalarType::F32
    });
    let subgroups_of_32 = (info.subgroup_min_size, info.subgroup_max_size) == (32, 32);
    let memory = adapter.limits().max_compute_workgroup_storage_size >= 48 << 10;
    adapter.features().contains(TENSOR_CORE_FEATURES) && f16_to_f32 && subgroups_of_32 && memory
}

impl Gpu {
    /// Opens the first adapter `choice` accepts, or returns None when there is none.
    pub fn open(choice: AdapterChoice) -> Result<Option<Gpu>> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        let mut usable: Vec<wgpu::Adapter> = adapters
            .into_iter()
            .filter(|a| a.features().contains(wgpu::Features::IMMEDIATES))
            .filter(|a| choice == AdapterChoice::Any || rank(a) < 3)
            .collect();
        usable.sort_by_key(rank);
        let Some(adapter) = usable.into_iter().next() else { return Ok(None) };
        let info = adapter.get_info();
        let limits = adapter.limits();
        if limits.max_immediate_size < IMMEDIATE_BYTES {
            bail!("GPU {} offers {} bytes of immediate data; floe needs {IMMEDIATE_BYTES}", info.name, limits.max_immediate_size);
        }
        if limits.max_storage_buffers_per_shader_stage < STORAGE_BINDINGS {
            bail!(
                "GPU {} offers {} storage buffers per kernel; floe needs {STORAGE_BINDINGS}",
                info.name,
                limits.max_storage_buffers_per_shader_stage
            );
        }
        if limits.max_compute_workgroup_storage_size < WORKGROUP_BYTES {
            bail!(
                "GPU {} offers {} bytes of workgroup memory; floe needs {WORKGROUP_BYTES}",
                info.name,
                limits.max_compute_workgroup_storage_size
            );
        }
        // Where the adapter has them: subgroup operations (faster reductions), timestamps inside passes (for
        // `floe bench --profile`) and tensor cores (`tensor_cores_of`).
        let timestamps = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        let mut optional = adapter.features() & (timestamps | wgpu::Features::SUBGROUP);
        // Slot buffers the host writes into, where host and GPU memory are one (see `Gpu::zero_copy`).
        let unified = matches!(info.device_type, wgpu::DeviceType::IntegratedGpu | wgpu::DeviceType::Cpu);
        let mappable = adapter.features() & wgpu::Features::MAPPABLE_PRIMARY_BUFFERS;
        let zero_copy = !mappable.is_empty() && std::env::var("FLOE_ZERO_COPY").map_or(unified, |v| v == "1");
        if zero_copy {
            optional |= mappable;
        }
        let tensor_cores = tensor_cores_of(&adapter);
        if tensor_cores {
            optional |= TENSOR_CORE_FEATURES;
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("floe"),
            required_features: wgpu::Features::IMMEDIATES | optional,
            required_limits: limits.clone(),
            // SAFETY: the one experimental feature asked for is cooperative matrices, used only by the kernels that
            // `tensor_cores_of` admits (16×16×16 f16 products with f32 sums, subgroups of 32), each checked against
            // its CPU twin (tests/kernels.rs) on the adapters that have them.
            experimental_features: match tensor_cores {
                true => unsafe { wgpu::ExperimentalFeatures::enabled() },
                false => wgpu::ExperimentalFeatures::disabled(),
            },
            ..Default::default()
        }))
        .with_context(|| format!("opening GPU {}", info.name))?;
        Ok(Some(Gpu {
            device,
            queue,
            info,
            limits,
            pipelines: RefCell::default(),
            bind_groups: Rc::default(),
            pool: Rc::default(),
            recorder: RefCell::default(),
            next_id: Cell::new(1),
            dispatches: Cell::new(0),
            syncs: Cell::new(0),
            wait_nanos: Cell::new(0),
            profiler: RefCell::new(None),
            subgroups: Cell::new(optional.contains(wgpu::Features::SUBGROUP)),
            tensor_cores: Cell::new(tensor_cores && !std::env::var("FLOE_TENSOR_CORES").is_ok_and(|v| v == "0")),
            zero_copy: Cell::new(zero_copy),
            staging: RefCell::new(None),
            chosen_readbacks: Rc::default(),
            chosen_readbacks_made: Cell::new(0),
            rope_table: RefCell::new(None),
            remap: RefCell::default(),
            expert_memory: Cell::new((DEFAULT_EXPERT_MEMORY, crate::store::CachePolicy::Lru)),
            slots: RefCell::new(None),
            weight_kernels: RefCell::default(),
            binding_cap: Cell::new(u64::MAX),
        }))
    }

    /// GPU memory for the expert slots of models with streamed experts uploaded from now on, and how the slots
    /// choose what to keep.
    pub fn set_expert_memory(&self, bytes: u64, policy: crate::store::CachePolicy) {
        self.expert_memory.set((bytes, policy));
    }

    /// Uses subgroup operations in the matrix kernels or not (the fallback); returns whether they are used now
    /// (never where the adapter lacks them).
    pub fn set_subgroups(&self, on: bool) -> bool {
        self.subgroups.set(on && self.device.features().contains(wgpu::Features::SUBGROUP));
        self.subgroups.get()
    }

    /// Reads streamed experts straight into their GPU slots or through staging (for models uploaded from now on);
    /// returns whether they are read so now (never where the device lacks MAPPABLE_PRIMARY_BUFFERS).
    pub fn set_zero_copy(&self, on: bool) -> bool {
        self.zero_copy.set(on && self.device.features().contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS));
        self.zero_copy.get()
    }

    /// Runs the prefill's dense matmuls on tensor cores or not (the fallback); returns whether they are used now
    /// (never where the adapter lacks them).
    pub fn set_tensor_cores(&self, on: bool) -> bool {
        self.tensor_cores.set(on && self.device.features().contains(TENSOR_CORE_FEATURES));
        self.tensor_cores.get()
    }

    /// Times every dispatch from now on (GPU timestamps around each), if the adapter can; says whether it can.
    pub fn start_profiling(&self) -> bool {
        let needed = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        if !self.device.features().contains(needed) {
            return false;
        }
        let queries = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count: MAX_QUERIES,
        });
        let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile"),
            size: MAX_QUERIES as u64 * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        *self.profiler.borrow_mut() = Some(Profiler { queries, resolved, pending: vec![], totals: HashMap::new() });
        true
    }

    /// GPU seconds and dispatch counts per kernel since profiling started, the most expensive first.
    pub fn profile(&self) -> Vec<(&'static str, f64, u64)> {
        let mut rows: Vec<_> = self.profiler.borrow().iter().flat_map(|p| p.totals.iter().map(|(k, v)| (*k, v.0, v.1))).collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        rows
    }

    /// Every adapter wgpu finds, one line each, saying whether floe can use it (for "no GPU" errors).
    pub fn adapters() -> Vec<String> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
            .iter()
            .map(|a| {
                let i = a.get_info();
                let usable = if a.features().contains(wgpu::Features::IMMEDIATES) { "usable" } else { "lacks immediates" };
                format!("{} ({:?}, {:?}): {usable}", i.name, i.device_type, i.backend)
            })
            .collect()
    }

    /// One line naming the adapter: name, API, driver.
    pub fn describe(&self) -> String {
        let i = &self.info;
        let subgroups = if self.subgroups.get() { "subgroups" } else { "no subgroups" };
        let tensor_cores = if self.tensor_cores.get() { ", tensor cores" } else { "" };
        let zero_copy = if self.zero_copy.get() { ", streamed experts zero-copy" } else { "" };
        format!("{} ({:?}, {:?}, driver {} {}, {subgroups}{tensor_cores}{zero_copy})", i.name, i.device_type, i.backend, i.driver, i.driver_info)
    }

    /// Bind groups held in the cache (it must not grow with the tokens generated).
    pub fn cached_bind_groups(&self) -> usize {
        self.bind_groups.borrow().len()
    }

    /// Buffers made to read chosen tokens back (it must not grow with the tokens generated).
    pub fn chosen_readbacks_made(&self) -> usize {
        self.chosen_readbacks_made.get()
    }

    /// The largest buffer one binding may cover on this GPU.
    pub fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.binding_cap.get())
    }

    /// Binds at most `bytes` per buffer from now on, as a GPU with a smaller limit would (tests of the splitting
    /// of large matrices use it).
    pub fn limit_bindings(&self, bytes: u64) {
        self.binding_cap.set(bytes);
    }

    fn new_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// A buffer holding `bytes` (padded to 4), for weights and other inputs; `what` names it in errors.
    fn upload(&self, what: &str, bytes: &[u8]) -> Result<Buf> {
        let size = (bytes.len().max(4).next_multiple_of(4)) as u64;
        if size > self.max_binding() {
            bail!(
                "{what} takes {size} bytes, more than this GPU's largest binding ({} bytes); use --backend cpu",
                self.max_binding()
            );
        }
        let buffer = if bytes.len() as u64 == size {
            self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(size as usize, 0);
            self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: &padded,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
        };
        Ok(self.wrap(buffer))
    }

    /// A buffer that is not pooled, with a new identity.
    fn wrap(&self, buffer: wgpu::Buffer) -> Buf {
        Buf { id: self.new_id(), buffer, pool: None, bind_groups: self.bind_groups.clone() }
    }

    /// A pooled scratch buffer of at least `len` f32 (or u32) values; its contents are undefined.
    fn scratch(&self, len: usize) -> Buf {
        let size = ((len.max(1) * 4) as u64).next_power_of_two().max(256);
        if let Some((id, buffer)) = self.pool.borrow_mut().free.get_mut(&size).and_then(|v| v.pop()) {
            return Buf { id, buffer, pool: Some(self.pool.clone()), bind_groups: self.bind_groups.clone() };
        }
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Buf { id: self.new_id(), buffer, pool: Some(self.pool.clone()), bind_groups: self.bind_groups.clone() }
    }

    /// A buffer of `len` zeros that is not pooled (recurrent states, caches).
    fn zeros(&self, len: usize) -> Result<Buf> {
        let size = (len.max(1) * 4) as u64;
        if size > self.max_binding() {
            bail!("a GPU state of {size} bytes is over this GPU's largest binding ({} bytes)", self.max_binding());
        }
        // wgpu zero-initializes new buffers.
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(self.wrap(buffer))
    }

    fn pipeline(&self, name: &'static str) -> Rc<Pipeline> {
        if let Some(p) = self.pipelines.borrow().get(name) {
            return p.clone();
        }
        let p = Rc::new(build_pipeline(&self.device, name, self.unchecked(name)));
        self.pipelines.borrow_mut().insert(name, p.clone());
        p
    }

    /// Whether kernel `name` is compiled without naga's bounds checks and loop bounding: the prefill kernels that
    /// measured faster so (expert rows, tiles, the delta rule's walk and its gated norm, tensor-core matmuls) on
    /// Vulkan, where wgpu turns on robust buffer access for the device, so a storage access out of bounds stays
    /// harmless. On the H200 the checks made the expert rows kernels 27% slower; the decode kernels ran as fast or
    /// slower without them
    /// (docs/PERF.md, "Bounds checks in prefill kernels").
    fn unchecked(&self, name: &str) -> bool {
        const PREFILL: [&str; 7] = ["_rows", "_nt64", "delta_rule", "rms_norm_gated", "gemm_f16", "_dequant", "x_f16"];
        self.info.backend == wgpu::Backend::Vulkan && PREFILL.iter().any(|k| name.contains(k))
    }

    /// Builds the pipelines of `names` now, on all cores (drivers compile each for tens of milliseconds; built
    /// one at a time on first use they delayed a model's first token by over a second).
    fn build_pipelines(&self, names: &[&'static str]) {
        if names.is_empty() {
            return;
        }
        let missing: Vec<&'static str> = names.iter().copied().filter(|n| !self.pipelines.borrow().contains_key(n)).collect();
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get()).min(missing.len().max(1));
        let built: Vec<(&'static str, Pipeline)> = std::thread::scope(|scope| {
            let chunks: Vec<_> = missing
                .chunks(missing.len().div_ceil(threads).max(1))
                .map(|chunk| {
                    let device = &self.device;
                    let unchecked: Vec<bool> = chunk.iter().map(|n| self.unchecked(n)).collect();
                    scope.spawn(move || chunk.iter().zip(unchecked).map(|(&n, u)| (n, build_pipeline(device, n, u))).collect::<Vec<_>>())
                })
                .collect();
            chunks.into_iter().flat_map(|h| h.join().expect("building a pipeline")).collect()
        });
        let mut pipelines = self.pipelines.borrow_mut();
        for (name, p) in built {
            pipelines.insert(name, Rc::new(p));
        }
    }

    /// Records one dispatch of kernel `name` over `grid` workgroups, binding `buffers` in order and passing
    /// `params` as immediates.
    fn dispatch(&self, name: &'static str, buffers: &[&Buf], params: &[u32], grid: (u32, u32, u32)) {
        assert!(grid.0 <= 65535 && grid.1 <= 65535 && grid.2 <= 65535, "{name}: grid {grid:?} is too large");
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return;
        }
        let p = self.pipeline(name);
        let mut ids = [0u64; STORAGE_BINDINGS as usize];
        assert!(buffers.len() <= ids.len(), "{name}: more than {STORAGE_BINDINGS} bindings");
        ids.iter_mut().zip(buffers).for_each(|(id, b)| *id = b.id);
        let key = (name, ids);
        let mut groups = self.bind_groups.borrow_mut();
        let group = groups.entry(key).or_insert_with(|| {
            let entries: Vec<wgpu::BindGroupEntry> = buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.buffer.as_entire_binding() })
                .collect();
            self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(name), layout: &p.layout, entries: &entries })
        });
        let mut rec = self.recorder.borrow_mut();
        let rec = &mut *rec;
        let encoder = rec.encoder.get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
        let pass = rec.pass.get_or_insert_with(|| encoder.begin_compute_pass(&Default::default()).forget_lifetime());
        pass.set_pipeline(&p.pipeline);
        pass.set_bind_group(0, &*group, &[]);
        pass.set_immediates(0, bytemuck::cast_slice(params));
        let mut profiler = self.profiler.borrow_mut();
        let timed = profiler.as_mut().filter(|p| (p.pending.len() as u32 + 1) * 2 <= MAX_QUERIES);
        match timed {
            Some(prof) => {
                let i = prof.pending.len() as u32 * 2;
                pass.write_timestamp(&prof.queries, i);
                pass.dispatch_workgroups(grid.0, grid.1, grid.2);
                pass.write_timestamp(&prof.queries, i + 1);
                prof.pending.push(name);
            }
            None => pass.dispatch_workgroups(grid.0, grid.1, grid.2),
        }
        self.dispatches.set(self.dispatches.get() + 1);
        rec.recorded += 1;
        if rec.recorded >= rec.batch.clamp(FIRST_SUBMIT, SUBMIT_EVERY) {
            drop(rec.pass.take());
            if let Some(encoder) = rec.encoder.take() {
                self.submit(encoder);
            }
            rec.recorded = 0;
            rec.batch = (rec.batch * 2).clamp(FIRST_SUBMIT, SUBMIT_EVERY);
        }
    }

    /// Submits `encoder`, then asks for the staging buffers its copies read to be mapped again.
    fn submit(&self, encoder: wgpu::CommandEncoder) -> wgpu::SubmissionIndex {
        let index = self.queue.submit([encoder.finish()]);
        for (buffer, mapped) in self.remap.borrow_mut().drain(..) {
            buffer.slice(..).map_async(wgpu::MapMode::Write, move |r| mapped.store(r.is_ok(), std::sync::atomic::Ordering::Release));
        }
        index
    }

    /// Submits what is recorded (without waiting); returns the submission's index, if there was anything to submit.
    fn flush(&self) -> Option<wgpu::SubmissionIndex> {
        let mut rec = self.recorder.borrow_mut();
        drop(rec.pass.take());
        rec.recorded = 0;
        let encoder = rec.encoder.take();
        drop(rec);
        encoder.map(|e| self.submit(e))
    }

    /// The free lists sorted, so that the next forward call, whatever order this one freed its buffers in, is handed
    /// the same buffers in the same order and finds its bind groups cached.
    fn settle_pool(&self) {
        for free in self.pool.borrow_mut().free.values_mut() {
            free.sort_by_key(|&(id, _)| std::cmp::Reverse(id));
        }
    }

    /// Records a copy of `size` bytes between buffers, in order with the dispatches around it.
    fn copy(&self, src: &wgpu::Buffer, src_offset: u64, dst: &Buf, dst_offset: u64, size: u64) {
        let mut rec = self.recorder.borrow_mut();
        drop(rec.pass.take());
        let encoder = rec.encoder.get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
        encoder.copy_buffer_to_buffer(src, src_offset, &dst.buffer, dst_offset, size);
    }

    /// Records a copy of the first `size` bytes of `src` into `dst` (a buffer the CPU maps), in order.
    fn copy_out(&self, src: &Buf, dst: &wgpu::Buffer, size: u64) {
        let mut rec = self.recorder.borrow_mut();
        drop(rec.pass.take());
        let encoder = rec.encoder.get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
        encoder.copy_buffer_to_buffer(&src.buffer, 0, dst, 0, size);
    }

    /// Maps `buffer` for writing again after the next submission (which holds copies from it).
    fn remap_after_submit(&self, buffer: &wgpu::Buffer, mapped: &Arc<std::sync::atomic::AtomicBool>) {
        self.remap.borrow_mut().push((buffer.clone(), mapped.clone()));
    }

    /// Waits until the device has run everything submitted (a CPU↔GPU round trip), counting the wait.
    fn wait_for_device(&self) -> Result<()> {
        self.wait_for(None)
    }

    /// Waits until the device has run `submission` (everything submitted: None), counting the wait.
    fn wait_for(&self, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
        let start = std::time::Instant::now();
        let poll = wgpu::PollType::Wait { submission_index: submission, timeout: None };
        self.device.poll(poll).map_err(|e| anyhow!("waiting for the GPU: {e}"))?;
        self.syncs.set(self.syncs.get() + 1);
        self.recorder.borrow_mut().batch = FIRST_SUBMIT;
        self.wait_nanos.set(self.wait_nanos.get() + start.elapsed().as_nanos() as u64);
        Ok(())
    }

    /// Submits what was recorded and copies the first `len` values of `buf` back (the one CPU↔GPU wait).
    fn read_back(&self, buf: &Buf, len: usize) -> Result<Vec<u8>> {
        Ok(self.read_back_all(&[(buf, len)])?.remove(0))
    }

    /// [`Gpu::read_back`] of several buffers with one wait.
    fn read_back_all(&self, parts: &[(&Buf, usize)]) -> Result<Vec<Vec<u8>>> {
        let at: Vec<u64> = parts.iter().scan(0, |end, &(_, len)| Some(std::mem::replace(end, *end + (len * 4) as u64))).collect();
        let bytes = parts.iter().map(|&(_, len)| (len * 4) as u64).sum::<u64>();
        // One staging buffer, kept and grown as needed: a decode step reads back 4 bytes and allocates nothing.
        let mut kept = self.staging.borrow_mut();
        if kept.as_ref().is_none_or(|b| b.size() < bytes.max(4)) {
            *kept = Some(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size: bytes.max(4).next_power_of_two(),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let staging = kept.as_ref().unwrap();
        let mut rec = self.recorder.borrow_mut();
        drop(rec.pass.take());
        rec.recorded = 0;
        let mut encoder = rec.encoder.take().unwrap_or_else(|| self.device.create_command_encoder(&Default::default()));
        drop(rec);
        for (&(buf, len), &offset) in parts.iter().zip(&at) {
            encoder.copy_buffer_to_buffer(&buf.buffer, 0, &staging, offset, (len * 4) as u64);
        }
        let mut profiler = self.profiler.borrow_mut();
        let timestamps = match profiler.as_mut().filter(|p| !p.pending.is_empty()) {
            Some(prof) => {
                let n = prof.pending.len() as u64 * 2;
                let out = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("profile readback"),
                    size: n * 8,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                encoder.resolve_query_set(&prof.queries, 0..n as u32, &prof.resolved, 0);
                encoder.copy_buffer_to_buffer(&prof.resolved, 0, &out, 0, n * 8);
                Some(out)
            }
            None => None,
        };
        self.submit(encoder);
        self.settle_pool();
        staging.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        if let Some(out) = &timestamps {
            out.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        }
        self.wait_for_device()?;
        if let (Some(out), Some(prof)) = (timestamps, profiler.as_mut()) {
            let view = out.slice(..).get_mapped_range().map_err(|e| anyhow!("reading GPU timestamps: {e}"))?;
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&view);
            let period = self.queue.get_timestamp_period() as f64 * 1e-9;
            for (name, pair) in prof.pending.drain(..).zip(ticks.chunks(2)) {
                let total = prof.totals.entry(name).or_default();
                total.0 += pair[1].saturating_sub(pair[0]) as f64 * period;
                total.1 += 1;
            }
        }
        let view = staging.slice(..bytes.max(4)).get_mapped_range().map_err(|e| anyhow!("reading GPU results: {e}"))?;
        let data = parts.iter().zip(&at).map(|(&(_, len), &offset)| view[offset as usize..offset as usize + len * 4].to_vec()).collect();
        drop(view);
        staging.unmap();
        Ok(data)
    }
}

/// Compiles kernel `name` into a compute pipeline with its bind-group layout; `unchecked`: without naga's bounds
/// checks and loop bounding (see `Gpu::unchecked`).
fn build_pipeline(device: &wgpu::Device, name: &'static str, unchecked: bool) -> Pipeline {
    let kernel = kernels::find(name).unwrap_or_else(|| panic!("no kernel named {name}"));
    let source = wgpu::ShaderModuleDescriptor { label: Some(name), source: wgpu::ShaderSource::Wgsl(kernel.source.into()) };
    let module = match unchecked {
        // SAFETY: only on Vulkan with robust buffer access (Gpu::unchecked), for kernels whose workgroup-memory
        // indices stay in range by construction, each checked against its CPU twin (tests/kernels.rs).
        true => unsafe { device.create_shader_module_trusted(source, wgpu::ShaderRuntimeChecks::unchecked()) },
        false => device.create_shader_module(source),
    };
    let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
        .bindings
        .iter()
        .map(|&(binding, read_only)| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(name), entries: &entries });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(name),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: IMMEDIATE_BYTES,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(name),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    Pipeline { pipeline, layout }
}

/// A 1-D launch of `n` threads in workgroups of 64, folded into two dimensions (kernels use `flat_index`).
fn grid_1d(n: usize) -> (u32, u32, u32) {
    let groups = n.div_ceil(64).max(1) as u32;
    let x = groups.min(65535);
    (x, groups.div_ceil(x), 1)
}
