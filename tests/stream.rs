//! Expert streaming (floe::store, gpu/stream.rs): a streamed model computes exactly what the resident one does,
//! at every cache budget down to the minimum, on the CPU and the GPU; I/O failures stop a generation with a
//! clear error.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use floe::backend::Backend;
use floe::format::FloeModel;
use floe::model::{LoadOptions, Logits, Model};
use floe::store::{CachePolicy, ExpertStore, Prefetch, RecordSource, StreamOptions};

/// Fixtures converted to floe models: quantized with a shared expert (fused on the GPU), and float without one.
const MODELS: [&str; 2] = ["qwen35_moe_mlx_4bit", "qwen3_moe"];

fn convert(name: &str, tmp: &Path) -> PathBuf {
    let dst = tmp.join(name);
    let out = Command::new(env!("CARGO_BIN_EXE_floe"))
        .env("FLOE_NO_PROGRESS", "1")
        .args(["convert", fixture(name).to_str().unwrap(), dst.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "convert: {}", String::from_utf8_lossy(&out.stderr));
    dst
}

fn streamed(dir: &Path, ram_bytes: u64, gpu_bytes: u64, policy: CachePolicy, prefetch: bool) -> Model {
    let prefetch = if prefetch { Prefetch::On } else { Prefetch::Off };
    let stream = StreamOptions { ram_bytes, gpu_bytes, policy, prefetch };
    Model::load_with(dir, &LoadOptions { k: None, stream: Some(stream) }).unwrap()
}

/// Logits of every position: a prefill of all but the last three tokens, then three decode steps, twice over
/// (a second sequence finds the caches warm).
fn run<B: Backend>(model: &Model<B>, tokens: &[u32]) -> Vec<f32> {
    let prefill = tokens.len() - 3;
    let mut out = Vec::new();
    for _ in 0..2 {
        let mut state = model.new_state().unwrap();
        out.extend(model.forward(&tokens[..prefill], &mut state, Logits::All).unwrap());
        for &t in &tokens[prefill..] {
            out.extend(model.forward(&[t], &mut state, Logits::All).unwrap());
        }
    }
    out
}

/// A prompt long enough that its prefill routes to every expert (more than the smallest caches hold).
fn prompt(model: &Model) -> Vec<u32> {
    prompt_of(model, 24)
}

fn prompt_of<B: Backend>(model: &Model<B>, len: u32) -> Vec<u32> {
    (0..len).map(|i| (i * 37 + 5) % model.config.vocab_size as u32).collect()
}

fn record_bytes(dir: &Path) -> u64 {
    FloeModel::open(dir).unwrap().manifest.experts.record_bytes
}

#[test]
fn streamed_logits_equal_resident_logits_bit_for_bit_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    for name in MODELS {
        let dir = convert(name, tmp.path());
        let resident = Model::load(&dir).unwrap();
        let tokens = prompt(&resident);
        let expected = run(&resident, &tokens);
        let (record, k) = (record_bytes(&dir), resident.config.experts_per_token as u64);
        let budgets = [
            (0, CachePolicy::Os),
            (k * record, CachePolicy::Lru),
            ((k + 1) * record, CachePolicy::Lfu),
            (1 << 30, CachePolicy::Lru),
        ];
        // Each with the next layer's experts read ahead (into the host cache, or the page cache) and without.
        for ((ram, policy), prefetch) in budgets.into_iter().flat_map(|b| [(b, false), (b, true)]) {
            let model = streamed(&dir, ram, 0, policy, prefetch);
            let what = format!("{name}: streamed with {ram} bytes of {policy:?} cache, prefetch {prefetch}");
            assert!(run(&model, &tokens) == expected, "{what}: differs");
            let stats = model.store.as_ref().unwrap().stats();
            assert!(stats.disk_reads > 0, "{what}: nothing was read");
            assert_eq!(stats.prefetched > 0, prefetch, "{what}: records read ahead ({stats:?})");
            if ram == 1 << 30 && !prefetch {
                let all = (model.config.num_experts * model.config.num_layers()) as u64;
                assert!(stats.disk_reads <= all, "{name}: with every expert cached, each is read once ({stats:?})");
            }
        }
        let small = StreamOptions { ram_bytes: k * record - 1, gpu_bytes: 0, policy: CachePolicy::Lru, prefetch: Prefetch::On };
        let err = Model::load_with(&dir, &LoadOptions { k: None, stream: Some(small) }).err().unwrap();
        let min = format!("need at least {} bytes", k * record);
        assert!(err.to_string().contains(&min), "{err}");
    }
}

