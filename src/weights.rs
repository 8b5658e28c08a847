//! The model's weights in one canonical form, whatever checkpoint layout they came from.
//!
//! Canonical means: norm weights hold the effective multiplier (Qwen3.5's zero-centred `1 + w` is added here, once);
//! linear-attention projections are split as in Qwen3.5 (Qwen3-Next's per-key-head grouping is undone on load);
//! experts are one gate/up/down triple each (views into fused tensors where the checkpoint fuses them). Matrices
//! stay as stored: f32/bf16/f16, or MLX affine-quantized (mlx-community checkpoints), read in place.

use anyhow::{bail, Context, Result};

use crate::checkpoint::Checkpoint;
use crate::config::{Arch, LayerType, ModelConfig};
use crate::cpu::Cpu;
use crate::quant::QuantFormat;
use crate::store::StreamedLayer;
use crate::tensor::Matrix;

/// Where a backend keeps weights: the CPU reads [`Matrix`] and `Vec<f32>` in place (the default, [`Cpu`]); the
/// GPU backend holds its own copies in GPU buffers ([`crate::gpu::Gpu`]). One model layout serves both.
pub trait Storage {
    type Matrix: Clone;
    type Vector: Clone;
    /// One layer's routed experts.
    type Experts: Clone;
}

#[derive(Clone)]
pub struct Weights<S: Storage = Cpu> {
    pub embed: S::Matrix,
    pub layers: Vec<LayerWeights<S>>,
    pub final_norm: S::Vector,
    pub lm_head: S::Matrix,
}

#[derive(Clone)]
pub struct LayerWeights<S: Storage = Cpu> {
    pub input_norm: S::Vector,
    pub post_attn_norm: S::Vector,
    pub mixer: Mixer<S>,
    pub moe: MoeWeights<S>,
}

#[derive(Clone)]
pub enum Mixer<S: Storage = Cpu> {
    Attention(AttentionWeights<S>),
    Linear(LinearAttnWeights<S>),
}

#[derive(Clone)]
pub struct AttentionWeights<S: Storage = Cpu> {
    /// [nh·2·hd, H] with per-head [query | gate] rows when the output gate is on, else [nh·hd, H].
    pub q_proj: S::Matrix,
    pub k_proj: S::Matrix,
    pub v_proj: S::Matrix,
    pub o_proj: S::Matrix,
    pub q_norm: S::Vector,
    pub k_norm: S::Vector,
}

#[derive(Clone)]
pub struct LinearAttnWeights<S: Storage = Cpu> {
    /// [2·Kd + Vd, H]: q of all key heads, k of all key heads, v of all value heads.
    pub in_proj_qkv: S::Matrix,
    pub in_proj_z: S::Matrix,
    pub in_proj_b: S::Matrix,
    pub in_proj_a: S::Matrix,
    /// [channels, kernel]: tap `kernel - 1` multiplies the current token.
    pub conv1d: S::Vector,
    pub a_log: S::Vector,
    pub dt_bias: S::Vector,
    /// Gated RMSNorm weight (plain multiplier, per value-head dimension).
    pub norm: S::Vector,
    pub out_proj: S::Matrix,
}

#[derive(Clone)]
pub struct MoeWeights<S: Storage = Cpu> {
    pub router: S::Matrix,
    pub experts: S::Experts,
    pub shared: Option<SharedExpertWeights<S>>,
}

#[derive(Clone)]
pub struct ExpertWeights<S: Storage = Cpu> {
    pub gate: S::Matrix,
    pub up: S::Matrix,
    pub down: S::Matrix,
}

/// One layer's routed experts in host memory: all of them (mapped from a file or owned), or streamed from a floe
/// model's expert file as tokens route to them (see [`crate::store`]).
#[derive(Clone)]
pub enum HostExperts {
    Resident(Vec<ExpertWeights>),
    Streamed(StreamedLayer),
}

impl HostExperts {
    pub fn count(&self) -> usize {
        match self {
            HostExperts::Resident(all) => all.len(),
            HostExperts::Streamed(s) => s.store.num_experts,
        }
    }

    /// Bytes of all the experts as stored.
    pub fn bytes(&self) -> u64 {
        match self {
            HostExperts::Resident(all) => all.iter().map(|e| e.gate.size_bytes() + e.up.size_bytes() + e.down.size_bytes()).sum::<usize>() as u64,
            HostExperts::Streamed(s) => (s.store.num_experts * s.store.record_bytes) as u64,
        }
    }

