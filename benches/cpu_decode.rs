//! CPU decode speed at Qwen3.5-35B-A3B's real shapes (random bf16 weights, vocabulary 248,320), two layers:
//! one Gated DeltaNet layer and one full-attention layer, each with 256 experts (top 8) and a shared expert.
//! Everything is resident in RAM; this is the baseline later backends and the streaming store compare with.
//!
//!     cargo bench --bench cpu_decode            (FLOE_BENCH_TOKENS=N to change the decode length)

use std::time::Instant;

use floe::config::LayerType;
use floe::model::Logits;
use floe::synthetic;
use floe::tensor::DType;

fn main() {
    let gen_tokens: usize = std::env::var("FLOE_BENCH_TOKENS").ok().and_then(|v| v.parse().ok()).unwrap_or(32);
    let mut config = synthetic::preset("qwen3.5-35b-a3b", None).unwrap();
    config.layer_types = vec![LayerType::LinearAttention, LayerType::FullAttention];
    let start = Instant::now();
    let model = synthetic::random_model(&config, 7, DType::BF16);
    println!("built 2-layer qwen3.5-35b-a3b-shaped model (bf16) in {:.1} s", start.elapsed().as_secs_f64());

    let prompt: Vec<u32> = (0..16).map(|i| 1000 + 37 * i).collect();
    let mut state = model.new_state().expect("state");
    let start = Instant::now();
    let mut next = model.forward_greedy(&prompt, &mut state).unwrap();
    let prefill = start.elapsed().as_secs_f64();

    let start = Instant::now();
    for _ in 0..gen_tokens {
        next = model.forward_greedy(&[next], &mut state).unwrap();
    }
    let decode = start.elapsed().as_secs_f64();
    let logits = model.forward(&[next], &mut state, Logits::Last).unwrap();
    assert!(logits.iter().all(|v| v.is_finite()), "non-finite logits");
    println!("threads: {}", rayon::current_num_threads());
    println!("prefill: {} tokens in {:.3} s = {:.1} tok/s", prompt.len(), prefill, prompt.len() as f64 / prefill);
    println!("decode:  {gen_tokens} tokens in {decode:.3} s = {:.2} tok/s", gen_tokens as f64 / decode);

    // Against the physical limit: decode reads every weight it uses once per token.
    let bytes = weight_bytes_per_token(&model);
    let achieved = bytes * gen_tokens as f64 / decode / 1e9;
    let limit = read_bandwidth_gb_s();
    println!("weights read per decode token: {:.3} GB; achieved {achieved:.1} GB/s", bytes / 1e9);
    println!("RAM read bandwidth (parallel sum over 2 GiB): {limit:.1} GB/s; ratio {:.0}%", 100.0 * achieved / limit);
}

/// Bytes of weights one decode token reads: lm_head, and per layer its attention or linear-attention matrices,
/// router, shared expert and K routed experts (embedding: one row, negligible).
fn weight_bytes_per_token(model: &floe::model::Model) -> f64 {
    use floe::weights::Mixer;
    let c = &model.config;
    let w = &model.weights;
    let size = |m: &floe::tensor::Matrix| m.size_bytes() as f64;
    let mut total = size(&w.lm_head);
    for layer in &w.layers {
        total += match &layer.mixer {
            Mixer::Attention(a) => size(&a.q_proj) + size(&a.k_proj) + size(&a.v_proj) + size(&a.o_proj),
            Mixer::Linear(l) => {
                size(&l.in_proj_qkv) + size(&l.in_proj_z) + size(&l.in_proj_a) + size(&l.in_proj_b) + size(&l.out_proj)
            }
        };
        let mlp = |e: &floe::weights::ExpertWeights| size(&e.gate) + size(&e.up) + size(&e.down);
        total += size(&layer.moe.router) + c.experts_per_token as f64 * mlp(&layer.moe.experts.resident().unwrap()[0]);
        if let Some(s) = &layer.moe.shared {
            total += mlp(&s.mlp) + size(&s.gate);
        }
    }
    total
}

/// A sum with 16 independent accumulators, so it is bound by memory, not by the latency of one add chain.
fn sum_vectorized(v: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for c in v.chunks_exact(16) {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum()
}

fn read_bandwidth_gb_s() -> f64 {
    use rayon::prelude::*;
    let data = vec![1f32; 512 << 20];
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let sum: f32 = data.par_chunks(1 << 16).map(sum_vectorized).sum();
        let gb_s = (data.len() * 4) as f64 / start.elapsed().as_secs_f64() / 1e9;
        assert!(sum > 0.0);
        best = best.max(gb_s);
    }
    best
}
