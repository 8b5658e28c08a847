//! The forward pass of the Qwen3 MoE family on the CPU, top to bottom: Qwen3.5-MoE, Qwen3-Next (the same network;
//! its grouped projections are regrouped on load) and Qwen3-MoE (full attention only, no output gate, no shared
//! expert). Spec: shared/spec/qwen35-arch.md §2.
//!
//! Every function takes `t` tokens at once: a batched prefill and a single-token decode are the same code, the
//! caches in [`State`] carrying what came before.

use rayon::prelude::*;

use super::{LayerState, Logits, State};
use crate::config::{LinearAttnConfig, ModelConfig};
use crate::cpu::{self, matmul, rms_norm, sigmoid, silu, softplus};
use crate::weights::{AttentionWeights, ExpertWeights, LinearAttnWeights, Mixer, MoeWeights, Weights};

pub fn forward(c: &ModelConfig, w: &Weights, tokens: &[u32], state: &mut State, which: Logits) -> Vec<f32> {
    let (t, h) = (tokens.len(), c.hidden_size);
    let mut hidden = cpu::embed_rows(&w.embed, tokens);
    for (layer, layer_state) in w.layers.iter().zip(state.layers.iter_mut()) {
        let mut x = hidden.clone();
        rms_norm(&mut x, h, &layer.input_norm, c.rms_norm_eps);
        let mixed = match (&layer.mixer, layer_state) {
            (Mixer::Attention(a), LayerState::Attention { keys, values }) => {
                gated_attention(c, a, &x, t, state.pos, keys, values)
            }
            (Mixer::Linear(l), LayerState::Linear { conv, recurrent }) => {
                gated_deltanet(c, c.linear.as_ref().unwrap(), l, &x, t, conv, recurrent)
            }
            _ => unreachable!("layer state does not match the layer type"),
        };
        add(&mut hidden, &mixed);
        let mut x = hidden.clone();
        rms_norm(&mut x, h, &layer.post_attn_norm, c.rms_norm_eps);
        add(&mut hidden, &sparse_moe(c, &layer.moe, &x, t));
    }
    state.pos += t;
    let mut last = match which {
        Logits::All => hidden,
        Logits::Last => hidden.split_off((t - 1) * h),
    };
    rms_norm(&mut last, h, &w.final_norm, c.rms_norm_eps);
    matmul(&last, last.len() / h, &w.lm_head)
}

/// Full attention with a KV cache. Qwen3.5/Next: q_proj yields per head [query | output gate]; the output is
/// multiplied by sigmoid(gate) before o_proj. q and k are RMS-normed per head, then RoPE'd on the first
/// `rotary_dim` dims.
fn gated_attention(
    c: &ModelConfig,
    w: &AttentionWeights,
    x: &[f32],
    t: usize,
    pos0: usize,
    keys: &mut Vec<f32>,
    values: &mut Vec<f32>,
) -> Vec<f32> {
    let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let projected = matmul(x, t, &w.q_proj);
    let (mut q, gate) = if c.attn_output_gate() {
        let mut q = Vec::with_capacity(t * nh * hd);
        let mut gate = Vec::with_capacity(t * nh * hd);
        for head in projected.chunks(2 * hd) {
            q.extend_from_slice(&head[..hd]);
            gate.extend_from_slice(&head[hd..]);
        }
        (q, Some(gate))
    } else {
        (projected, None)
    };
    let mut k = matmul(x, t, &w.k_proj);
    let v = matmul(x, t, &w.v_proj);
    rms_norm(&mut q, hd, &w.q_norm, c.rms_norm_eps);
    rms_norm(&mut k, hd, &w.k_norm, c.rms_norm_eps);
    cpu::rope(&mut q, nh, hd, c.rotary_dim, pos0, c.rope_theta);
    cpu::rope(&mut k, nkv, hd, c.rotary_dim, pos0, c.rope_theta);
    keys.extend_from_slice(&k);
    values.extend_from_slice(&v);
    let mut o = cpu::attention(&q, t, nh, nkv, hd, keys, values);
    if let Some(gate) = gate {
        for (o, g) in o.iter_mut().zip(&gate) {
            *o *= sigmoid(*g);
        }
    }
    matmul(&o, t, &w.o_proj)
}