    /// All the experts, in memory: what converting or uploading a whole model needs.
    pub fn resident(&self) -> Result<&[ExpertWeights]> {
        match self {
            HostExperts::Resident(all) => Ok(all),
            HostExperts::Streamed(_) => bail!("the experts are streamed from disk, not loaded (internal error)"),
        }
    }
}

#[derive(Clone)]
pub struct SharedExpertWeights<S: Storage = Cpu> {
    pub mlp: ExpertWeights<S>,
    /// [1, H]: sigmoid(gate · x) scales the shared expert's output.
    pub gate: S::Matrix,
}

/// How to move host weights into another storage (e.g. upload them to a GPU): one method per kind of part.
pub trait Transfer<S: Storage> {
    fn matrix(&mut self, name: &str, m: &Matrix) -> Result<S::Matrix>;
    fn vector(&mut self, name: &str, v: &[f32]) -> Result<S::Vector>;
    fn experts(&mut self, layer: usize, experts: &HostExperts) -> Result<S::Experts>;

    /// Matrices that take the same input (a layer's input projections); a storage may keep them together so
    /// that one pass computes them all (the GPU uploads them as one matrix, see `Backend::matmuls`).
    fn matrices<const N: usize>(&mut self, named: [(&str, &Matrix); N]) -> Result<[S::Matrix; N]>
    where
        Self: Sized,
    {
        let moved = named.iter().map(|(name, m)| self.matrix(name, m)).collect::<Result<Vec<_>>>()?;
        Ok(moved.try_into().unwrap_or_else(|_| unreachable!("one matrix per name")))
    }

    /// A layer's MoE block; a storage may lay it out otherwise than [`moe_parts`] does (the GPU keeps the shared
    /// expert as one more routed expert where their shapes agree).
    fn moe(&mut self, layer: usize, moe: &MoeWeights) -> Result<MoeWeights<S>> {
        moe_parts(self, layer, moe)
    }
}

/// A layer's MoE block moved part by part, as stored.
pub fn moe_parts<S: Storage, T: Transfer<S> + ?Sized>(to: &mut T, layer: usize, moe: &MoeWeights) -> Result<MoeWeights<S>> {
    let p = format!("layers.{layer}.");
    let shared = match &moe.shared {
        Some(s) => Some(SharedExpertWeights {
            mlp: ExpertWeights {
                gate: to.matrix(&format!("{p}moe.shared.gate"), &s.mlp.gate)?,
                up: to.matrix(&format!("{p}moe.shared.up"), &s.mlp.up)?,
                down: to.matrix(&format!("{p}moe.shared.down"), &s.mlp.down)?,
            },
            gate: to.matrix(&format!("{p}moe.shared_gate"), &s.gate)?,
        }),
        None => None,
    };
    Ok(MoeWeights {
        router: to.matrix(&format!("{p}moe.router"), &moe.router)?,
        experts: to.experts(layer, &moe.experts)?,
        shared,
    })
}

impl Weights {
    /// These weights in storage `S`, part by part (names are the floe format's canonical tensor names).
    pub fn transfer<S: Storage>(&self, to: &mut impl Transfer<S>) -> Result<Weights<S>> {
        let layers = self.layers.iter().enumerate().map(|(i, l)| l.transfer(i, to)).collect::<Result<Vec<_>>>()?;
        Ok(Weights {
            embed: to.matrix("embed", &self.embed)?,
            layers,
            final_norm: to.vector("final_norm", &self.final_norm)?,
            lm_head: to.matrix("lm_head", &self.lm_head)?,
        })
    }
}

