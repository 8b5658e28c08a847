//! The GPU's 4-bit matrix-vector kernels against the memory bandwidth they could reach: a 4096×4096 matvec
//! (q4, group 64, bf16 scales) and one layer of Qwen3.5-35B-A3B experts (K=8 of 256, 512×2048, the two expert
//! dispatches), decode shapes (one token). Prints GB/s of weights read and the ratio to FLOE_BANDWIDTH_GBS
//! (default 4000, the figure the GPU issue states its target against; what a plain read reaches on this GPU is
//! `cargo bench --bench gpu_read`: 3,175 GB/s on the lent H100, 4,656 on the H200).
//!
//! `cargo bench --bench gpu_matvec` (needs a GPU adapter; lavapipe works but says nothing about GPU speed).

use std::time::Instant;

use floe::backend::Backend;
use floe::convert::quantize_matrix;
use floe::gpu::{AdapterChoice, Gpu};
use floe::quant::QuantFormat;
use floe::tensor::{Matrix, Tensor};
use floe::weights::{ExpertWeights, HostExperts, Transfer};
use rand::{Rng, SeedableRng};

fn main() {
    let gpu = Gpu::open(AdapterChoice::Hardware).unwrap().or_else(|| Gpu::open(AdapterChoice::Any).unwrap());
    let Some(gpu) = gpu else {
        println!("no GPU adapter: nothing to measure");
        return;
    };
    println!("GPU: {}", gpu.describe());
    let limit: f64 = std::env::var("FLOE_BANDWIDTH_GBS").ok().and_then(|v| v.parse().ok()).unwrap_or(4000.0);
    // What this GPU streams at all: an element-wise kernel over 2 × 256 MiB in and 256 MiB out (the lent H100 and
    // H200 differ: the 4,000 GB/s figure was measured on the H200).
    if gpu.max_binding() >= 256 << 20 {
        let n = 64 << 20;
        let (a, b) = (gpu.act(&vec![0.5; n]).unwrap(), gpu.act(&vec![0.25; n]).unwrap());
        let secs = time(&gpu, 20, || {
            let _ = gpu.swiglu(&a, &b);
        });
        report("element-wise over 768 MiB (2 reads, 1 write)", (3 * 4 * n) as f64, secs, limit);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let f = QuantFormat::new(4, 64).unwrap();
    let mut random = |rows: usize, cols: usize| {
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-0.5..0.5)).collect();
        quantize_matrix(&Matrix::Dense(Tensor::from_f32(vec![rows, cols], values)), f)
    };

    // 4096 × 4096 matvec.
    let m = random(4096, 4096);
    let bytes = m.size_bytes() as f64;
    let w = Transfer::<Gpu>::matrix(&mut &gpu, "4096x4096", &m).unwrap();
    let x = gpu.act(&vec![0.01; 4096]).unwrap();
    let secs = time(&gpu, 500, || {
        let _ = gpu.matmul(&x, &w);
    });
    report("matvec 4096x4096 q4g64, one after another", bytes, secs, limit);
    // Outputs kept alive: no two dispatches share a written buffer, so the GPU may overlap them (what the
    // kernel itself sustains, without the per-dispatch gap).
    let mut outputs = Vec::new();
    let secs = time(&gpu, 500, || outputs.push(gpu.matmul(&x, &w)));
    report("matvec 4096x4096 q4g64, independent", bytes, secs, limit);
    drop(outputs);
    // Four times the rows: how the time grows with the bytes (the part that does not grow is per-dispatch cost).
    let big = random(16384, 4096);
    let wb = Transfer::<Gpu>::matrix(&mut &gpu, "16384x4096", &big).unwrap();
    let secs = time(&gpu, 200, || {
        let _ = gpu.matmul(&x, &wb);
    });
    report("matvec 16384x4096 q4g64, one after another", big.size_bytes() as f64, secs, limit);

    // One layer of 35B-A3B experts: K = 8 of 256, gate/up 512×2048, down 2048×512.
    // (On a GPU whose bindings cannot hold 256 of them, lavapipe's 128 MiB, fewer: the work per call is the same.)
    let count = if gpu.max_binding() >= 256 * 1_769_472 { 256 } else { 64 };
    let experts = HostExperts::Resident(
        (0..count).map(|_| ExpertWeights { gate: random(512, 2048), up: random(512, 2048), down: random(2048, 512) }).collect(),
    );
    let per_expert = (experts.bytes() / count as u64) as f64;
    let device = Transfer::<Gpu>::experts(&mut &gpu, 0, &experts).unwrap();
    let x = gpu.act(&vec![0.01; 2048]).unwrap();
    // Router logits that pick 8 distinct experts spread over the layer.
    let logits: Vec<f32> = (0..count).map(|e| if e % (count / 8) == 5 { 4.0 } else { 0.0 }).collect();
    let routing = gpu.route(&gpu.act(&logits).unwrap(), &device, 8, true);
    let secs = time(&gpu, 500, || {
        let _ = gpu.experts(&x, &routing, &device, None).unwrap();
    });
    report("experts K=8 of 512x2048 q4g64 (gate+up, down)", 8.0 * per_expert, secs, limit);
    // The same calls with GPU timestamps around each dispatch: the kernels' own time (each plus ~6 µs of timing).
    busy(&gpu);
    if gpu.start_profiling() {
        for _ in 0..100 {
            let _ = gpu.experts(&x, &routing, &device, None).unwrap();
        }
        gpu.read(&x).unwrap();
        for (name, secs, count) in gpu.profile() {
            println!("  {name}: {:.1} us per dispatch (GPU timestamps)", secs * 1e6 / count as f64);
        }
    }
}

/// Keeps the GPU busy for a second: from idle (as it is while the CPU makes the random weights) its clock takes
/// ~0.4 s to ramp up (docs/PERF.md, "Time to first token and the GPU's clock"), far longer than these timings.
fn busy(gpu: &Gpu) {
    let (a, b) = (gpu.act(&vec![0.5; 1 << 20]).unwrap(), gpu.act(&vec![0.25; 1 << 20]).unwrap());
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < 1.0 {
        for _ in 0..100 {
            let _ = gpu.swiglu(&a, &b);
        }
        gpu.read(&a).unwrap();
    }
}

/// Seconds per call of `f`, recorded `n` times and submitted at once (one wait for all), on a busy GPU.
fn time(gpu: &Gpu, n: usize, mut f: impl FnMut()) -> f64 {
    busy(gpu);
    let sync = gpu.act(&[0.0]).unwrap();
    f();
    gpu.read(&sync).unwrap();
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    gpu.read(&sync).unwrap();
    start.elapsed().as_secs_f64() / n as f64
}

fn report(what: &str, bytes: f64, secs: f64, limit: f64) {
    let gbs = bytes / secs / 1e9;
    println!("{what}: {:.1} us, {:.1} MB, {gbs:.0} GB/s = {:.0}% of {limit:.0} GB/s", secs * 1e6, bytes / 1e6, 100.0 * gbs / limit);
}