/// Gated DeltaNet (linear attention) with its causal-conv and recurrent states.
fn gated_deltanet(
    c: &ModelConfig,
    l: &LinearAttnConfig,
    w: &LinearAttnWeights,
    x: &[f32],
    t: usize,
    conv_state: &mut Vec<f32>,
    recurrent: &mut [f32],
) -> Vec<f32> {
    let (hk, hv, dk, dv) = (l.num_key_heads, l.num_value_heads, l.key_head_dim, l.value_head_dim);
    let (kd, channels, kernel) = (hk * dk, l.conv_channels(), l.conv_kernel);
    let mixed = matmul(x, t, &w.in_proj_qkv); // [t, q all | k all | v all]
    let z = matmul(x, t, &w.in_proj_z);
    let b = matmul(x, t, &w.in_proj_b);
    let a = matmul(x, t, &w.in_proj_a);

    // Causal depthwise conv over time, then SiLU. The state holds the previous `kernel - 1` inputs (zeros at the
    // start of a sequence); tap `kernel - 1` multiplies the current token.
    let mut padded = std::mem::take(conv_state);
    padded.extend_from_slice(&mixed);
    let mut conv = vec![0f32; t * channels];
    for (i, out) in conv.chunks_mut(channels).enumerate() {
        for (ch, o) in out.iter_mut().enumerate() {
            let taps = &w.conv1d[ch * kernel..(ch + 1) * kernel];
            let sum: f32 = taps.iter().enumerate().map(|(j, wj)| wj * padded[(i + j) * channels + ch]).sum();
            *o = silu(sum);
        }
    }
    *conv_state = padded.split_off(t * channels);

    // q and k: L2-normalized per key head (eps inside the sqrt of the sum); q also scaled by 1/sqrt(dk).
    let mut q = vec![0f32; t * kd];
    let mut k = vec![0f32; t * kd];
    for i in 0..t {
        let row = &conv[i * channels..(i + 1) * channels];
        q[i * kd..(i + 1) * kd].copy_from_slice(&row[..kd]);
        k[i * kd..(i + 1) * kd].copy_from_slice(&row[kd..2 * kd]);
    }
    let l2 = |u: &mut [f32], extra: f32| {
        for head in u.chunks_mut(dk) {
            let inv = 1.0 / (head.iter().map(|v| v * v).sum::<f32>() + 1e-6).sqrt() * extra;
            head.iter_mut().for_each(|v| *v *= inv);
        }
    };
    l2(&mut q, 1.0 / (dk as f32).sqrt());
    l2(&mut k, 1.0);

    // The delta rule, per value head (value head hh reads key head hh / (hv / hk)), token by token:
    //   S ← exp(g)·S;  δ = β·(v − Sᵀk);  S ← S + k δᵀ;  o = Sᵀq     with S [dk, dv]
    let per_key = hv / hk;
    let mut out = vec![0f32; t * hv * dv];
    let mut per_head: Vec<Vec<f32>> = vec![Vec::new(); hv];
    recurrent.par_chunks_mut(dk * dv).zip(per_head.par_iter_mut()).enumerate().for_each(|(hh, (s, o_head))| {
        let kh = hh / per_key;
        let decay_rate = -w.a_log[hh].exp();
        let mut kv = vec![0f32; dv];
        o_head.resize(t * dv, 0.0);
        for i in 0..t {
            let qi = &q[i * kd + kh * dk..i * kd + (kh + 1) * dk];
            let ki = &k[i * kd + kh * dk..i * kd + (kh + 1) * dk];
            let vi = &conv[i * channels + 2 * kd + hh * dv..i * channels + 2 * kd + (hh + 1) * dv];
            let beta = sigmoid(b[i * hv + hh]);
            let decay = (decay_rate * softplus(a[i * hv + hh] + w.dt_bias[hh])).exp();
            s.iter_mut().for_each(|v| *v *= decay);
            kv.fill(0.0);
            for (row, &kr) in s.chunks(dv).zip(ki) {
                kv.iter_mut().zip(row).for_each(|(acc, sv)| *acc += sv * kr);
            }
            for (row, &kr) in s.chunks_mut(dv).zip(ki) {
                for ((sv, &vj), &kvj) in row.iter_mut().zip(vi).zip(&kv) {
                    *sv += kr * (vj - kvj) * beta;
                }
            }
            let o = &mut o_head[i * dv..(i + 1) * dv];
            for (row, &qr) in s.chunks(dv).zip(qi) {
                o.iter_mut().zip(row).for_each(|(acc, sv)| *acc += sv * qr);
            }
        }
    });
    for (hh, o_head) in per_head.iter().enumerate() {
        for i in 0..t {
            out[(i * hv + hh) * dv..(i * hv + hh + 1) * dv].copy_from_slice(&o_head[i * dv..(i + 1) * dv]);
        }
    }

    // Gated RMSNorm per value head: normalize, × weight, × silu(z).
    rms_norm(&mut out, dv, &w.norm, c.rms_norm_eps);
    for (o, zv) in out.iter_mut().zip(&z) {
        *o *= silu(*zv);
    }
    matmul(&out, t, &w.out_proj)
}

