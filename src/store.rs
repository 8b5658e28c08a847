//! Expert streaming: a floe model's routed experts read from its per-layer expert files as tokens route to them,
//! one `pread` per expert record, instead of being held in memory. Dense weights stay resident.
//!
//! [`ExpertStore`] owns the open expert files, a host (RAM) cache of records under a byte budget and the counters
//! `--timing` and `floe bench` report. A backend keeps its own faster cache in front of it (the GPU's expert
//! slots, gpu/stream.rs); both use the same replacement policies ([`Cache`]).
//!
//! Every record read from disk is checked against the manifest's xxh3 before it is used: a short read, an I/O
//! error or a file changed under the engine stops the generation with an error naming the layer and expert.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::hash::Hash;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use crate::format::{entry_matrix, FloeModel, TensorEntry};
use crate::weights::ExpertWeights;

/// Spare records kept for reuse (a layer's misses at most, in practice).
const SPARE_RECORDS: usize = 64;

/// The most bytes one read takes: misses of experts stored one after the other are read together up to this.
const RUN_BYTES: u64 = 16 << 20;

/// When a streaming backend reads ahead the experts it guesses the next layer will need (`--prefetch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Prefetch {
    Off,
    /// In forward calls of several tokens (a prefill), where the guesses (the union over the tokens) are
    /// many and mostly right; not in decode steps, where on the slower disks measured the wrong ones cost more
    /// than the overlap gains (a faster one gained 7–12% with `on`: docs/PERF.md).
    Prefill,
    /// In every forward call.
    On,
}

/// Which records a cache gives up when it is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CachePolicy {
    /// No host cache: every miss of the backend's cache reads the file, and the OS page cache keeps what it can
    /// (the seed's best policy on Macs).
    Os,
    /// Least recently used.
    Lru,
    /// Least frequently used (ties: least recently): keeps the experts routing favours.
    Lfu,
}

/// A replacement policy over `capacity` numbered slots: which key each holds, and which to give up.
pub struct Cache<K> {
    policy: CachePolicy,
    slot_of: HashMap<K, usize>,
    slots: Vec<SlotUse<K>>,
    clock: u64,
}

struct SlotUse<K> {
    key: Option<K>,
    last_used: u64,
    uses: u64,
}

impl<K: Copy + Eq + Hash> Cache<K> {
    pub fn new(capacity: usize, policy: CachePolicy) -> Cache<K> {
        let slots = (0..capacity).map(|_| SlotUse { key: None, last_used: 0, uses: 0 }).collect();
        Cache { policy, slot_of: HashMap::new(), slots, clock: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Whether `key` is held (not counted as a use).
    pub fn contains(&self, key: K) -> bool {
        self.slot_of.contains_key(&key)
    }

    /// The slot holding `key`, counted as a use.
    pub fn get(&mut self, key: K) -> Option<usize> {
        let slot = *self.slot_of.get(&key)?;
        self.clock += 1;
        let s = &mut self.slots[slot];
        s.last_used = self.clock;
        s.uses += 1;
        Some(slot)
    }

    /// A slot for `key` (not present): an empty one, else the policy's victim among those `pinned` does not hold
    /// (None when every slot is pinned). The caller fills the slot.
    pub fn insert(&mut self, key: K, pinned: &[usize]) -> Option<usize> {
        let free = self.slots.iter().position(|s| s.key.is_none());
        let slot = free.or_else(|| {
            let candidates = (0..self.slots.len()).filter(|i| !pinned.contains(i));
            match self.policy {
                CachePolicy::Lfu => candidates.min_by_key(|&i| (self.slots[i].uses, self.slots[i].last_used)),
                CachePolicy::Lru | CachePolicy::Os => candidates.min_by_key(|&i| self.slots[i].last_used),
            }
        })?;
        if let Some(old) = self.slots[slot].key.take() {
            self.slot_of.remove(&old);
        }
        self.clock += 1;
        self.slots[slot] = SlotUse { key: Some(key), last_used: self.clock, uses: 1 };
        self.slot_of.insert(key, slot);
        Some(slot)
    }
}

/// A 4 KiB page: records are held in whole pages, aligned for O_DIRECT reads.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// One expert record in host memory (page-aligned, so its matrices are read in place and O_DIRECT can fill it).
pub struct Record {
    pages: Vec<Page>,
    len: usize,
}

impl Record {
    fn new(len: usize) -> Record {
        Record { pages: vec![Page([0; 4096]); len.div_ceil(4096)], len }
    }

    /// The whole pages (what an O_DIRECT read fills: a multiple of the block size).
    fn pages_mut(&mut self) -> &mut [u8] {
        // SAFETY: `Page` is plain bytes; the slice covers exactly the vector's pages.
        unsafe { std::slice::from_raw_parts_mut(self.pages.as_mut_ptr().cast::<u8>(), self.pages.len() * 4096) }
    }
}

impl AsRef<[u8]> for Record {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: as in `pages_mut`; `len` is at most the pages' bytes.
        unsafe { std::slice::from_raw_parts(self.pages.as_ptr().cast::<u8>(), self.len) }
    }
}

/// Where records are read from: the layer files (tests substitute a failing source).
pub trait RecordSource: Send + Sync {
    /// Reads up to `dst.len()` bytes at `offset`; the count read, like `pread`.
    fn read_at(&self, dst: &mut [u8], offset: u64) -> std::io::Result<usize>;