#[test]
fn streamed_logits_equal_resident_logits_bit_for_bit_on_the_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    for name in MODELS {
        let dir = convert(name, tmp.path());
        let Some(device) = gpu() else { return };
        let resident = Model::load(&dir).unwrap().to_backend(device).unwrap();
        let tokens = prompt(&Model::load(&dir).unwrap());
        let expected = run(&resident, &tokens);
        let slot = record_bytes(&dir).next_multiple_of(256);
        let k = resident.config.experts_per_token as u64;
        let every = (resident.config.num_experts * resident.config.num_layers()) as u64;
        // (slots, policy, host cache, read-ahead)
        let record = record_bytes(&dir);
        let cases = [
            (k, CachePolicy::Lru, 0, true),
            (k + 1, CachePolicy::Lfu, 4 * k * record, true),
            (3 * k, CachePolicy::Os, 0, true),
            (every, CachePolicy::Lru, 0, false),
        ];
        // Each through staging and, where the device can map its slots, straight into them (zero-copy).
        for ((slots, policy, ram, prefetch), zero_copy) in cases.into_iter().flat_map(|c| [(c, false), (c, true)]) {
            let host = streamed(&dir, ram, slots * slot, policy, prefetch);
            let gpu = gpu().unwrap();
            if gpu.set_zero_copy(zero_copy) != zero_copy {
                continue;
            }
            gpu.set_expert_memory(slots * slot, policy);
            let model = host.to_backend(gpu).unwrap();
            let got = run(&model, &tokens);
            let err = relative_error(&got, &expected);
            let how = if zero_copy { "zero-copy" } else { "staged" };
            assert!(got == expected, "{name}: streamed through {slots} GPU slots ({policy:?}, {how}) differs by {err:.2e}");
            let ahead = model.store.as_ref().unwrap().stats().prefetched;
            assert_eq!(ahead > 0, prefetch, "{name}: {slots} slots ({policy:?}): {ahead} records read ahead");
            let bind_groups = model.backend.cached_bind_groups();
            run(&model, &tokens);
            assert_eq!(model.backend.cached_bind_groups(), bind_groups, "{name}: streaming keeps making bind groups");
            if slots == every {
                let stats = model.store.as_ref().unwrap().stats();
                assert!(stats.disk_reads <= every, "{name}: with every expert in GPU slots, each is read once ({stats:?})");
            }
        }
        // A prefill long enough for the grouped expert kernels (≥ 32 tokens), in chunks of tokens when few slots
        // hold its experts. (Tiles need every expert matrix in a 2-, 4- or 8-bit format, and these fixtures keep
        // down dense; like a grouped chunk's, each output of a tile is computed alone, whatever the chunking.)
        let long = prompt_of(&resident, 70);
        let expected = run(&resident, &long);
        for (slots, zero_copy) in [(k + 1, false), (k + 1, true), (every, false)] {
            let host = streamed(&dir, 4 * k * record, slots * slot, CachePolicy::Lfu, true);
            let gpu = gpu().unwrap();
            if gpu.set_zero_copy(zero_copy) != zero_copy {
                continue;
            }
            gpu.set_expert_memory(slots * slot, CachePolicy::Lfu);
            let got = run(&host.to_backend(gpu).unwrap(), &long);
            assert!(got == expected, "{name}: a long prefill streamed through {slots} GPU slots (zero-copy {zero_copy}) differs");
        }
        let host = streamed(&dir, 0, 0, CachePolicy::Lru, false);
        let gpu = gpu().unwrap();
        gpu.set_expert_memory(k * slot - 1, CachePolicy::Lru);
        let err = host.to_backend(gpu).err().unwrap().to_string();
        assert!(err.contains(&format!("need at least {} bytes", k * slot)), "{err}");
    }
}