impl LayerWeights {
    /// Layer `i`'s weights in storage `S`, part by part under their canonical names (`layers.{i}.…`): how the GPU
    /// uploads a layer and how `floe convert` writes one.
    pub fn transfer<S: Storage>(&self, i: usize, to: &mut impl Transfer<S>) -> Result<LayerWeights<S>> {
        let p = format!("layers.{i}.");
        let mixer = match &self.mixer {
            Mixer::Attention(a) => {
                let [q_proj, k_proj, v_proj] = to.matrices([
                    (&format!("{p}attn.q_proj"), &a.q_proj),
                    (&format!("{p}attn.k_proj"), &a.k_proj),
                    (&format!("{p}attn.v_proj"), &a.v_proj),
                ])?;
                Mixer::Attention(AttentionWeights {
                    q_proj,
                    k_proj,
                    v_proj,
                    o_proj: to.matrix(&format!("{p}attn.o_proj"), &a.o_proj)?,
                    q_norm: to.vector(&format!("{p}attn.q_norm"), &a.q_norm)?,
                    k_norm: to.vector(&format!("{p}attn.k_norm"), &a.k_norm)?,
                })
            }
            Mixer::Linear(x) => {
                let [in_proj_qkv, in_proj_z, in_proj_b, in_proj_a] = to.matrices([
                    (&format!("{p}linear.in_proj_qkv"), &x.in_proj_qkv),
                    (&format!("{p}linear.in_proj_z"), &x.in_proj_z),
                    (&format!("{p}linear.in_proj_b"), &x.in_proj_b),
                    (&format!("{p}linear.in_proj_a"), &x.in_proj_a),
                ])?;
                Mixer::Linear(LinearAttnWeights {
                in_proj_qkv,
                in_proj_z,
                in_proj_b,
                in_proj_a,
                conv1d: to.vector(&format!("{p}linear.conv1d"), &x.conv1d)?,
                a_log: to.vector(&format!("{p}linear.a_log"), &x.a_log)?,
                dt_bias: to.vector(&format!("{p}linear.dt_bias"), &x.dt_bias)?,
                norm: to.vector(&format!("{p}linear.norm"), &x.norm)?,
                out_proj: to.matrix(&format!("{p}linear.out_proj"), &x.out_proj)?,
            })
            }
        };
        Ok(LayerWeights {
            input_norm: to.vector(&format!("{p}input_norm"), &self.input_norm)?,
            post_attn_norm: to.vector(&format!("{p}post_attn_norm"), &self.post_attn_norm)?,
            mixer,
            moe: to.moe(i, &self.moe)?,
        })
    }
}

/// Where a checkpoint keeps the text model: official Qwen3.5 releases nest it under `model.language_model.`,
/// mlx-community conversions of them under `language_model.model.`.
const PREFIXES: [&str; 3] = ["model.language_model.", "language_model.model.", "model."];

/// The naming and conventions of one checkpoint, found by looking at its tensor names.
struct Layout<'a> {
    ck: &'a Checkpoint,
    /// Converted by MLX (experts stacked in `switch_mlp`): norms already hold the +1, conv1d is [C, K, 1].
    mlx: bool,
}

impl Layout<'_> {
    /// A matrix `shape` = [.., out, in] stored at `name` (`….weight`), dense or affine-quantized; a quantized one
    /// has `….scales` and `….biases` beside it, and its bits and group size follow from the shapes.
    fn matrix(&self, name: &str, shape: &[usize]) -> Result<Matrix> {
        let stem = name.strip_suffix(".weight").unwrap_or(name);
        let scales_name = format!("{stem}.scales");
        if !self.ck.contains(&scales_name) {
            return Ok(Matrix::Dense(self.ck.get(name, shape)?));
        }
        let cols = shape[shape.len() - 1];
        let found_words = self.ck.shape(name)?;
        let found_groups = self.ck.shape(&scales_name)?;
        let (words_per_row, groups) = (found_words[found_words.len() - 1], found_groups[found_groups.len() - 1]);
        if groups == 0 || cols % groups != 0 || (words_per_row * 32) % cols != 0 {
            bail!("tensor {name}: quantized shapes {found_words:?} / {found_groups:?} do not fit a matrix {shape:?}");
        }
        let format = QuantFormat::new((words_per_row * 32 / cols) as u32, cols / groups)
            .with_context(|| format!("tensor {name}"))?;
        let lead = &shape[..shape.len() - 1];
        let words = self.ck.get(name, &[lead, &[words_per_row]].concat())?;
        let scales = self.ck.get(&scales_name, &[lead, &[groups]].concat())?;
        let biases = self.ck.get(&format!("{stem}.biases"), &[lead, &[groups]].concat())?;
        Ok(Matrix::Affine { words, scales, biases, format, shape: shape.to_vec() })
    }

    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        self.ck.get_f32(name, &[n])
    }
}

