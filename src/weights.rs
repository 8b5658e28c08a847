//! The model's weights in one canonical form, whatever checkpoint layout they came from.
//!
//! Canonical means: norm weights hold the effective multiplier (Qwen3.5's zero-centred `1 + w` is added here, once);
//! linear-attention projections are split as in Qwen3.5 (Qwen3-Next's per-key-head grouping is undone on load);
//! experts are one gate/up/down triple each (views into fused tensors where the checkpoint fuses them).

use anyhow::Result;

use crate::checkpoint::Checkpoint;
use crate::config::{Arch, LayerType, ModelConfig};
use crate::tensor::Tensor;

pub struct Weights {
    pub embed: Tensor,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    pub lm_head: Tensor,
}

pub struct LayerWeights {
    pub input_norm: Vec<f32>,
    pub post_attn_norm: Vec<f32>,
    pub mixer: Mixer,
    pub moe: MoeWeights,
}

pub enum Mixer {
    Attention(AttentionWeights),
    Linear(LinearAttnWeights),
}

pub struct AttentionWeights {
    /// [nh·2·hd, H] with per-head [query | gate] rows when the output gate is on, else [nh·hd, H].
    pub q_proj: Tensor,
    pub k_proj: Tensor,
    pub v_proj: Tensor,
    pub o_proj: Tensor,
    pub q_norm: Vec<f32>,
    pub k_norm: Vec<f32>,
}

pub struct LinearAttnWeights {
    /// [2·Kd + Vd, H]: q of all key heads, k of all key heads, v of all value heads.
    pub in_proj_qkv: Tensor,
    pub in_proj_z: Tensor,
    pub in_proj_b: Tensor,
    pub in_proj_a: Tensor,
    /// [channels, kernel]: tap `kernel - 1` multiplies the current token.
    pub conv1d: Vec<f32>,
    pub a_log: Vec<f32>,
    pub dt_bias: Vec<f32>,
    /// Gated RMSNorm weight (plain multiplier, per value-head dimension).
    pub norm: Vec<f32>,
    pub out_proj: Tensor,
}

pub struct MoeWeights {
    pub router: Tensor,
    pub experts: Vec<ExpertWeights>,
    pub shared: Option<SharedExpertWeights>,
}

