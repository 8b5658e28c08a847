//! Streamed experts on the GPU: a cache of expert slots in GPU memory (`--gpu-mem`), filled from the host store
//! (crate::store) through a mapped staging buffer and buffer-to-buffer copies, never `queue.write_buffer`; or, on
//! adapters that share the host's memory (`Gpu::zero_copy`), read straight into the mapped slots (no copy, but a
//! wait for the GPU before each layer's misses, as the seed's serial mode on unified memory).
//!
//! Per MoE block: the router's choices are read back (one CPU↔GPU round trip per layer), each chosen expert is
//! looked up in the slots, the misses are fetched (host cache or one pread each), written into the staging buffer
//! and copied into the slots they evict, and the expert kernels run on slot numbers instead of expert ids. A
//! prefill whose tokens need more experts than there are slots runs in chunks of tokens that fit.
//!
//! Slots live in buffers of at most one binding each (2 GiB on Vulkan); layer l uses buffer l mod n, so each
//! buffer's slots are shared by its layers under the cache policy. Where the GPU fuses the shared expert with
//! the routed ones (see ops.rs), each layer's shared expert has a fixed slot of its own.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;

use anyhow::{anyhow, ensure, Result};

use super::{Buf, Gpu};
use crate::store::{Cache, CachePolicy, ExpertStore};

/// Bytes of the staging buffer experts are uploaded through (at least one layer's K records).
const STAGING_BYTES: u64 = 128 << 20;

pub struct ExpertSlots {
    pub store: Arc<ExpertStore>,
    /// Bytes between slots (a record rounded up to 256).
    pub stride: u64,
    pools: Vec<SlotPool>,
    /// Two, used in turn: a prefill reads the next batch of records into one while the GPU copies from the other.
    /// None: zero-copy, records are read into the slots themselves.
    staging: Option<[Staging; 2]>,
    next_staging: std::cell::Cell<usize>,
    /// Per layer, the slot of each (token, j) pair for the expert kernels: kept, so a decode step allocates
    /// nothing and finds its bind groups cached.
    slot_ids: RefCell<Vec<Option<Rc<Buf>>>>,
}

struct SlotPool {
    buf: Rc<Buf>,
    cache: RefCell<Cache<(usize, usize)>>,
    /// Slots before the cache's own: one per layer of this pool, holding its shared expert (when fused).
    reserved: usize,
}

/// A persistently mapped upload buffer for `records` records, re-armed (mapped again) after each use.
struct Staging {
    buffer: wgpu::Buffer,
    records: usize,
    mapped: Arc<AtomicBool>,
}

