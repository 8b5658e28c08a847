//! The forward pass of the Qwen3 MoE family, top to bottom, on any backend: Qwen3.5-MoE, Qwen3-Next (the same
//! network; its grouped projections are regrouped on load) and Qwen3-MoE (full attention only, no output gate, no
//! shared expert). Spec: shared/spec/qwen35-arch.md §2.
//!
//! Every function takes `t` tokens at once: a batched prefill and a single-token decode are the same code, the
//! caches in [`State`] carrying what came before.

use anyhow::Result;

use super::{LayerState, Logits, State};
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::weights::{AttentionWeights, ExpertWeights, LinearAttnWeights, Mixer, MoeWeights, Weights};

pub fn forward<B: Backend>(
    b: &B,
    c: &ModelConfig,
    w: &Weights<B>,
    tokens: &[u32],
    state: &mut State<B>,
    which: Logits,
) -> Result<B::Act> {
    let (h, eps) = (c.hidden_size, c.rms_norm_eps);
    let mut hidden = b.embed(&w.embed, tokens)?;
    for (layer, layer_state) in w.layers.iter().zip(state.layers.iter_mut()) {
        let x = b.rms_norm(&hidden, &layer.input_norm, h, eps);
        let mixed = match (&layer.mixer, layer_state) {
            (Mixer::Attention(a), LayerState::Attention(cache)) => gated_attention(b, c, a, &x, state.pos, cache)?,
            (Mixer::Linear(l), LayerState::Linear(linear)) => gated_deltanet(b, c, l, &x, linear),
            _ => unreachable!("layer state does not match the layer type"),
        };
        let x = b.add_rms_norm(&mut hidden, &mixed, &layer.post_attn_norm, h, eps);
        sparse_moe(b, c, &layer.moe, &x, &mut hidden)?;
    }
    state.pos += tokens.len();
    let last = match which {
        Logits::All => hidden,
        Logits::Last => b.last_row(&hidden, h),
    };
    Ok(b.matmul(&b.rms_norm(&last, &w.final_norm, h, eps), &w.lm_head))
}

/// Full attention with a KV cache. Qwen3.5/Next: q_proj yields per head [query | output gate]; the output is
/// multiplied by sigmoid(gate) before o_proj. q and k are RMS-normed per head, then RoPE'd on the first
/// `rotary_dim` dims.
fn gated_attention<B: Backend>(
    b: &B,
    c: &ModelConfig,
    w: &AttentionWeights<B>,
    x: &B::Act,
    pos0: usize,
    cache: &mut B::KvCache,
) -> Result<B::Act> {
    let (nh, nkv, hd, eps) = (c.num_heads, c.num_kv_heads, c.head_dim, c.rms_norm_eps);
    let projected = b.matmul(x, &w.q_proj);
    let (q, gate) = match c.attn_output_gate() {
        true => {
            let (q, gate) = b.split_heads(&projected, hd);
            (q, Some(gate))
        }
        false => (projected, None),
    };
    let mut q = b.rms_norm(&q, &w.q_norm, hd, eps);
    let mut k = b.rms_norm(&b.matmul(x, &w.k_proj), &w.k_norm, hd, eps);
    let v = b.matmul(x, &w.v_proj);
    b.rope(&mut q, nh, hd, c.rotary_dim, pos0, c.rope_theta);
    b.rope(&mut k, nkv, hd, c.rotary_dim, pos0, c.rope_theta);
    let mut o = b.attention(&q, &k, &v, cache, pos0, (nh, nkv), hd)?;
    if let Some(gate) = gate {
        b.mul_sigmoid(&mut o, &gate);
    }
    Ok(b.matmul(&o, &w.o_proj))
}

/// Gated DeltaNet (linear attention): projections, causal conv + recurrence (the backend's fused op, with its
/// conv and recurrent states), gated RMSNorm per value head, output projection.
fn gated_deltanet<B: Backend>(
    b: &B,
    c: &ModelConfig,
    w: &LinearAttnWeights<B>,
    x: &B::Act,
    state: &mut B::LinearState,
) -> B::Act {
    let l = c.linear.as_ref().expect("linear-attention layer without its config");
    let mixed = b.matmul(x, &w.in_proj_qkv); // [t, q all | k all | v all]
    let z = b.matmul(x, &w.in_proj_z);
    let beta = b.matmul(x, &w.in_proj_b);
    let a = b.matmul(x, &w.in_proj_a);
    let out = b.gated_delta_net(l, w, &mixed, &beta, &a, state);
    let out = b.rms_norm_gated(&out, &w.norm, &z, l.value_head_dim, c.rms_norm_eps);
    b.matmul(&out, &w.out_proj)
}

/// Sparse MoE, added to `hidden`: the router picks k experts per token, each runs its SwiGLU MLP, their outputs
/// are summed with the router's weights, plus the shared expert scaled by sigmoid(shared_expert_gate · x).
pub fn sparse_moe<B: Backend>(b: &B, c: &ModelConfig, w: &MoeWeights<B>, x: &B::Act, hidden: &mut B::Act) -> Result<()> {
    let logits = b.matmul(x, &w.router);
    let routing = b.route(&logits, &w.experts, c.experts_per_token, c.norm_topk_prob);
    let expert_out = b.experts(x, &routing, &w.experts)?;
    let shared = w.shared.as_ref().map(|s| (swiglu_mlp(b, &s.mlp, x), b.matmul(x, &s.gate)));
    b.moe_combine(hidden, &expert_out, &routing, shared.as_ref().map(|(o, g)| (o, g)), c.hidden_size);
    Ok(())
}

/// down · (silu(gate · x) ⊙ (up · x)).
fn swiglu_mlp<B: Backend>(b: &B, w: &ExpertWeights<B>, x: &B::Act) -> B::Act {
    b.matmul(&b.swiglu(&b.matmul(x, &w.gate), &b.matmul(x, &w.up)), &w.down)
}
