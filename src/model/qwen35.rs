//! The forward pass of the Qwen3 MoE family, top to bottom, on any backend: Qwen3.5-MoE, Qwen3-Next (the same
//! network; its grouped projections are regrouped on load) and Qwen3-MoE (full attention only, no output gate, no
//! shared expert). Spec: shared/spec/qwen35-arch.md §2.
//!
//! Every function takes `t` tokens at once: a batched prefill and a single-token decode are the same code, the
//! caches in [`State`] carrying what came before.

use anyhow::Result;

use super::{Input, LayerState, Logits, State};
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::weights::{AttentionWeights, ExpertWeights, LinearAttnWeights, Mixer, MoeWeights, Weights};

pub fn forward<B: Backend>(
    b: &B,
    c: &ModelConfig,
    w: &Weights<B>,
    input: Input<B>,
    state: &mut State<B>,
    which: Logits,
) -> Result<B::Act> {
    let (h, eps) = (c.hidden_size, c.rms_norm_eps);
    let t = input.tokens();
    let mut hidden = match input {
        Input::Ids(tokens) => b.embed(&w.embed, tokens)?,
        Input::Chosen(chosen) => b.embed_chosen(&w.embed, chosen)?,
    };
    let mut x = b.rms_norm(&hidden, &w.layers[0].input_norm, h, eps);
    for (i, (layer, layer_state)) in w.layers.iter().zip(state.layers.iter_mut()).enumerate() {
        let mixed = match (&layer.mixer, layer_state) {
            (Mixer::Attention(a), LayerState::Attention(cache)) => gated_attention(b, c, a, &x, state.pos, cache)?,
            (Mixer::Linear(l), LayerState::Linear(linear)) => gated_deltanet(b, c, l, &x, linear),
            _ => unreachable!("layer state does not match the layer type"),
        };
        let moe_input = b.add_rms_norm(&mut hidden, &mixed, &layer.post_attn_norm, h, eps);
        // The block's end also normalizes hidden for what comes next: the next layer, or the lm_head.
        let next_norm = w.layers.get(i + 1).map_or(&w.final_norm, |next| &next.input_norm);
        let read_ahead = w.layers.get(i + 1).map(|next| &next.moe).filter(|next| b.reads_ahead(&next.experts, t));
        x = sparse_moe(b, c, &layer.moe, &moe_input, &mut hidden, next_norm, read_ahead)?;
    }
    state.pos += t;
    let last = match which {
        Logits::All => x,
        Logits::Last => b.last_row(&x, h),
    };
    Ok(b.matmul(&last, &w.lm_head))
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
    let [projected, k, v] = b.matmuls(x, [&w.q_proj, &w.k_proj, &w.v_proj]);
    let (q, gate, k) = b.attention_heads(c, &projected, &k, &w.q_norm, &w.k_norm, pos0);
    let o = b.attention(&q, &k, &v, cache, pos0, (c.num_heads, c.num_kv_heads), c.head_dim, gate.as_ref())?;
    Ok(b.matmul(&o, &w.o_proj))
}

/// Gated DeltaNet (linear attention): projections, causal conv + recurrence + gated RMSNorm per value head (the
/// backend's fused op, with its conv and recurrent states), output projection.
fn gated_deltanet<B: Backend>(
    b: &B,
    c: &ModelConfig,
    w: &LinearAttnWeights<B>,
    x: &B::Act,
    state: &mut B::LinearState,
) -> B::Act {
    let l = c.linear.as_ref().expect("linear-attention layer without its config");
    // mixed: [t, q all | k all | v all]
    let [mixed, z, beta, a] = b.matmuls(x, [&w.in_proj_qkv, &w.in_proj_z, &w.in_proj_b, &w.in_proj_a]);
    let out = b.gated_delta_net(l, w, &mixed, &z, &beta, &a, c.rms_norm_eps, state);
    b.matmul(&out, &w.out_proj)
}

/// Sparse MoE, added to `hidden`: the router picks k experts per token, each runs its SwiGLU MLP, their outputs
/// are summed with the router's weights, plus the shared expert scaled by sigmoid(shared_expert_gate · x).
/// Returns RMSNorm(hidden) · `next_norm`, which the same pass computes. With `read_ahead` (the next layer's MoE
/// block, when its streamed experts are read ahead), its router applied to this layer's input guesses which of
/// them it will need, so that they are read while this layer runs.
pub fn sparse_moe<B: Backend>(
    b: &B,
    c: &ModelConfig,
    w: &MoeWeights<B>,
    x: &B::Act,
    hidden: &mut B::Act,
    next_norm: &B::Vector,
    read_ahead: Option<&MoeWeights<B>>,
) -> Result<B::Act> {
    let (k, renormalize) = (c.experts_per_token, c.norm_topk_prob);
    let routing = b.route(&b.matmul(x, &w.router), &w.experts, k, renormalize);
    let ahead = read_ahead.map(|next| b.route(&b.matmul(x, &next.router), &next.experts, k, renormalize));
    let expert_out = b.experts(x, &routing, &w.experts, ahead.as_ref())?;
    let shared = w.shared.as_ref().map(|s| (swiglu_mlp(b, &s.mlp, x), b.matmul(x, &s.gate)));
    let shared = shared.as_ref().map(|(o, g)| (o, g));
    Ok(b.moe_combine_rms_norm(hidden, &expert_out, &routing, shared, next_norm, c.hidden_size, c.rms_norm_eps))
}

/// down · (silu(gate · x) ⊙ (up · x)).
fn swiglu_mlp<B: Backend>(b: &B, w: &ExpertWeights<B>, x: &B::Act) -> B::Act {
    b.matmul(&b.swiglu(&b.matmul(x, &w.gate), &b.matmul(x, &w.up)), &w.down)
}