/// Sparse MoE: softmax over all experts, top-k, optional renormalization; each expert runs once over all the
/// tokens routed to it; plus the shared expert scaled by sigmoid(shared_expert_gate · x).
fn sparse_moe(c: &ModelConfig, w: &MoeWeights, x: &[f32], t: usize) -> Vec<f32> {
    let h = c.hidden_size;
    let logits = matmul(x, t, &w.router);
    let mut tokens_of_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); c.num_experts];
    for (tok, row) in logits.chunks(c.num_experts).enumerate() {
        for (e, weight) in route(row, c.experts_per_token, c.norm_topk_prob) {
            tokens_of_expert[e].push((tok, weight));
        }
    }
    let mut y = vec![0f32; t * h];
    for (e, routed) in tokens_of_expert.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
        let xs: Vec<f32> = routed.iter().flat_map(|&(tok, _)| x[tok * h..(tok + 1) * h].iter().copied()).collect();
        let out = swiglu_mlp(&w.experts[e], &xs, routed.len());
        for (&(tok, weight), o) in routed.iter().zip(out.chunks(h)) {
            y[tok * h..(tok + 1) * h].iter_mut().zip(o).for_each(|(yv, ov)| *yv += weight * ov);
        }
    }
    if let Some(shared) = &w.shared {
        let out = swiglu_mlp(&shared.mlp, x, t);
        let gate = matmul(x, t, &shared.gate);
        for (tok, o) in out.chunks(h).enumerate() {
            let g = sigmoid(gate[tok]);
            y[tok * h..(tok + 1) * h].iter_mut().zip(o).for_each(|(yv, ov)| *yv += g * ov);
        }
    }
    y
}

/// The experts a token goes to and their weights: softmax over all router logits, the `k` largest (ties to the
/// lower index), renormalized to sum to 1 when `renormalize`. Sorted by expert index.
pub fn route(logits: &[f32], k: usize, renormalize: bool) -> Vec<(usize, f32)> {
    let mut p = logits.to_vec();
    cpu::softmax(&mut p);
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&i, &j| p[j].total_cmp(&p[i]).then(i.cmp(&j)));
    let mut top: Vec<(usize, f32)> = order[..k].iter().map(|&e| (e, p[e])).collect();
    if renormalize {
        let sum: f32 = top.iter().map(|(_, w)| w).sum();
        top.iter_mut().for_each(|(_, w)| *w /= sum);
    }
    top.sort_by_key(|&(e, _)| e);
    top
}

/// down · (silu(gate · x) ⊙ (up · x)) over `t` tokens.
fn swiglu_mlp(w: &ExpertWeights, x: &[f32], t: usize) -> Vec<f32> {
    let gate = matmul(x, t, &w.gate);
    let up = matmul(x, t, &w.up);
    let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
    matmul(&act, t, &w.down)
}

fn add(acc: &mut [f32], x: &[f32]) {
    acc.iter_mut().zip(x).for_each(|(a, b)| *a += b);
}