    /// Reads the bytes from `offset` on into `bufs` in turn, like `preadv`; the count read. Here: one
    /// `read_at` per buffer, up to the first short one.
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], mut offset: u64) -> std::io::Result<usize> {
        let mut total = 0;
        for buf in bufs {
            let n = self.read_at(buf, offset)?;
            total += n;
            offset += n as u64;
            if n < buf.len() {
                break;
            }
        }
        Ok(total)
    }
}

impl RecordSource for File {
    fn read_at(&self, dst: &mut [u8], offset: u64) -> std::io::Result<usize> {
        #[cfg(unix)]
        return std::os::unix::fs::FileExt::read_at(self, dst, offset);
        #[cfg(windows)]
        return std::os::windows::fs::FileExt::seek_read(self, dst, offset);
    }

    /// One `preadv`: a single request to the disk however many records it fills.
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        let iov: Vec<libc::iovec> =
            bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
        let offset = libc::off_t::try_from(offset).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: each iovec covers one buffer borrowed mutably for the call; `iov` outlives it.
        let n = unsafe { libc::preadv(self.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, offset) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// What streaming did in one layer since the model was loaded (all counters only grow).
#[derive(Default)]
pub struct StreamCounters {
    /// Time spent waiting for the router's choices to come back from the GPU (nanoseconds).
    pub route_wait_nanos: AtomicU64,
    /// Expert lookups in the backend's own cache (GPU slots) and how many found the expert there.
    pub device_lookups: AtomicU64,
    pub device_hits: AtomicU64,
    /// Lookups in the host cache and hits.
    pub ram_lookups: AtomicU64,
    pub ram_hits: AtomicU64,
    /// Records read from disk, their bytes, and the wall time spent waiting for them (nanoseconds).
    pub disk_reads: AtomicU64,
    pub bytes_read: AtomicU64,
    pub read_nanos: AtomicU64,
    /// Records read ahead (`ExpertStore::prefetch`), and how many of them a fetch then used.
    pub prefetched: AtomicU64,
    pub prefetch_hits: AtomicU64,
}

/// A copy of [`StreamCounters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StreamStats {
    pub route_wait_seconds: f64,
    pub device_lookups: u64,
    pub device_hits: u64,
    pub ram_lookups: u64,
    pub ram_hits: u64,
    pub disk_reads: u64,
    pub bytes_read: u64,
    pub read_seconds: f64,
    pub prefetched: u64,
    pub prefetch_hits: u64,
}

impl StreamStats {
    /// What happened between `earlier` and this.
    pub fn since(&self, earlier: &StreamStats) -> StreamStats {
        StreamStats {
            route_wait_seconds: self.route_wait_seconds - earlier.route_wait_seconds,
            device_lookups: self.device_lookups - earlier.device_lookups,
            device_hits: self.device_hits - earlier.device_hits,
            ram_lookups: self.ram_lookups - earlier.ram_lookups,
            ram_hits: self.ram_hits - earlier.ram_hits,
            disk_reads: self.disk_reads - earlier.disk_reads,
            bytes_read: self.bytes_read - earlier.bytes_read,
            read_seconds: self.read_seconds - earlier.read_seconds,
            prefetched: self.prefetched - earlier.prefetched,
            prefetch_hits: self.prefetch_hits - earlier.prefetch_hits,
        }
    }