impl Weights {
    pub fn load(ck: &Checkpoint, c: &ModelConfig) -> Result<Weights> {
        let prefix = PREFIXES.iter().find(|p| ck.contains(&format!("{p}embed_tokens.weight"))).unwrap_or(&"model.");
        let mlx = ck.names().any(|n| n.contains(".switch_mlp."));
        let ly = Layout { ck, mlx };
        let (h, v) = (c.hidden_size, c.vocab_size);
        let norm = |name: &str, n: usize| -> Result<Vec<f32>> {
            let w = ly.vector(name, n)?;
            // Qwen3.5 and Qwen3-Next store zero-centred norms (scale 1 + w) unless MLX already added the 1;
            // Qwen3-MoE stores the scale.
            Ok(if c.arch == Arch::Qwen3Moe || mlx { w } else { w.iter().map(|w| 1.0 + w).collect() })
        };
        let embed = ly.matrix(&format!("{prefix}embed_tokens.weight"), &[v, h])?;
        let lm_head = if c.tie_word_embeddings {
            embed.clone()
        } else if prefix.starts_with("language_model.") {
            ly.matrix("language_model.lm_head.weight", &[v, h])?
        } else {
            ly.matrix("lm_head.weight", &[v, h])?
        };
        let mut layers = Vec::with_capacity(c.num_layers());
        for (i, lt) in c.layer_types.iter().enumerate() {
            let p = format!("{prefix}layers.{i}.");
            let mixer = match lt {
                LayerType::FullAttention => {
                    let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
                    let q_rows = if c.attn_output_gate() { nh * 2 * hd } else { nh * hd };
                    Mixer::Attention(AttentionWeights {
                        q_proj: ly.matrix(&format!("{p}self_attn.q_proj.weight"), &[q_rows, h])?,
                        k_proj: ly.matrix(&format!("{p}self_attn.k_proj.weight"), &[nkv * hd, h])?,
                        v_proj: ly.matrix(&format!("{p}self_attn.v_proj.weight"), &[nkv * hd, h])?,
                        o_proj: ly.matrix(&format!("{p}self_attn.o_proj.weight"), &[h, nh * hd])?,
                        q_norm: norm(&format!("{p}self_attn.q_norm.weight"), hd)?,
                        k_norm: norm(&format!("{p}self_attn.k_norm.weight"), hd)?,
                    })
                }
                LayerType::LinearAttention => Mixer::Linear(load_linear_attn(&ly, c, &format!("{p}linear_attn."))?),
            };
            layers.push(LayerWeights {
                input_norm: norm(&format!("{p}input_layernorm.weight"), h)?,
                post_attn_norm: norm(&format!("{p}post_attention_layernorm.weight"), h)?,
                mixer,
                moe: load_moe(&ly, c, &format!("{p}mlp."))?,
            });
        }
        Ok(Weights { embed, layers, final_norm: norm(&format!("{prefix}norm.weight"), h)?, lm_head })
    }
}

fn load_linear_attn(ly: &Layout, c: &ModelConfig, p: &str) -> Result<LinearAttnWeights> {
    let l = c.linear.as_ref().expect("linear-attention layer in a model without linear attention");
    let h = c.hidden_size;
    let (hk, hv, dk, dv) = (l.num_key_heads, l.num_value_heads, l.key_head_dim, l.value_head_dim);
    let (kd, vd) = (hk * dk, hv * dv);
    let channels = l.conv_channels();
    let (in_proj_qkv, in_proj_z, in_proj_b, in_proj_a) = if ly.ck.contains(&format!("{p}in_proj_qkvz.weight")) {
        ungroup_qwen3_next(ly, p, l, h)?
    } else {
        (
            ly.matrix(&format!("{p}in_proj_qkv.weight"), &[2 * kd + vd, h])?,
            ly.matrix(&format!("{p}in_proj_z.weight"), &[vd, h])?,
            ly.matrix(&format!("{p}in_proj_b.weight"), &[hv, h])?,
            ly.matrix(&format!("{p}in_proj_a.weight"), &[hv, h])?,
        )
    };
    // [C, 1, K] in PyTorch's layout, [C, K, 1] in MLX's: the same order in memory.
    let conv_shape = if ly.mlx { [channels, l.conv_kernel, 1] } else { [channels, 1, l.conv_kernel] };
    Ok(LinearAttnWeights {
        in_proj_qkv,
        in_proj_z,
        in_proj_b,
        in_proj_a,
        conv1d: ly.ck.get_f32(&format!("{p}conv1d.weight"), &conv_shape)?,
        a_log: ly.vector(&format!("{p}A_log"), hv)?,
        dt_bias: ly.vector(&format!("{p}dt_bias"), hv)?,
        norm: ly.vector(&format!("{p}norm.weight"), dv)?,
        out_proj: ly.matrix(&format!("{p}out_proj.weight"), &[h, vd])?,
    })
}