impl ExpertSlots {
    /// Slots for `store`'s experts in `gpu_bytes` of GPU memory (plus one slot per layer for the shared expert
    /// when `shared`), split into buffers the GPU can bind.
    pub fn new(gpu: &Gpu, store: Arc<ExpertStore>, gpu_bytes: u64, policy: CachePolicy, shared: bool) -> Result<ExpertSlots> {
        let stride = (store.record_bytes as u64).next_multiple_of(256);
        let k = store.experts_per_token;
        let routed = (gpu_bytes / stride) as usize;
        ensure!(
            routed >= k,
            "--gpu-mem {gpu_bytes} holds {routed} experts; one layer's {k} experts need at least {} bytes",
            k as u64 * stride
        );
        let per_buffer = (gpu.max_binding().min(gpu.limits.max_buffer_size) / stride) as usize;
        let layers = store.num_layers();
        let reserved_total = if shared { layers } else { 0 };
        let pools_needed = (1..=layers.max(1))
            .find(|&n| routed.div_ceil(n) + reserved_total.div_ceil(n) <= per_buffer)
            .ok_or_else(|| anyhow!("an expert record of {stride} bytes does not fit this GPU's bindings"))?;
        let routed_per_pool = routed / pools_needed;
        ensure!(
            routed_per_pool >= k,
            "--gpu-mem {gpu_bytes} split into {pools_needed} GPU buffers leaves {routed_per_pool} experts each, fewer than {k}"
        );
        // The cache policy of the slots; "os" (no host cache) still needs one here: LRU.
        let slot_policy = if policy == CachePolicy::Lfu { CachePolicy::Lfu } else { CachePolicy::Lru };
        let zero_copy = gpu.zero_copy.get();
        let pools = (0..pools_needed)
            .map(|p| {
                let reserved = if shared { (p..layers).step_by(pools_needed).count() } else { 0 };
                let mappable = if zero_copy { wgpu::BufferUsages::MAP_WRITE } else { wgpu::BufferUsages::empty() };
                let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("expert slots"),
                    size: (reserved + routed_per_pool) as u64 * stride,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | mappable,
                    mapped_at_creation: false,
                });
                SlotPool {
                    buf: Rc::new(gpu.wrap(buffer)),
                    cache: RefCell::new(Cache::new(routed_per_pool, slot_policy)),
                    reserved,
                }
            })
            .collect();
        // One decode step's misses of a layer at least; a prefill reads its experts in batches of this size, so
        // ~128 MiB keeps the disk's queue deep (16 records ran a 35B prefill at 1.3 GB/s of 2).
        let records = k.max((STAGING_BYTES / stride) as usize).min(routed_per_pool);
        let staging = || {
            let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("expert staging"),
                size: records as u64 * stride,
                usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            });
            Staging { buffer, records, mapped: Arc::new(AtomicBool::new(true)) }
        };
        Ok(ExpertSlots {
            store,
            stride,
            pools,
            staging: (!zero_copy).then(|| [staging(), staging()]),
            next_staging: Default::default(),
            slot_ids: Default::default(),
        })
    }

    fn pool(&self, layer: usize) -> &SlotPool {
        &self.pools[layer % self.pools.len()]
    }

    /// The buffer holding layer `layer`'s slots.
    pub fn buffer(&self, layer: usize) -> Rc<Buf> {
        self.pool(layer).buf.clone()
    }

    /// Whether expert `e` of `layer` is in a slot now.
    pub(super) fn resident(&self, layer: usize, e: usize) -> bool {
        self.pools.get(layer % self.pools.len()).is_some_and(|p| p.cache.borrow().contains((layer, e)))
    }

    /// The fixed slot of layer `layer`'s shared expert.
    fn shared_slot(&self, layer: usize) -> u32 {
        (layer / self.pools.len()) as u32
    }

    /// Layer `layer`'s buffer of pair slots, holding `slots`. Written through the queue: the write lands before
    /// the next submission, and whatever read this buffer before was submitted already (a CPU↔GPU sync per
    /// layer; a submission after each chunk of a prefill).
    pub(super) fn slot_ids(&self, gpu: &Gpu, layer: usize, slots: &[u32]) -> Result<Rc<Buf>> {
        let mut kept = self.slot_ids.borrow_mut();
        if kept.len() <= layer {
            kept.resize(layer + 1, None);
        }
        if kept[layer].as_ref().is_none_or(|b| b.buffer.size() < (slots.len() * 4) as u64) {
            kept[layer] = Some(Rc::new(gpu.zeros(slots.len().next_power_of_two())?));
        }
        let buf = kept[layer].clone().expect("made above");
        gpu.queue.write_buffer(&buf.buffer, 0, bytemuck::cast_slice(slots));
        Ok(buf)
    }

    /// Puts layer `layer`'s shared expert (a record in the store's layout) into its fixed slot.
    pub fn place_shared(&self, gpu: &Gpu, layer: usize, record: &[u8]) {
        let offset = self.shared_slot(layer) as u64 * self.stride;
        gpu.queue.write_buffer(&self.pool(layer).buf.buffer, offset, record);
    }
}

impl Gpu {
    /// Makes the experts that `ids` (expert per (token, j) pair, `routed` = the fused shared expert) name for
    /// pairs `first..` resident, as many tokens' worth as fit at once; returns the pairs covered (a multiple of
    /// `k`) and the slot of each pair of the whole call (other entries 0).
    pub(super) fn stage_experts(
        &self,
        slots: &ExpertSlots,
        layer: usize,
        ids: &[u32],
        k: usize,
        routed: usize,
        first: usize,
    ) -> Result<(usize, Vec<u32>)> {
        let pool = slots.pool(layer);
        let mut cache = pool.cache.borrow_mut();
        let limit = cache.capacity();
        let counters = &slots.store.counters[layer];
        // Tokens from `first` on, while their distinct routed experts fit the slots.
        let mut chosen: Vec<usize> = Vec::new();
        let mut end = first;
        while end < ids.len() {
            let mut with = chosen.clone();
            for &e in &ids[end..end + k] {
                if (e as usize) < routed && !with.contains(&(e as usize)) {
                    with.push(e as usize);
                }
            }
            if with.len() > limit {
                break;
            }
            chosen = with;
            end += k;
        }
        ensure!(end > first, "one token's experts do not fit the GPU's expert slots");
        let mut slot_of_expert = vec![0u32; routed];
        let mut pinned = Vec::with_capacity(chosen.len());
        let mut misses: Vec<(usize, usize)> = Vec::new();
        for &e in &chosen {
            counters.device_lookups.fetch_add(1, Relaxed);
            let slot = match cache.get((layer, e)) {
                Some(s) => {
                    counters.device_hits.fetch_add(1, Relaxed);
                    s
                }
                None => {
                    let s = cache.insert((layer, e), &pinned).expect("a slot outside this chunk's pinned ones");
                    misses.push((e, s));
                    s
                }
            };
            pinned.push(slot);
            slot_of_expert[e] = (pool.reserved + slot) as u32;
        }
        drop(cache);
        // In the order they are stored, as many as the staging buffer holds at a time: the store reads runs of
        // neighbours at once, and the GPU copies one batch while the next is read.
        misses.sort_unstable();
        let batch = slots.staging.as_ref().map_or(misses.len().max(1), |s| s[0].records);
        let mut batches = misses.chunks(batch).peekable();
        while let Some(batch) = batches.next() {
            self.upload_records(slots, pool, layer, batch)?;
            if batches.peek().is_some() {
                self.flush();
            }
        }
        let mut slot_ids = vec![0u32; ids.len()];
        for pair in first..end {
            let e = ids[pair] as usize;
            slot_ids[pair] = if e == routed { slots.shared_slot(layer) } else { slot_of_expert[e] };
        }
        Ok((end - first, slot_ids))
    }

