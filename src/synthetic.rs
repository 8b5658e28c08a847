//! Models with random weights at given shapes: the built-in default model (so `cargo run -- --prompt …` works on a
//! fresh clone) and benchmark models at real layer shapes where no checkpoint can be downloaded.
//!
//! Values are seeded (ChaCha8 per 64 Ki-element block, so generation is parallel and still reproducible) and scaled
//! like a trained model's (each matrix's rows have unit-variance outputs for unit-variance inputs), so activations
//! stay finite through every layer.

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::{Arch, LayerType, LinearAttnConfig, ModelConfig};
use crate::model::Model;
use crate::quant::QuantFormat;
use crate::tensor::{DType, Matrix, Tensor};
use crate::weights::*;

/// The built-in default model: Qwen3.5-MoE's structure at toy size, with `vocab` tokens.
pub fn default_config(vocab: usize, eos_token_ids: Vec<u32>) -> ModelConfig {
    ModelConfig {
        arch: Arch::Qwen35Moe,
        vocab_size: vocab,
        hidden_size: 128,
        layer_types: [LayerType::LinearAttention, LayerType::LinearAttention, LayerType::LinearAttention]
            .into_iter()
            .chain([LayerType::FullAttention])
            .collect(),
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        rotary_dim: 16,
        rope_theta: 1e7,
        rms_norm_eps: 1e-6,
        linear: Some(LinearAttnConfig {
            num_key_heads: 2,
            num_value_heads: 4,
            key_head_dim: 32,
            value_head_dim: 32,
            conv_kernel: 4,
        }),
        num_experts: 16,
        experts_per_token: 4,
        moe_intermediate_size: 64,
        shared_expert_intermediate_size: Some(64),
        norm_topk_prob: true,
        tie_word_embeddings: false,
        eos_token_ids,
    }
}

/// The names `preset` knows, for help texts and errors.
pub const PRESETS: [&str; 5] =
    ["qwen3.5-35b-a3b", "qwen3.5-122b-a10b", "qwen3.5-397b-a17b", "qwen3-next-80b-a3b", "qwen3-30b-a3b"];

/// The configuration of a released model (shared/spec/qwen35-arch.md §1), optionally cut to its first `layers`
/// layers (same layer-type pattern), for synthetic models at real shapes.
pub fn preset(name: &str, layers: Option<usize>) -> anyhow::Result<ModelConfig> {
    // (arch, hidden, layers, heads, kv heads, head dim, linear k/v heads, experts, top-k, expert and shared
    //  intermediate sizes, vocab, rope theta)
    let (arch, h, n, nh, nkv, hd, (lk, lv), e, k, (i, is), vocab, theta) = match name {
        "qwen3.5-35b-a3b" => (Arch::Qwen35Moe, 2048, 40, 16, 2, 256, (16, 32), 256, 8, (512, 512), 248320, 1e7),
        "qwen3.5-122b-a10b" => (Arch::Qwen35Moe, 3072, 48, 32, 2, 256, (16, 64), 256, 8, (1024, 1024), 248320, 1e7),
        "qwen3.5-397b-a17b" => (Arch::Qwen35Moe, 4096, 60, 32, 2, 256, (16, 64), 512, 10, (1024, 1024), 248320, 1e7),
        "qwen3-next-80b-a3b" => (Arch::Qwen3Next, 2048, 48, 16, 2, 256, (16, 32), 512, 10, (512, 512), 151936, 1e7),
        "qwen3-30b-a3b" => (Arch::Qwen3Moe, 2048, 48, 32, 4, 128, (0, 0), 128, 8, (768, 0), 151936, 1e6),
        _ => anyhow::bail!("unknown preset `{name}` (known: {})", PRESETS.join(", ")),
    };
    if layers == Some(0) {
        anyhow::bail!("--layers must be at least 1");
    }
    let n = layers.unwrap_or(n).min(n);
    let linear = arch != Arch::Qwen3Moe;
    Ok(ModelConfig {
        arch,
        vocab_size: vocab,
        hidden_size: h,
        layer_types: (0..n)
            .map(|l| if !linear || (l + 1) % 4 == 0 { LayerType::FullAttention } else { LayerType::LinearAttention })
            .collect(),
        num_heads: nh,
        num_kv_heads: nkv,
        head_dim: hd,
        rotary_dim: if linear { hd / 4 } else { hd },
        rope_theta: theta,
        rms_norm_eps: 1e-6,
        linear: linear.then_some(LinearAttnConfig {
            num_key_heads: lk,
            num_value_heads: lv,
            key_head_dim: 128,
            value_head_dim: 128,
            conv_kernel: 4,
        }),
        num_experts: e,
        experts_per_token: k,
        moe_intermediate_size: i,
        shared_expert_intermediate_size: linear.then_some(is),
        norm_topk_prob: true,
        tie_word_embeddings: false,
        eos_token_ids: vec![],
    })
}