/// Qwen3-Next fuses the projections per key head: `in_proj_qkvz` rows are, for each key head,
/// [q (dk) | k (dk) | v (r·dv) | z (r·dv)] and `in_proj_ba` rows are [b (r) | a (r)], r = value heads per key head.
/// Regroup the rows into Qwen3.5's flat [q all | k all | v all], z, b, a.
fn ungroup_qwen3_next(
    ly: &Layout,
    p: &str,
    l: &crate::config::LinearAttnConfig,
    h: usize,
) -> Result<(Matrix, Matrix, Matrix, Matrix)> {
    let (hk, dk, dv) = (l.num_key_heads, l.key_head_dim, l.value_head_dim);
    let r = l.num_value_heads / hk;
    let group = 2 * dk + 2 * r * dv;
    let qkvz = ly.matrix(&format!("{p}in_proj_qkvz.weight"), &[hk * group, h])?;
    let ba = ly.matrix(&format!("{p}in_proj_ba.weight"), &[hk * 2 * r, h])?;
    // Rows [start, start + n) of every key head's group of `size` rows, head after head.
    let rows = |start: usize, n: usize, size: usize| -> Vec<usize> {
        (0..hk).flat_map(|g| g * size + start..g * size + start + n).collect()
    };
    let qkv_rows = [rows(0, dk, group), rows(dk, dk, group), rows(2 * dk, r * dv, group)].concat();
    Ok((
        qkvz.gather_rows(&qkv_rows),
        qkvz.gather_rows(&rows(2 * dk + r * dv, r * dv, group)),
        ba.gather_rows(&rows(0, r, 2 * r)),
        ba.gather_rows(&rows(r, r, 2 * r)),
    ))
}

fn load_moe(ly: &Layout, c: &ModelConfig, p: &str) -> Result<MoeWeights> {
    let (h, e, i) = (c.hidden_size, c.num_experts, c.moe_intermediate_size);
    let experts = if ly.ck.contains(&format!("{p}experts.gate_up_proj")) {
        // Official Qwen3.5 releases: gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I].
        let gate_up = ly.matrix(&format!("{p}experts.gate_up_proj"), &[e, 2 * i, h])?;
        let down = ly.matrix(&format!("{p}experts.down_proj"), &[e, h, i])?;
        (0..e)
            .map(|x| {
                let gu = gate_up.index(x);
                ExpertWeights { gate: gu.rows(0..i), up: gu.rows(i..2 * i), down: down.index(x) }
            })
            .collect()
    } else if ly.mlx {
        // MLX: experts stacked per projection in switch_mlp.
        let gate = ly.matrix(&format!("{p}switch_mlp.gate_proj.weight"), &[e, i, h])?;
        let up = ly.matrix(&format!("{p}switch_mlp.up_proj.weight"), &[e, i, h])?;
        let down = ly.matrix(&format!("{p}switch_mlp.down_proj.weight"), &[e, h, i])?;
        (0..e).map(|x| ExpertWeights { gate: gate.index(x), up: up.index(x), down: down.index(x) }).collect()
    } else {
        (0..e).map(|x| load_mlp(ly, &format!("{p}experts.{x}."), h, i)).collect::<Result<Vec<_>>>()?
    };
    let shared = match c.shared_expert_intermediate_size {
        Some(is) => Some(SharedExpertWeights {
            mlp: load_mlp(ly, &format!("{p}shared_expert."), h, is)?,
            gate: ly.matrix(&format!("{p}shared_expert_gate.weight"), &[1, h])?,
        }),
        None => None,
    };
    let experts = HostExperts::Resident(experts);
    Ok(MoeWeights { router: ly.matrix(&format!("{p}gate.weight"), &[e, h])?, experts, shared })
}

fn load_mlp(ly: &Layout, p: &str, h: usize, i: usize) -> Result<ExpertWeights> {
    Ok(ExpertWeights {
        gate: ly.matrix(&format!("{p}gate_proj.weight"), &[i, h])?,
        up: ly.matrix(&format!("{p}up_proj.weight"), &[i, h])?,
        down: ly.matrix(&format!("{p}down_proj.weight"), &[h, i])?,
    })
}