    /// The share of records read ahead that a fetch then used.
    pub fn prefetch_hit_rate(&self) -> Option<f64> {
        (self.prefetched > 0).then(|| self.prefetch_hits as f64 / self.prefetched as f64)
    }

    pub fn device_hit_rate(&self) -> Option<f64> {
        (self.device_lookups > 0).then(|| self.device_hits as f64 / self.device_lookups as f64)
    }

    pub fn ram_hit_rate(&self) -> Option<f64> {
        (self.ram_lookups > 0).then(|| self.ram_hits as f64 / self.ram_lookups as f64)
    }

    /// Both together.
    pub fn plus(mut self, o: &StreamStats) -> StreamStats {
        self.route_wait_seconds += o.route_wait_seconds;
        self.device_lookups += o.device_lookups;
        self.device_hits += o.device_hits;
        self.ram_lookups += o.ram_lookups;
        self.ram_hits += o.ram_hits;
        self.disk_reads += o.disk_reads;
        self.bytes_read += o.bytes_read;
        self.read_seconds += o.read_seconds;
        self.prefetched += o.prefetched;
        self.prefetch_hits += o.prefetch_hits;
        self
    }
}

impl StreamCounters {
    fn stats(&self) -> StreamStats {
        StreamStats {
            route_wait_seconds: self.route_wait_nanos.load(Relaxed) as f64 * 1e-9,
            device_lookups: self.device_lookups.load(Relaxed),
            device_hits: self.device_hits.load(Relaxed),
            ram_lookups: self.ram_lookups.load(Relaxed),
            ram_hits: self.ram_hits.load(Relaxed),
            disk_reads: self.disk_reads.load(Relaxed),
            bytes_read: self.bytes_read.load(Relaxed),
            read_seconds: self.read_nanos.load(Relaxed) as f64 * 1e-9,
            prefetched: self.prefetched.load(Relaxed),
            prefetch_hits: self.prefetch_hits.load(Relaxed),
        }
    }
}

/// How much memory streaming may use, and how the host cache chooses what to keep.
#[derive(Clone, Copy, Debug)]
pub struct StreamOptions {
    /// Bytes of expert records the host cache may hold (0 or policy `Os`: none).
    pub ram_bytes: u64,
    /// Bytes of GPU memory for expert slots (the GPU backend).
    pub gpu_bytes: u64,
    pub policy: CachePolicy,
    /// When to read the experts a backend guesses the next layer will need while this one runs.
    pub prefetch: Prefetch,
}

struct RamCache {
    cache: Cache<(usize, usize)>,
    records: Vec<Option<Arc<Record>>>,
    /// Records being read ahead: a fetch that needs one waits for it (`ExpertStore::ready`).
    reading_ahead: HashSet<(usize, usize)>,
    /// Records read ahead, held apart from the cache until a fetch takes them (so a wrong guess evicts nothing).
    ahead: HashMap<(usize, usize), Arc<Record>>,
}

/// A floe model's routed experts, read on demand.
pub struct ExpertStore {
    sources: Vec<Box<dyn RecordSource>>,
    /// Layer file names, for errors.
    files: Vec<String>,
    pub num_experts: usize,
    /// Experts each token is routed to (the model's, or `--k`): the least a cache must hold.
    pub experts_per_token: usize,
    pub record_bytes: usize,
    /// gate, up and down within a record (the manifest's table).
    pub components: BTreeMap<String, TensorEntry>,
    checksums: Vec<Vec<u64>>,
    ram: Mutex<RamCache>,
    /// Signalled when a record read ahead is in (or failed).
    ready: Condvar,
    /// Records no longer used, for the next reads.
    spare: Mutex<Vec<Record>>,
    /// Per layer.
    pub counters: Vec<StreamCounters>,
    /// The budgets and policy it was opened with (the GPU backend sizes its slots from them).
    pub options: StreamOptions,
}

/// One layer of a store: what a streamed layer's weights hold in place of its experts.
#[derive(Clone)]
pub struct StreamedLayer {
    pub store: Arc<ExpertStore>,
    pub layer: usize,
}

impl ExpertStore {
    /// The store of a floe model's expert files, each opened once (`pread` needs no seek and no lock). With a
    /// host cache of its own (policy lru or lfu) it reads around the OS page cache (O_DIRECT on Linux, F_NOCACHE
    /// on macOS), so records are not cached twice; with policy `os` the page cache is the host cache.
    pub fn open(model: &FloeModel, k: usize, options: &StreamOptions) -> Result<ExpertStore> {
        let ex = &model.manifest.experts;
        let direct = options.policy != CachePolicy::Os;
        let sources = ex
            .files
            .iter()
            .map(|f| -> Result<Box<dyn RecordSource>> { Ok(Box::new(open_expert_file(&model.dir.join(f), direct)?)) })
            .collect::<Result<Vec<_>>>()?;
        ExpertStore::with_sources(model, k, sources, options)
    }