/// A model of config `c` with random weights stored as `dtype` (F32 or BF16), all in memory.
pub fn random_model(c: &ModelConfig, seed: u64, dtype: DType) -> Model {
    let mut r = RandomWeights::new(c, seed, dtype, None);
    let (embed, lm_head) = (r.embed(), r.lm_head());
    let layers = (0..c.num_layers()).map(|i| r.layer(i)).collect();
    let final_norm = vec![1.0; c.hidden_size];
    Model { config: c.clone(), weights: Weights { embed, layers, final_norm, lm_head }, backend: crate::cpu::Cpu, store: None }
}

/// Random weights for config `c`, made one piece at a time (so `floe synth` never holds more than one layer).
/// With `quant`, matrices are generated directly in that affine format (the router and shared-expert gate at
/// 8 bits), their values uniform over the same range as the dense ones.
pub struct RandomWeights {
    g: Gen,
    c: ModelConfig,
}

impl RandomWeights {
    pub fn new(c: &ModelConfig, seed: u64, dtype: DType, quant: Option<QuantFormat>) -> RandomWeights {
        RandomWeights { g: Gen { seed, next_stream: 0, dtype, quant }, c: c.clone() }
    }

    pub fn embed(&mut self) -> Matrix {
        self.g.matrix(&[self.c.vocab_size, self.c.hidden_size], 1.0, self.g.quant)
    }

    pub fn lm_head(&mut self) -> Matrix {
        let h = self.c.hidden_size;
        self.g.matrix(&[self.c.vocab_size, h], 1.0 / (h as f32).sqrt(), self.g.quant)
    }

    /// One routed expert.
    pub fn expert(&mut self) -> ExpertWeights {
        random_mlp(&mut self.g, self.c.hidden_size, self.c.moe_intermediate_size)
    }

    pub fn layer(&mut self, i: usize) -> LayerWeights {
        let (g, c) = (&mut self.g, &self.c);
        let h = c.hidden_size;
        LayerWeights {
            input_norm: vec![1.0; h],
            post_attn_norm: vec![1.0; h],
            mixer: match c.layer_types[i] {
                LayerType::FullAttention => Mixer::Attention(random_attention(g, c)),
                LayerType::LinearAttention => Mixer::Linear(random_linear(g, c)),
            },
            moe: random_moe(g, c),
        }
    }
}

fn random_attention(g: &mut Gen, c: &ModelConfig) -> AttentionWeights {
    let (h, nh, nkv, hd) = (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim);
    let q_rows = if c.attn_output_gate() { 2 * nh * hd } else { nh * hd };
    AttentionWeights {
        q_proj: g.linear(q_rows, h),
        k_proj: g.linear(nkv * hd, h),
        v_proj: g.linear(nkv * hd, h),
        o_proj: g.linear(h, nh * hd),
        q_norm: vec![1.0; hd],
        k_norm: vec![1.0; hd],
    }
}

fn random_linear(g: &mut Gen, c: &ModelConfig) -> LinearAttnWeights {
    let l = c.linear.as_ref().expect("linear-attention layer without its config");
    let h = c.hidden_size;
    let (vd, hv, channels) = (l.num_value_heads * l.value_head_dim, l.num_value_heads, l.conv_channels());
    LinearAttnWeights {
        in_proj_qkv: g.linear(channels, h),
        in_proj_z: g.linear(vd, h),
        in_proj_b: g.linear(hv, h),
        in_proj_a: g.linear(hv, h),
        conv1d: g.values(channels * l.conv_kernel, 0.5),
        // A in [1, 16) as trained models have; dt_bias around zero.
        a_log: g.values(hv, 1.0).iter().map(|u| (8.5 + 7.5 * u).ln()).collect(),
        dt_bias: g.values(hv, 0.5),
        norm: vec![1.0; l.value_head_dim],
        out_proj: g.linear(h, vd),
    }
}