/// A source that fails every read after the first `good` ones.
struct Failing {
    file: std::fs::File,
    good: std::sync::atomic::AtomicUsize,
}

impl RecordSource for Failing {
    fn read_at(&self, dst: &mut [u8], offset: u64) -> std::io::Result<usize> {
        if self.good.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 0 {
            return Err(std::io::Error::from_raw_os_error(5)); // EIO
        }
        self.file.read_at(dst, offset)
    }
}

fn forward(model: &Model, tokens: &[u32]) -> anyhow::Result<Vec<f32>> {
    model.forward(tokens, &mut model.new_state()?, Logits::Last)
}

#[test]
fn io_errors_short_reads_and_changed_files_stop_the_generation_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = convert("qwen35_moe_mlx_4bit", tmp.path());
    let floe_model = FloeModel::open(&dir).unwrap();
    let options = StreamOptions { ram_bytes: 0, gpu_bytes: 0, policy: CachePolicy::Os, prefetch: Prefetch::Off };
    let tokens = [1, 2, 3];

    // EIO on layer 1: on the CPU, and on the GPU through staging and straight into the slots (zero-copy).
    let failing = || {
        let sources: Vec<Box<dyn RecordSource>> = floe_model
            .manifest
            .experts
            .files
            .iter()
            .enumerate()
            .map(|(layer, f)| -> Box<dyn RecordSource> {
                let file = std::fs::File::open(dir.join(f)).unwrap();
                let good = if layer == 1 { 0 } else { usize::MAX };
                Box::new(Failing { file, good: good.into() })
            })
            .collect();
        let store = Arc::new(ExpertStore::with_sources(&floe_model, 2, sources, &options).unwrap());
        let weights = floe_model.streamed_weights(store.clone()).unwrap();
        Model { config: floe_model.manifest.config.clone(), weights, backend: floe::cpu::Cpu, store: Some(store) }
    };
    let err = format!("{:#}", forward(&failing(), &tokens).unwrap_err());
    assert!(err.contains("layer 1") && err.contains("Input/output error"), "{err}");
    for zero_copy in [false, true] {
        let Some(gpu) = gpu() else { break };
        if gpu.set_zero_copy(zero_copy) != zero_copy {
            continue;
        }
        gpu.set_expert_memory(1 << 20, CachePolicy::Lru);
        let model = failing().to_backend(gpu).unwrap();
        let err = format!("{:#}", model.forward(&tokens, &mut model.new_state().unwrap(), Logits::Last).unwrap_err());
        assert!(err.contains("layer 1") && err.contains("Input/output error"), "zero-copy {zero_copy}: {err}");
    }

    // An expert file changed under the engine, then truncated.
    let model = streamed(&dir, 0, 0, CachePolicy::Os, false);
    forward(&model, &tokens).unwrap();
    let path = dir.join(&floe_model.manifest.experts.files[2]);
    let mut bytes = std::fs::read(&path).unwrap();
    for b in bytes.iter_mut().step_by(97) {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = format!("{:#}", forward(&model, &tokens).unwrap_err());
    assert!(err.contains("of layer 2") && err.contains("checksum mismatch"), "{err}");
    std::fs::File::options().write(true).open(&path).unwrap().set_len(100).unwrap();
    let err = format!("{:#}", forward(&model, &tokens).unwrap_err());
    assert!(err.contains("of layer 2") && err.contains("short read"), "{err}");
}

/// Reads of record `held` wait until record `opener` has been read.
struct Gated {
    file: std::fs::File,
    stride: u64,
    held: u64,
    opener: u64,
    opened: std::sync::Mutex<bool>,
    ready: std::sync::Condvar,
}

impl RecordSource for Gated {
    fn read_at(&self, dst: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let record = offset / self.stride;
        if record == self.held {
            let opened = self.opened.lock().unwrap();
            drop(self.ready.wait_while(opened, |opened| !*opened).unwrap());
        }
        let n = self.file.read_at(dst, offset)?;
        if record == self.opener {
            *self.opened.lock().unwrap() = true;
            self.ready.notify_all();
        }
        Ok(n)
    }
}