pub struct ExpertWeights {
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

pub struct SharedExpertWeights {
    pub mlp: ExpertWeights,
    /// [1, H]: sigmoid(gate · x) scales the shared expert's output.
    pub gate: Tensor,
}

/// Where a checkpoint keeps the text model: official Qwen3.5 releases nest it under `model.language_model.`.
const PREFIXES: [&str; 2] = ["model.language_model.", "model."];

impl Weights {
    pub fn load(ck: &Checkpoint, c: &ModelConfig) -> Result<Weights> {
        let prefix = PREFIXES.iter().find(|p| ck.contains(&format!("{p}embed_tokens.weight"))).unwrap_or(&"model.");
        let (h, v) = (c.hidden_size, c.vocab_size);
        let norm = |name: &str, n: usize| -> Result<Vec<f32>> {
            let w = ck.get_f32(name, &[n])?;
            // Qwen3.5 and Qwen3-Next store zero-centred norms (scale 1 + w); Qwen3-MoE stores the scale.
            Ok(if c.arch == Arch::Qwen3Moe { w } else { w.iter().map(|w| 1.0 + w).collect() })
        };
        let embed = ck.get(&format!("{prefix}embed_tokens.weight"), &[v, h])?;
        let lm_head = if c.tie_word_embeddings { embed.clone() } else { ck.get("lm_head.weight", &[v, h])? };
        let mut layers = Vec::with_capacity(c.num_layers());
        for (i, lt) in c.layer_types.iter().enumerate() {
            let p = format!("{prefix}layers.{i}.");
            let mixer = match lt {
                LayerType::FullAttention => {
                    let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
                    let q_rows = if c.attn_output_gate() { nh * 2 * hd } else { nh * hd };
                    Mixer::Attention(AttentionWeights {
                        q_proj: ck.get(&format!("{p}self_attn.q_proj.weight"), &[q_rows, h])?,
                        k_proj: ck.get(&format!("{p}self_attn.k_proj.weight"), &[nkv * hd, h])?,
                        v_proj: ck.get(&format!("{p}self_attn.v_proj.weight"), &[nkv * hd, h])?,
                        o_proj: ck.get(&format!("{p}self_attn.o_proj.weight"), &[h, nh * hd])?,
                        q_norm: norm(&format!("{p}self_attn.q_norm.weight"), hd)?,
                        k_norm: norm(&format!("{p}self_attn.k_norm.weight"), hd)?,
                    })
                }
                LayerType::LinearAttention => Mixer::Linear(load_linear_attn(ck, c, &format!("{p}linear_attn."))?),
            };
            layers.push(LayerWeights {
                input_norm: norm(&format!("{p}input_layernorm.weight"), h)?,
                post_attn_norm: norm(&format!("{p}post_attention_layernorm.weight"), h)?,
                mixer,
                moe: load_moe(ck, c, &format!("{p}mlp."))?,
            });
        }
        Ok(Weights { embed, layers, final_norm: norm(&format!("{prefix}norm.weight"), h)?, lm_head })
    }
}

fn load_linear_attn(ck: &Checkpoint, c: &ModelConfig, p: &str) -> Result<LinearAttnWeights> {
    let l = c.linear.as_ref().expect("linear-attention layer in a model without linear attention");
    let h = c.hidden_size;
    let (hk, hv, dk, dv) = (l.num_key_heads, l.num_value_heads, l.key_head_dim, l.value_head_dim);
    let (kd, vd) = (hk * dk, hv * dv);
    let channels = l.conv_channels();
    let (in_proj_qkv, in_proj_z, in_proj_b, in_proj_a) = if ck.contains(&format!("{p}in_proj_qkvz.weight")) {
        ungroup_qwen3_next(ck, p, l, h)?
    } else {
        (
            ck.get(&format!("{p}in_proj_qkv.weight"), &[2 * kd + vd, h])?,
            ck.get(&format!("{p}in_proj_z.weight"), &[vd, h])?,
            ck.get(&format!("{p}in_proj_b.weight"), &[hv, h])?,
            ck.get(&format!("{p}in_proj_a.weight"), &[hv, h])?,
        )
    };
    Ok(LinearAttnWeights {
        in_proj_qkv,
        in_proj_z,
        in_proj_b,
        in_proj_a,
        conv1d: ck.get_f32(&format!("{p}conv1d.weight"), &[channels, 1, l.conv_kernel])?,
        a_log: ck.get_f32(&format!("{p}A_log"), &[hv])?,
        dt_bias: ck.get_f32(&format!("{p}dt_bias"), &[hv])?,
        norm: ck.get_f32(&format!("{p}norm.weight"), &[dv])?,
        out_proj: ck.get(&format!("{p}out_proj.weight"), &[h, vd])?,
    })
}

/// Qwen3-Next fuses the projections per key head: `in_proj_qkvz` rows are, for each key head,
/// [q (dk) | k (dk) | v (r·dv) | z (r·dv)] and `in_proj_ba` rows are [b (r) | a (r)], r = value heads per key head.
/// Regroup the rows into Qwen3.5's flat [q all | k all | v all], z, b, a.
fn ungroup_qwen3_next(
    ck: &Checkpoint,
    p: &str,
    l: &crate::config::LinearAttnConfig,
    h: usize,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let (hk, dk, dv) = (l.num_key_heads, l.key_head_dim, l.value_head_dim);
    let r = l.num_value_heads / hk;
    let group = 2 * dk + 2 * r * dv;
    let qkvz = ck.get(&format!("{p}in_proj_qkvz.weight"), &[hk * group, h])?.to_f32();
    let ba = ck.get(&format!("{p}in_proj_ba.weight"), &[hk * 2 * r, h])?.to_f32();
    let rows = |src: &[f32], starts: &mut dyn Iterator<Item = usize>, n: usize| -> Vec<f32> {
        starts.flat_map(|s| src[s * h..(s + n) * h].iter().copied()).collect()
    };
    let mut qkv = rows(&qkvz, &mut (0..hk).map(|g| g * group), dk);
    qkv.extend(rows(&qkvz, &mut (0..hk).map(|g| g * group + dk), dk));
    qkv.extend(rows(&qkvz, &mut (0..hk).map(|g| g * group + 2 * dk), r * dv));
    let z = rows(&qkvz, &mut (0..hk).map(|g| g * group + 2 * dk + r * dv), r * dv);
    let b = rows(&ba, &mut (0..hk).map(|g| g * 2 * r), r);
    let a = rows(&ba, &mut (0..hk).map(|g| g * 2 * r + r), r);
    let (kd, vd, hv) = (hk * dk, l.num_value_heads * dv, l.num_value_heads);
    Ok((
        Tensor::from_f32(vec![2 * kd + vd, h], qkv),
        Tensor::from_f32(vec![vd, h], z),
        Tensor::from_f32(vec![hv, h], b),
        Tensor::from_f32(vec![hv, h], a),
    ))
}

fn load_moe(ck: &Checkpoint, c: &ModelConfig, p: &str) -> Result<MoeWeights> {
    let (h, e, i) = (c.hidden_size, c.num_experts, c.moe_intermediate_size);
    let experts = if ck.contains(&format!("{p}experts.gate_up_proj")) {
        // Official Qwen3.5 releases: gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I].
        let gate_up = ck.get(&format!("{p}experts.gate_up_proj"), &[e, 2 * i, h])?;
        let down = ck.get(&format!("{p}experts.down_proj"), &[e, h, i])?;
        (0..e)
            .map(|x| {
                let gu = gate_up.index(x);
                ExpertWeights { gate: gu.rows(0..i), up: gu.rows(i..2 * i), down: down.index(x) }
            })
            .collect()
    } else {
        (0..e).map(|x| load_mlp(ck, &format!("{p}experts.{x}."), h, i)).collect::<Result<Vec<_>>>()?
    };
    let shared = match c.shared_expert_intermediate_size {
        Some(is) => Some(SharedExpertWeights {
            mlp: load_mlp(ck, &format!("{p}shared_expert."), h, is)?,
            gate: ck.get(&format!("{p}shared_expert_gate.weight"), &[1, h])?,
        }),
        None => None,
    };
    Ok(MoeWeights { router: ck.get(&format!("{p}gate.weight"), &[e, h])?, experts, shared })
}

fn load_mlp(ck: &Checkpoint, p: &str, h: usize, i: usize) -> Result<ExpertWeights> {
    Ok(ExpertWeights {
        gate: ck.get(&format!("{p}gate_proj.weight"), &[i, h])?,
        up: ck.get(&format!("{p}up_proj.weight"), &[i, h])?,
        down: ck.get(&format!("{p}down_proj.weight"), &[h, i])?,
    })
}