    /// A store reading from `sources` (one per layer) instead of the model's files: tests inject I/O errors here.
    pub fn with_sources(
        model: &FloeModel,
        k: usize,
        sources: Vec<Box<dyn RecordSource>>,
        options: &StreamOptions,
    ) -> Result<ExpertStore> {
        let ex = &model.manifest.experts;
        let checksums = ex
            .xxh3
            .iter()
            .map(|layer| layer.iter().map(|h| u64::from_str_radix(h, 16)).collect::<Result<Vec<_>, _>>())
            .collect::<Result<Vec<_>, _>>()
            .context("malformed expert checksum in the manifest")?;
        let record_bytes = ex.record_bytes as usize;
        let capacity = match options.policy {
            CachePolicy::Os => 0,
            _ => (options.ram_bytes / ex.record_bytes.max(1)) as usize,
        };
        if options.policy != CachePolicy::Os && options.ram_bytes > 0 && capacity < k {
            bail!(
                "--ram-mem {} holds {capacity} expert records; one layer's {k} experts need at least {} bytes",
                options.ram_bytes,
                k as u64 * ex.record_bytes
            );
        }
        Ok(ExpertStore {
            sources,
            files: ex.files.clone(),
            num_experts: model.manifest.config.num_experts,
            experts_per_token: k,
            record_bytes,
            components: ex.components.clone(),
            checksums,
            ram: Mutex::new(RamCache {
                cache: Cache::new(capacity, options.policy),
                records: vec![None; capacity],
                reading_ahead: HashSet::new(),
                ahead: HashMap::new(),
            }),
            ready: Condvar::new(),
            spare: Mutex::new(Vec::new()),
            counters: (0..ex.files.len()).map(|_| StreamCounters::default()).collect(),
            options: *options,
        })
    }

    /// Bytes of records the host cache holds now.
    pub fn cached_bytes(&self) -> u64 {
        let held = self.ram.lock().unwrap().records.iter().filter(|r| r.is_some()).count();
        (held * self.record_bytes) as u64
    }

    pub fn num_layers(&self) -> usize {
        self.sources.len()
    }

    /// All layers together.
    pub fn stats(&self) -> StreamStats {
        self.counters.iter().fold(StreamStats::default(), |sum, c| sum.plus(&c.stats()))
    }

    /// Each layer's.
    pub fn layer_stats(&self) -> Vec<StreamStats> {
        self.counters.iter().map(|c| c.stats()).collect()
    }