/// A fetch reads its misses while records it also needs are still being read ahead, then takes those as they
/// land (one read each): here the read ahead of expert 0 only ends once the fetch has read expert 2.
#[test]
fn a_fetch_reads_its_misses_while_read_ahead_lands() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = convert("qwen35_moe_mlx_4bit", tmp.path());
    let floe_model = FloeModel::open(&dir).unwrap();
    let ex = &floe_model.manifest.experts;
    let options = StreamOptions { ram_bytes: 0, gpu_bytes: 0, policy: CachePolicy::Os, prefetch: Prefetch::On };
    let sources = ex
        .files
        .iter()
        .map(|f| -> Box<dyn RecordSource> {
            let file = std::fs::File::open(dir.join(f)).unwrap();
            let ready = std::sync::Condvar::new();
            Box::new(Gated { file, stride: ex.stride, held: 0, opener: 2, opened: false.into(), ready })
        })
        .collect();
    let store = Arc::new(ExpertStore::with_sources(&floe_model, 2, sources, &options).unwrap());
    store.prefetch(0, &[0]);
    let (sent, received) = std::sync::mpsc::channel();
    let fetching = store.clone();
    std::thread::spawn(move || sent.send(fetching.fetch(0, &[2, 0], |_, _| {}).map(|r| r.len())));
    let fetched = received.recv_timeout(std::time::Duration::from_secs(60));
    assert_eq!(fetched.expect("the fetch waited for the read ahead before reading its misses").unwrap(), 2);
    let stats = store.stats();
    assert_eq!((stats.prefetched, stats.prefetch_hits, stats.disk_reads), (1, 1, 2), "{stats:?}");
}

/// `--prefetch prefill` (the default) reads ahead in a prefill and not in decode steps.
#[test]
fn read_ahead_in_prefills_only_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = convert("qwen35_moe_mlx_4bit", tmp.path());
    let stream = StreamOptions { ram_bytes: 0, gpu_bytes: 0, policy: CachePolicy::Lru, prefetch: Prefetch::Prefill };
    let model = Model::load_with(&dir, &LoadOptions { k: None, stream: Some(stream) }).unwrap();
    let mut state = model.new_state().unwrap();
    let tokens = prompt(&model);
    model.forward(&tokens, &mut state, Logits::Last).unwrap();
    let store = model.store.as_ref().unwrap();
    // Background reads may still be landing: wait for the count to settle.
    let settled = || {
        let mut last = store.stats().prefetched;
        loop {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let now = store.stats().prefetched;
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let after_prefill = settled();
    assert!(after_prefill > 0, "the prefill read nothing ahead");
    for &t in &tokens[..4] {
        model.forward(&[t], &mut state, Logits::Last).unwrap();
    }
    assert_eq!(settled(), after_prefill, "decode steps read ahead");
}

/// The host cache never holds more than its budget, whatever the routing asks for.
#[test]
fn the_host_cache_stays_within_its_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = convert("qwen35_moe_mlx_4bit", tmp.path());
    let record = record_bytes(&dir);
    let budget = 3 * record + record / 2;
    let model = streamed(&dir, budget, 0, CachePolicy::Lru, true);
    run(&model, &prompt(&model));
    let store = model.store.as_ref().unwrap();
    assert!(store.cached_bytes() <= budget, "{} bytes cached for a budget of {budget}", store.cached_bytes());
    assert_eq!(store.cached_bytes(), 3 * record, "the cache fills to its budget");
}

fn floe(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_floe")).env("FLOE_NO_PROGRESS", "1").args(args).output().unwrap()
}