fn random_moe(g: &mut Gen, c: &ModelConfig) -> MoeWeights {
    let (h, i) = (c.hidden_size, c.moe_intermediate_size);
    let experts = HostExperts::Resident((0..c.num_experts).map(|_| random_mlp(g, h, i)).collect());
    let shared = c
        .shared_expert_intermediate_size
        .map(|is| SharedExpertWeights { mlp: random_mlp(g, h, is), gate: g.linear(1, h) });
    let gate_format = g.quant.map(|f| QuantFormat { bits: 8, ..f });
    let shared = shared.map(|mut s| {
        s.gate = g.matrix(&[1, h], 1.0 / (h as f32).sqrt(), gate_format);
        s
    });
    MoeWeights { router: g.matrix(&[c.num_experts, h], 1.0 / (h as f32).sqrt(), gate_format), experts, shared }
}

fn random_mlp(g: &mut Gen, h: usize, i: usize) -> ExpertWeights {
    ExpertWeights { gate: g.linear(i, h), up: g.linear(i, h), down: g.linear(h, i) }
}

const BLOCK: usize = 1 << 16;

struct Gen {
    seed: u64,
    next_stream: u64,
    dtype: DType,
    quant: Option<QuantFormat>,
}

impl Gen {
    /// An [out, in] matrix whose rows map unit-variance inputs to unit-variance outputs.
    fn linear(&mut self, out: usize, inp: usize) -> Matrix {
        self.matrix(&[out, inp], 1.0 / (inp as f32).sqrt(), self.quant)
    }

    /// Values uniform in ±std·√3 (standard deviation `std`), quantized when `quant` fits the rows.
    fn matrix(&mut self, shape: &[usize], std: f32, quant: Option<QuantFormat>) -> Matrix {
        let bound = std * 3f32.sqrt();
        if let Some(f) = quant.filter(|f| f.fits(shape[1])) {
            // Uniform q over [0, 2^bits) with scale 2·bound/(2^bits − 1) and bias −bound.
            let (rows, cols) = (shape[0], shape[1]);
            let words = self.words(rows * f.words_per_row(cols));
            let groups = rows * cols / f.group;
            let scale = bf16::from_f32(2.0 * bound / ((1u32 << f.bits) - 1) as f32);
            return Matrix::Affine {
                words: Tensor::from_u32(vec![rows, f.words_per_row(cols)], words),
                scales: Tensor::from_bf16(vec![rows, cols / f.group], vec![scale; groups]),
                biases: Tensor::from_bf16(vec![rows, cols / f.group], vec![bf16::from_f32(-bound); groups]),
                format: f,
                shape: shape.to_vec(),
            };
        }
        let values = self.values(shape.iter().product(), bound);
        Matrix::Dense(match self.dtype {
            DType::BF16 => Tensor::from_bf16(shape.to_vec(), values.into_par_iter().map(bf16::from_f32).collect()),
            _ => Tensor::from_f32(shape.to_vec(), values),
        })
    }

    /// `n` random 32-bit words.
    fn words(&mut self, n: usize) -> Vec<u32> {
        let rng = self.rng_factory();
        let mut v = vec![0u32; n];
        v.par_chunks_mut(BLOCK).enumerate().for_each(|(b, chunk)| {
            let mut rng = rng(b);
            chunk.iter_mut().for_each(|x| *x = rng.random());
        });
        v
    }

    /// A new stream: block `b` of it gets its own generator, so blocks fill in parallel, reproducibly.
    fn rng_factory(&mut self) -> impl Fn(usize) -> ChaCha8Rng + Sync {
        let (seed, stream) = (self.seed, self.next_stream);
        self.next_stream += 1;
        move |b| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream((stream << 32) | b as u64);
            rng
        }
    }

    /// `n` values uniform in [-bound, bound).
    fn values(&mut self, n: usize, bound: f32) -> Vec<f32> {
        let rng = self.rng_factory();
        let mut v = vec![0f32; n];
        v.par_chunks_mut(BLOCK).enumerate().for_each(|(b, chunk)| {
            let mut rng = rng(b);
            chunk.iter_mut().for_each(|x| *x = rng.random_range(-bound..bound));
        });
        v
    }
}

/// The built-in default model (random weights, toy size: its text is meaningless) and its tokenizer.
/// It always generates the number of tokens asked for.
pub fn default_model() -> (Model, tokenizers::Tokenizer) {
    let tokenizer = crate::generate::default_tokenizer();
    // No end-of-sequence tokens: random weights would end most answers after a token or two.
    let config = default_config(tokenizer.get_vocab_size(true), vec![]);
    (random_model(&config, 0, DType::F32), tokenizer)
}