    /// The records of `experts` of `layer`, in that order: from the host cache, the rest read from disk in
    /// parallel (one pread each) and kept in the cache as its policy decides. `sink(i, bytes)` sees each record
    /// as soon as it is there, on the reading thread (the GPU copies it into its staging buffer then).
    pub fn fetch(&self, layer: usize, experts: &[usize], sink: impl Fn(usize, &[u8]) + Sync) -> Result<Vec<Arc<Record>>> {
        let start = Instant::now();
        let mut found: Vec<Option<Arc<Record>>> = vec![None; experts.len()];
        // Records still being read ahead: waited for while this call reads its misses, not before (the disk
        // gets both at once), and taken when they land rather than read twice.
        let mut pending = Vec::new();
        {
            let mut ram = self.ram.lock().unwrap();
            let cached = ram.cache.capacity() > 0;
            for (i, &e) in experts.iter().enumerate() {
                if cached {
                    self.counters[layer].ram_lookups.fetch_add(1, Relaxed);
                    if let Some(s) = ram.cache.get((layer, e)) {
                        self.counters[layer].ram_hits.fetch_add(1, Relaxed);
                        found[i] = ram.records[s].clone();
                        continue;
                    }
                }
                if let Some(record) = ram.ahead.remove(&(layer, e)) {
                    self.counters[layer].prefetch_hits.fetch_add(1, Relaxed);
                    found[i] = Some(record);
                } else if ram.reading_ahead.contains(&(layer, e)) {
                    pending.push(i);
                }
            }
        }
        // Each hit is a task, and so is each run of misses of experts stored one after the other, read at once
        // (a batched prefill misses most of a layer: fewer, larger reads get more from a disk than one per record).
        let mut tasks: Vec<Vec<usize>> = (0..experts.len()).filter(|&i| found[i].is_some()).map(|i| vec![i]).collect();
        let mut missing: Vec<usize> = (0..experts.len()).filter(|&i| found[i].is_none() && !pending.contains(&i)).collect();
        missing.sort_by_key(|&i| experts[i]);
        let (run_records, hits) = ((RUN_BYTES / self.stride()).max(1) as usize, tasks.len());
        for i in missing {
            match tasks[hits..].last_mut() {
                Some(run) if run.len() < run_records && experts[run[run.len() - 1]] + 1 == experts[i] => run.push(i),
                _ => tasks.push(vec![i]),
            }
        }
        let run_tasks = || -> Result<Vec<(usize, Arc<Record>)>> {
            let done: Vec<Vec<(usize, Arc<Record>)>> = tasks
                .into_par_iter()
                .map(|task| {
                    let records: Vec<Arc<Record>> = match &found[task[0]] {
                        Some(hit) => vec![hit.clone()],
                        None => {
                            let es: Vec<usize> = task.iter().map(|&i| experts[i]).collect();
                            self.read_run(layer, &es)?.into_iter().map(Arc::new).collect()
                        }
                    };
                    task.iter().zip(&records).for_each(|(&i, r)| sink(i, (**r).as_ref()));
                    Ok(task.into_iter().zip(records).collect())
                })
                .collect::<Result<_>>()?;
            Ok(done.into_iter().flatten().collect())
        };
        let (done, waited) = if pending.is_empty() {
            (run_tasks()?, Vec::new())
        } else {
            // The calling thread waits, never a pool thread: the reads it waits for run on the pool.
            std::thread::scope(|scope| {
                let reading = scope.spawn(run_tasks);
                let waited = self.take_read_ahead(layer, experts, &pending, &sink);
                let done = reading.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                Ok::<_, anyhow::Error>((done?, waited?))
            })?
        };
        let mut records: Vec<Option<Arc<Record>>> = vec![None; experts.len()];
        for (i, r) in done.into_iter().chain(waited) {
            records[i] = Some(r);
        }
        let records: Vec<Arc<Record>> = records.into_iter().map(|r| r.expect("every expert found or read")).collect();
        self.counters[layer].read_nanos.fetch_add(start.elapsed().as_nanos() as u64, Relaxed);
        let mut ram = self.ram.lock().unwrap();
        let RamCache { cache, records: held, .. } = &mut *ram;
        if cache.capacity() > 0 {
            for (record, &e) in records.iter().zip(experts) {
                if cache.get((layer, e)).is_none() {
                    // Records of this call are not pinned: the caller holds them (Arc) whatever the cache drops.
                    if let Some(s) = cache.insert((layer, e), &[]) {
                        held[s] = Some(record.clone());
                    }
                }
            }
        }
        Ok(records)
    }