/// The streaming flags as a user meets them: reports, and one clear error line for a budget below the minimum or a
/// checkpoint that cannot stream.
#[test]
fn streaming_flags_on_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = convert("qwen35_moe_mlx_4bit", tmp.path());
    let d = dir.to_str().unwrap();
    let log = tmp.path().join("bench.jsonl");
    let out = floe(&["bench", "--model", d, "--io-only", "--json", "--gen-tokens", "3", "--log", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["expert_bytes_read"].as_u64().unwrap(), 3 * 4 * 2 * record_bytes(&dir));

    let args = ["bench", "--model", d, "--json", "--prompt-tokens", "8", "--gen-tokens", "4", "--backend", "cpu"];
    let out = floe(&[&args[..], &["--cache", "lfu", "--ram-mem", "1M", "--log", log.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["streamed"], true);
    assert!(report["expert_bytes_read"].as_u64().unwrap() > 0 && report["ram_cache_hit_rate"].as_f64().is_some());
    let logged: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(logged.len(), 2, "--log appends one line per run");
    assert_eq!(logged[1]["decode_tok_s"], report["decode_tok_s"]);
    assert!(logged[1]["options"].as_array().unwrap().iter().any(|o| o == "lfu"));
    let svg = tmp.path().join("bench.svg");
    let out = floe(&["plot", log.to_str().unwrap(), "--out", svg.to_str().unwrap(), "--y", "expert_bytes_read"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("expert_bytes_read"), "{svg}");
    let out = floe(&["plot", log.to_str().unwrap(), "--out", "/tmp/x.svg", "--y", "no_such_field"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no run has numbers"));

    let npy = tmp.path().join("x.npy");
    let logits = ["logits", "--model", d, "--tokens", "1,2", "--out", npy.to_str().unwrap()];
    let out = floe(&[&logits[..], &["--k", "1", "--stream", "--backend", "cpu"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("--k 1 is below the model's 2 experts per token"), "{stderr}");

    let out = floe(&[&logits[..], &["--cache", "lru", "--ram-mem", "1K"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.lines().count() == 1 && stderr.contains("need at least"), "{stderr}");
    let out = floe(&[&logits[..], &["--k", "9"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--k 9 must be between 1 and the model's 8 experts"), "{stderr}");
    let hf = fixture("qwen3_moe");
    let out = floe(&["logits", "--model", hf.to_str().unwrap(), "--tokens", "1", "--out", npy.to_str().unwrap(), "--stream"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("run `floe convert"), "{stderr}");
}

/// A model whose experts are far larger than the host cache runs in about its dense weights plus the budget:
/// the peak resident memory of a streamed run, against what the resident run of the same model takes.
#[cfg(target_os = "linux")]
#[test]
fn resident_memory_stays_within_the_budgets() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("synth");
    let out = floe(&["synth", "--preset", "qwen3-30b-a3b", "--layers", "2", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let size = |p: &Path| -> u64 {
        if p.is_dir() {
            std::fs::read_dir(p).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
        } else {
            std::fs::metadata(p).unwrap().len()
        }
    };
    let (dense, experts) = (size(&dir.join("dense.bin")), size(&dir.join("experts")));
    // Peak resident memory (VmHWM) of a `floe bench` run, sampled until it exits.
    let peak = |extra: &[&str]| -> u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_floe"))
            .args(["bench", "--model", dir.to_str().unwrap(), "--prompt-tokens", "16", "--gen-tokens", "4", "--backend", "cpu"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut peak = 0;
        loop {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
                if let Some(kb) = status.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
                    peak = peak.max(kb.trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap_or(0) * 1024);
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success());
                return peak;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    let budget = 32 << 20;
    let streamed = peak(&["--cache", "lru", "--ram-mem", "32M"]);
    let resident = peak(&[]);
    println!("dense {dense}, experts {experts}: peak resident memory {resident} resident, {streamed} streamed");
    assert!(experts > 8 * budget, "the experts ({experts} bytes) must dwarf the budget");
    // Dense weights, the host cache, one batch of records being computed (16), the program itself.
    let bound = dense + budget + 16 * experts / 256 + (120 << 20);
    assert!(streamed <= bound, "streamed run peaked at {streamed} bytes, over {bound}");
    assert!(streamed + experts / 4 < resident, "streaming saves most of the experts' memory ({streamed} vs {resident})");
}