    /// Fetches `misses` (expert, cache slot) from the store and copies them into their slots via staging: each
    /// record is written into the mapped staging buffer by the thread that read it, in parallel.
    fn upload_records(&self, slots: &ExpertSlots, pool: &SlotPool, layer: usize, misses: &[(usize, usize)]) -> Result<()> {
        let Some(staging) = &slots.staging else { return self.place_records(slots, pool, layer, misses) };
        let turn = slots.next_staging.get();
        slots.next_staging.set(1 - turn);
        let staging = &staging[turn];
        if !staging.mapped.load(Acquire) {
            // Usually its copies ran long ago (while the other buffer was filled): collect the mapping.
            let _ = self.device.poll(wgpu::PollType::Poll);
        }
        if !staging.mapped.load(Acquire) {
            // Its last copies must have run: submit them if still recorded, then wait for the mapping.
            self.flush();
            self.wait_for_device()?;
            ensure!(staging.mapped.load(Acquire), "the expert staging buffer did not map");
        }
        let (stride, bytes) = (slots.stride as usize, slots.store.record_bytes);
        let experts: Vec<usize> = misses.iter().map(|&(e, _)| e).collect();
        {
            let mut view = staging.buffer.slice(..).get_mapped_range_mut().map_err(|e| anyhow!("expert staging: {e}"))?;
            let mut whole = view.slice(..);
            let base = MappedPtr(whole.as_raw_element_ptr().as_ptr());
            let records = slots.store.fetch(layer, &experts, |i, record| {
                assert!(record.len() == bytes && (i + 1) * stride <= staging.records * stride);
                // SAFETY: region i of the mapped staging buffer, written by this call only (each i once); the
                // mapping outlives the fetch. Written, never read (the memory may be write-combined).
                unsafe { std::ptr::copy_nonoverlapping(record.as_ptr(), base.at(i * stride), bytes) };
            })?;
            slots.store.recycle(records);
        }
        staging.buffer.unmap();
        staging.mapped.store(false, Release);
        for (i, &(_, slot)) in misses.iter().enumerate() {
            let dst = (pool.reserved + slot) as u64 * slots.stride;
            self.copy(&staging.buffer, (i * stride) as u64, &pool.buf, dst, bytes as u64);
        }
        self.remap_after_submit(&staging.buffer, &staging.mapped);
        Ok(())
    }

    /// Zero-copy [`Gpu::upload_records`]: once the GPU has run everything that reads the slots' buffer, maps it
    /// and has each record written into its slot by the thread that read it.
    fn place_records(&self, slots: &ExpertSlots, pool: &SlotPool, layer: usize, misses: &[(usize, usize)]) -> Result<()> {
        // Everything recorded or written through the queue so far, submitted (a mapping waits for it to run).
        self.flush();
        self.queue.submit([]);
        let buffer = &pool.buf.buffer;
        let mapped = Arc::new(AtomicBool::new(false));
        let done = mapped.clone();
        buffer.slice(..).map_async(wgpu::MapMode::Write, move |r| done.store(r.is_ok(), Release));
        self.wait_for_device()?;
        ensure!(mapped.load(Acquire), "the expert slots did not map");
        let (stride, bytes) = (slots.stride as usize, slots.store.record_bytes);
        let experts: Vec<usize> = misses.iter().map(|&(e, _)| e).collect();
        // Unmapped below whatever happens, so that a failed read leaves the slots usable (and the error clear).
        let result = (|| {
            let mut view = buffer.slice(..).get_mapped_range_mut().map_err(|e| anyhow!("expert slots: {e}"))?;
            let mut whole = view.slice(..);
            let base = MappedPtr(whole.as_raw_element_ptr().as_ptr());
            let size = buffer.size() as usize;
            let offsets: Vec<usize> = misses.iter().map(|&(_, slot)| (pool.reserved + slot) * stride).collect();
            slots.store.fetch(layer, &experts, |i, record| {
                let at = offsets[i];
                assert!(record.len() == bytes && at + bytes <= size);
                // SAFETY: the slot at offsets[i] of the mapped slots, written by this call only (each once: the
                // misses are distinct slots); the mapping outlives the fetch. Written, never read.
                unsafe { std::ptr::copy_nonoverlapping(record.as_ptr(), base.at(at), bytes) };
            })
        })();
        buffer.unmap();
        slots.store.recycle(result?);
        Ok(())
    }
}

/// The start of a mapped buffer, shared by the threads that write disjoint parts of it.
struct MappedPtr(*mut u8);

// SAFETY: the threads write disjoint ranges (see upload_records).
unsafe impl Sync for MappedPtr {}

impl MappedPtr {
    fn at(&self, offset: usize) -> *mut u8 {
        // SAFETY: callers stay within the mapping.
        unsafe { self.0.add(offset) }
    }
}