    /// The records `pending` (indices into `experts`) that were being read ahead, each once it lands; one whose
    /// read failed is read again here, so that its error names it.
    fn take_read_ahead(
        &self,
        layer: usize,
        experts: &[usize],
        pending: &[usize],
        sink: &(impl Fn(usize, &[u8]) + Sync),
    ) -> Result<Vec<(usize, Arc<Record>)>> {
        let mut taken = Vec::with_capacity(pending.len());
        for &i in pending {
            let e = experts[i];
            let landed = {
                let mut ram = self.ram.lock().unwrap();
                while ram.reading_ahead.contains(&(layer, e)) {
                    ram = self.ready.wait(ram).unwrap();
                }
                ram.ahead.remove(&(layer, e))
            };
            let record = match landed {
                Some(record) => {
                    self.counters[layer].prefetch_hits.fetch_add(1, Relaxed);
                    record
                }
                None => Arc::new(self.read(layer, e)?),
            };
            sink(i, (*record).as_ref());
            taken.push((i, record));
        }
        Ok(taken)
    }

    /// Whether a forward call of `tokens` tokens reads experts ahead.
    pub fn reads_ahead(&self, tokens: usize) -> bool {
        match self.options.prefetch {
            Prefetch::Off => false,
            Prefetch::Prefill => tokens > 1,
            Prefetch::On => true,
        }
    }

    /// Starts reading `experts` of `layer` in the background, a guess of what that layer will fetch next (at
    /// most two layers' worth of records are held so). A fetch takes them, or waits for those still being read.
    /// Errors are left for that fetch to meet and report.
    pub fn prefetch(self: &Arc<Self>, layer: usize, experts: &[usize]) {
        if self.options.prefetch == Prefetch::Off || layer >= self.num_layers() {
            return;
        }
        let room = 2 * self.experts_per_token;
        let wanted: Vec<usize> = {
            let mut ram = self.ram.lock().unwrap();
            let RamCache { cache, reading_ahead, ahead, .. } = &mut *ram;
            // Guesses for layers before this one's predecessor were wrong: nothing fetched them.
            ahead.retain(|&(l, _), _| l + 1 >= layer);
            let free = room.saturating_sub(ahead.len() + reading_ahead.len());
            let wanted: Vec<usize> = experts
                .iter()
                .copied()
                .filter(|&e| e < self.num_experts)
                .filter(|&e| !cache.contains((layer, e)) && !reading_ahead.contains(&(layer, e)) && !ahead.contains_key(&(layer, e)))
                .take(free)
                .collect();
            reading_ahead.extend(wanted.iter().map(|&e| (layer, e)));
            wanted
        };
        for e in wanted {
            let store = self.clone();
            rayon::spawn(move || {
                let record = store.read(layer, e).map(Arc::new);
                let mut ram = store.ram.lock().unwrap();
                ram.reading_ahead.remove(&(layer, e));
                if let Ok(record) = record {
                    store.counters[layer].prefetched.fetch_add(1, Relaxed);
                    ram.ahead.insert((layer, e), record);
                }
                store.ready.notify_all();
            });
        }
    }

    /// Gives records back after use: those no cache holds are reused for later reads (no allocation per read).
    pub fn recycle(&self, records: Vec<Arc<Record>>) {
        let mut spare = self.spare.lock().unwrap();
        let room = SPARE_RECORDS.saturating_sub(spare.len());
        spare.extend(records.into_iter().filter_map(|r| Arc::try_unwrap(r).ok()).take(room));
    }

    /// Experts `es` of `layer` (consecutive ids) from its file with one vectored read, each checked against the
    /// manifest. Where that read comes up short or fails, each record is read alone, so errors name the expert.
    fn read_run(&self, layer: usize, es: &[usize]) -> Result<Vec<Record>> {
        let stride = self.stride() as usize;
        if es.len() > 1 && es[es.len() - 1] < self.num_experts {
            let mut records: Vec<Record> = es.iter().map(|_| self.spare_record()).collect();
            let mut bufs: Vec<&mut [u8]> = records.iter_mut().map(|r| &mut r.pages_mut()[..stride]).collect();
            let got = self.sources[layer].read_vectored_at(&mut bufs, es[0] as u64 * self.stride());
            // The last record of a file may end without its padding.
            if got.is_ok_and(|n| n >= (es.len() - 1) * stride + self.record_bytes) {
                for (record, &e) in records.iter().zip(es) {
                    self.check(layer, e, record)?;
                }
                return Ok(records);
            }
            self.spare.lock().unwrap().extend(records);
        }
        es.iter().map(|&e| self.read(layer, e)).collect()
    }

    fn spare_record(&self) -> Record {
        self.spare.lock().unwrap().pop().unwrap_or_else(|| Record::new(self.record_bytes))
    }

    /// Expert `e` of `layer` from its file, checked against the manifest.
    fn read(&self, layer: usize, e: usize) -> Result<Record> {
        let what = || format!("expert {e} of layer {layer} ({})", self.files[layer]);
        if e >= self.num_experts {
            bail!("{}: no such expert (the model has {})", what(), self.num_experts);
        }
        let mut record = self.spare_record();
        // Whole pages: O_DIRECT reads a multiple of the block size (records are padded to their 4 KiB stride).
        let want = self.stride() as usize;
        let bytes = &mut record.pages_mut()[..want];
        let offset = e as u64 * self.stride();
        let mut done = 0;
        while done < want {
            match self.sources[layer].read_at(&mut bytes[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err).with_context(|| format!("reading {}", what())),
            }
        }
        if done < self.record_bytes {
            bail!("{}: short read ({done} of {} bytes): the file was truncated", what(), self.record_bytes);
        }
        self.check(layer, e, &record)?;
        Ok(record)
    }

    /// Checks a record just read against the manifest's checksum, and counts it.
    fn check(&self, layer: usize, e: usize, record: &Record) -> Result<()> {
        if xxhash_rust::xxh3::xxh3_64(record.as_ref()) != self.checksums[layer][e] {
            bail!("expert {e} of layer {layer} ({}): checksum mismatch: the file changed since it was written", self.files[layer]);
        }
        self.counters[layer].disk_reads.fetch_add(1, Relaxed);
        self.counters[layer].bytes_read.fetch_add(self.record_bytes as u64, Relaxed);
        Ok(())
    }

    fn stride(&self) -> u64 {
        (self.record_bytes as u64).next_multiple_of(crate::format::ALIGN)
    }

    /// One record's gate, up and down matrices, viewed in place.
    pub fn expert_weights(&self, record: &Arc<Record>) -> Result<ExpertWeights> {
        let bytes: crate::tensor::Bytes = record.clone();
        let part = |name: &str| entry_matrix(&self.components[name], &bytes, 0);
        Ok(ExpertWeights { gate: part("gate")?, up: part("up")?, down: part("down")? })
    }
}

/// Opens an expert file for reading; `direct`: bypassing the page cache where the OS and file system allow it.
fn open_expert_file(path: &Path, direct: bool) -> Result<File> {
    let open = |flags: i32| {
        let _ = flags; // only Linux passes flags at open
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        #[cfg(target_os = "linux")]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, flags);
        options.open(path)
    };
    #[cfg(target_os = "linux")]
    if direct {
        // Not every file system takes O_DIRECT (tmpfs does not): then read through the page cache.
        if let Ok(file) = open(libc::O_DIRECT) {
            return Ok(file);
        }
    }
    let file = open(0).with_context(|| format!("cannot open {}", path.display()))?;
    #[cfg(target_os = "macos")]
    if direct {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor this function owns.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_NOCACHE, 1) };
    }
    let _ = direct;
    Ok(file)
}

/// Parses a size: bytes, or with a K/M/G/T suffix (powers of 1024), e.g. `4G`, `512M`, `1.5G`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], t[i..].to_ascii_uppercase()),
        None => (t, String::new()),
    };
    let scale: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("`{text}`: unknown unit (use K, M, G or T)")),
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("`{text}` is not a size such as 4G or 512M"))?;
    if !(value >= 0.0 && value.is_finite()) {
        return Err(format!("`{text}` is not a size such as 4G or 512M"));
    }
    Ok((value * scale as f64) as u64)
}
