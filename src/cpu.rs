//! The CPU backend: kernels in f32, parallel with rayon. They are the reference every other backend is compared
//! with, so they favour plain, obviously-correct loops; the matmul is the only one written for speed (it dominates
//! decode).

use anyhow::Result;
use rayon::prelude::*;

use crate::backend::Backend;
use crate::config::{LinearAttnConfig, ModelConfig};
use crate::tensor::{Elems, Matrix};
use crate::weights::{ExpertWeights, HostExperts, LinearAttnWeights, Storage};

/// Streamed experts a CPU MoE block reads at once (a prefill touching every expert holds this many records).
const STREAM_BATCH: usize = 16;

// ---- The CPU backend ------------------------------------------------------------------------------------------

/// The CPU backend: weights read in place from host memory (mapped files or owned arrays), f32 compute.
#[derive(Clone, Copy, Default)]
pub struct Cpu;

impl Storage for Cpu {
    type Matrix = Matrix;
    type Vector = Vec<f32>;
    type Experts = HostExperts;
}

/// Keys (post-norm, post-RoPE) and values, `[len, kv_heads · head_dim]` each.
pub struct KvCache {
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
}

/// A linear-attention layer's states.
pub struct LinearState {
    /// The last `kernel - 1` pre-conv inputs `[kernel - 1, channels]` (zeros at the start of a sequence).
    pub conv: Vec<f32>,
    /// The delta-rule state `[Hv, dk, dv]`.
    pub recurrent: Vec<f32>,
}

impl Backend for Cpu {
    type Act = Vec<f32>;
    /// Per token, its experts and their weights.
    type Routing = Vec<Vec<(usize, f32)>>;
    type KvCache = KvCache;
    type LinearState = LinearState;
    type Chosen = u32;

    fn new_kv_cache(&self, _kv_width: usize) -> Result<KvCache> {
        Ok(KvCache { keys: vec![], values: vec![] })
    }

    fn new_linear_state(&self, l: &LinearAttnConfig) -> Result<LinearState> {
        Ok(LinearState {
            conv: vec![0.0; (l.conv_kernel - 1) * l.conv_channels()],
            recurrent: vec![0.0; l.num_value_heads * l.key_head_dim * l.value_head_dim],
        })
    }

    fn copy_kv_cache(&self, cache: &KvCache) -> Result<KvCache> {
        Ok(KvCache { keys: cache.keys.clone(), values: cache.values.clone() })
    }

    fn copy_linear_state(&self, state: &LinearState) -> Result<LinearState> {
        Ok(LinearState { conv: state.conv.clone(), recurrent: state.recurrent.clone() })
    }

    fn act(&self, values: &[f32]) -> Result<Vec<f32>> {
        Ok(values.to_vec())
    }

    fn embed(&self, table: &Matrix, tokens: &[u32]) -> Result<Vec<f32>> {
        Ok(embed_rows(table, tokens))
    }

    fn matmul(&self, x: &Vec<f32>, w: &Matrix) -> Vec<f32> {
        matmul(x, x.len() / w.shape()[1], w)
    }

    fn rms_norm(&self, x: &Vec<f32>, weight: &Vec<f32>, dim: usize, eps: f32) -> Vec<f32> {
        let mut y = x.clone();
        rms_norm(&mut y, dim, weight, eps);
        y
    }

    fn add_rms_norm(&self, hidden: &mut Vec<f32>, x: &Vec<f32>, weight: &Vec<f32>, dim: usize, eps: f32) -> Vec<f32> {
        hidden.iter_mut().zip(x).for_each(|(a, b)| *a += b);
        self.rms_norm(hidden, weight, dim, eps)
    }

    fn attention_heads(
        &self,
        c: &ModelConfig,
        projected: &Vec<f32>,
        k: &Vec<f32>,
        q_norm: &Vec<f32>,
        k_norm: &Vec<f32>,
        pos0: usize,
    ) -> (Vec<f32>, Option<Vec<f32>>, Vec<f32>) {
        let (nh, nkv, hd, eps) = (c.num_heads, c.num_kv_heads, c.head_dim, c.rms_norm_eps);
        let (q, gate) = match c.attn_output_gate() {
            // Per head [query | gate].
            true => {
                let (mut q, mut gate) = (Vec::with_capacity(projected.len() / 2), Vec::with_capacity(projected.len() / 2));
                for row in projected.chunks(2 * hd) {
                    q.extend_from_slice(&row[..hd]);
                    gate.extend_from_slice(&row[hd..]);
                }
                (q, Some(gate))
            }
            false => (projected.clone(), None),
        };
        let mut q = self.rms_norm(&q, q_norm, hd, eps);
        let mut k = self.rms_norm(k, k_norm, hd, eps);
        rope(&mut q, nh, hd, c.rotary_dim, pos0, c.rope_theta);
        rope(&mut k, nkv, hd, c.rotary_dim, pos0, c.rope_theta);
        (q, gate, k)
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        cache: &mut KvCache,
        _pos0: usize,
        (nh, nkv): (usize, usize),
        hd: usize,
        gate: Option<&Vec<f32>>,
    ) -> Result<Vec<f32>> {
        cache.keys.extend_from_slice(k);
        cache.values.extend_from_slice(v);
        let mut o = attention(q, q.len() / (nh * hd), nh, nkv, hd, &cache.keys, &cache.values);
        if let Some(gate) = gate {
            o.iter_mut().zip(gate).for_each(|(v, g)| *v *= sigmoid(*g));
        }
        Ok(o)
    }

    fn gated_delta_net(
        &self,
        l: &LinearAttnConfig,
        w: &LinearAttnWeights,
        x: &Vec<f32>,
        z: &Vec<f32>,
        b: &Vec<f32>,
        a: &Vec<f32>,
        eps: f32,
        state: &mut LinearState,
    ) -> Vec<f32> {
        let conv = conv1d_silu(x, &w.conv1d, l.conv_channels(), l.conv_kernel, &mut state.conv);
        let mut out = delta_rule(l, &conv, b, a, &w.a_log, &w.dt_bias, &mut state.recurrent);
        rms_norm(&mut out, l.value_head_dim, &w.norm, eps);
        out.iter_mut().zip(z).for_each(|(v, zv)| *v *= silu(*zv));
        out
    }

    fn swiglu(&self, gate: &Vec<f32>, up: &Vec<f32>) -> Vec<f32> {
        gate.iter().zip(up).map(|(g, u)| silu(*g) * u).collect()
    }

    fn route(&self, logits: &Vec<f32>, experts: &HostExperts, k: usize, renormalize: bool) -> Self::Routing {
        logits.chunks(experts.count()).map(|row| route(row, k, renormalize)).collect()
    }

    /// Each expert runs once over all the tokens routed to it (a batched prefill reads each expert once).
    /// Streamed experts are fetched a batch at a time, so a long prefill holds a bounded number of records.
    fn reads_ahead(&self, experts: &HostExperts, tokens: usize) -> bool {
        matches!(experts, HostExperts::Streamed(s) if s.store.reads_ahead(tokens))
    }

    fn experts(&self, x: &Vec<f32>, routing: &Self::Routing, experts: &HostExperts, ahead: Option<&Self::Routing>) -> Result<Vec<f32>> {
        if let (Some(ahead), HostExperts::Streamed(s)) = (ahead, experts) {
            let mut guess: Vec<usize> = ahead.iter().flatten().map(|&(e, _)| e).collect();
            guess.sort_unstable();
            guess.dedup();
            s.store.prefetch(s.layer + 1, &guess);
        }
        let k = routing.first().map_or(0, |r| r.len());
        let h = x.len() / routing.len().max(1);
        let mut rows_of_expert: Vec<Vec<(usize, usize)>> = vec![Vec::new(); experts.count()];
        for (tok, chosen) in routing.iter().enumerate() {
            for (j, &(e, _)) in chosen.iter().enumerate() {
                rows_of_expert[e].push((tok, tok * k + j));
            }
        }
        let needed: Vec<usize> = (0..rows_of_expert.len()).filter(|&e| !rows_of_expert[e].is_empty()).collect();
        let mut out = vec![0f32; routing.len() * k * h];
        let mut run = |e: usize, expert: &ExpertWeights| {
            let rows = &rows_of_expert[e];
            let xs: Vec<f32> = rows.iter().flat_map(|&(tok, _)| x[tok * h..(tok + 1) * h].iter().copied()).collect();
            let y = swiglu_mlp(expert, &xs, rows.len());
            for (&(_, row), yr) in rows.iter().zip(y.chunks(h)) {
                out[row * h..(row + 1) * h].copy_from_slice(yr);
            }
        };
        match experts {
            HostExperts::Resident(all) => needed.iter().for_each(|&e| run(e, &all[e])),
            HostExperts::Streamed(s) => {
                for batch in needed.chunks(STREAM_BATCH.max(k)) {
                    let records = s.store.fetch(s.layer, batch, |_, _| ())?;
                    for (&e, record) in batch.iter().zip(&records) {
                        run(e, &s.store.expert_weights(record)?);
                    }
                    s.store.recycle(records);
                }
            }
        }
        Ok(out)
    }

    fn moe_combine_rms_norm(
        &self,
        hidden: &mut Vec<f32>,
        expert_out: &Vec<f32>,
        routing: &Self::Routing,
        shared: Option<(&Vec<f32>, &Vec<f32>)>,
        weight: &Vec<f32>,
        h: usize,
        eps: f32,
    ) -> Vec<f32> {
        let mut y = vec![0f32; h];
        for (tok, chosen) in routing.iter().enumerate() {
            y.fill(0.0);
            for (j, &(_, weight)) in chosen.iter().enumerate() {
                let o = &expert_out[(tok * chosen.len() + j) * h..][..h];
                y.iter_mut().zip(o).for_each(|(yv, ov)| *yv += weight * ov);
            }
            if let Some((out, gate)) = shared {
                let g = sigmoid(gate[tok]);
                y.iter_mut().zip(&out[tok * h..(tok + 1) * h]).for_each(|(yv, ov)| *yv += g * ov);
            }
            hidden[tok * h..(tok + 1) * h].iter_mut().zip(&y).for_each(|(a, b)| *a += b);
        }
        self.rms_norm(hidden, weight, h, eps)
    }

    fn last_row(&self, x: &Vec<f32>, width: usize) -> Vec<f32> {
        x[x.len() - width..].to_vec()
    }

    fn read(&self, x: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(x.clone())
    }

    fn argmax(&self, x: &Vec<f32>) -> Result<u32> {
        Ok(argmax(x))
    }

    fn choose(&self, x: &Vec<f32>) -> Result<u32> {
        Ok(argmax(x))
    }

    fn read_chosen(&self, chosen: &u32) -> Result<u32> {
        Ok(*chosen)
    }

    fn embed_chosen(&self, table: &Matrix, chosen: &u32) -> Result<Vec<f32>> {
        Ok(embed_rows(table, &[*chosen]))
    }
}

/// The index of the largest value, the lower one on a tie.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

// ---- Kernels (the CPU twins of the GPU kernels) -------------------------------------------------------------

/// down · (silu(gate · x) ⊙ (up · x)) over `t` tokens.
fn swiglu_mlp(w: &ExpertWeights, x: &[f32], t: usize) -> Vec<f32> {
    let gate = matmul(x, t, &w.gate);
    let up = matmul(x, t, &w.up);
    let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
    matmul(&act, t, &w.down)
}

/// The experts a token goes to and their weights: softmax over all router logits, the `k` largest (ties to the
/// lower index), renormalized to sum to 1 when `renormalize`. Sorted by expert index.
pub fn route(logits: &[f32], k: usize, renormalize: bool) -> Vec<(usize, f32)> {
    let mut p = logits.to_vec();
    softmax(&mut p);
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

/// Causal depthwise conv over time of `x [t, channels]` with taps `w [channels, kernel]`, then SiLU. `state` holds
/// the previous `kernel - 1` inputs and is updated; tap `kernel - 1` multiplies the current token.
pub fn conv1d_silu(x: &[f32], w: &[f32], channels: usize, kernel: usize, state: &mut Vec<f32>) -> Vec<f32> {
    let t = x.len() / channels;
    let mut padded = std::mem::take(state);
    padded.extend_from_slice(x);
    let mut out = vec![0f32; t * channels];
    for (i, row) in out.chunks_mut(channels).enumerate() {
        for (ch, o) in row.iter_mut().enumerate() {
            let taps = &w[ch * kernel..(ch + 1) * kernel];
            let sum: f32 = taps.iter().enumerate().map(|(j, wj)| wj * padded[(i + j) * channels + ch]).sum();
            *o = silu(sum);
        }
    }
    *state = padded.split_off(t * channels);
    out
}

/// Gated DeltaNet's recurrence over `conv [t, channels]` (q of all key heads | k | v), per value head (value head
/// hh reads key head hh / (hv / hk)), token by token:
///   q, k L2-normalized (q also × 1/sqrt(dk));  S ← exp(g)·S;  δ = β·(v − Sᵀk);  S ← S + k δᵀ;  o = Sᵀq
/// with S `[dk, dv]`, β = sigmoid(b), g = −exp(a_log)·softplus(a + dt_bias). Returns `[t, hv·dv]`.
pub fn delta_rule(
    l: &LinearAttnConfig,
    conv: &[f32],
    b: &[f32],
    a: &[f32],
    a_log: &[f32],
    dt_bias: &[f32],
    recurrent: &mut [f32],
) -> Vec<f32> {
    let (hk, hv, dk, dv) = (l.num_key_heads, l.num_value_heads, l.key_head_dim, l.value_head_dim);
    let (kd, channels) = (hk * dk, l.conv_channels());
    let t = conv.len() / channels;
    let mut q = vec![0f32; t * kd];
    let mut k = vec![0f32; t * kd];
    for i in 0..t {
        let row = &conv[i * channels..(i + 1) * channels];
        q[i * kd..(i + 1) * kd].copy_from_slice(&row[..kd]);
        k[i * kd..(i + 1) * kd].copy_from_slice(&row[kd..2 * kd]);
    }
    // Per key head; eps inside the sqrt of the sum, as the reference does.
    let l2 = |u: &mut [f32], extra: f32| {
        for head in u.chunks_mut(dk) {
            let inv = 1.0 / (head.iter().map(|v| v * v).sum::<f32>() + 1e-6).sqrt() * extra;
            head.iter_mut().for_each(|v| *v *= inv);
        }
    };
    l2(&mut q, 1.0 / (dk as f32).sqrt());
    l2(&mut k, 1.0);

    let per_key = hv / hk;
    let mut out = vec![0f32; t * hv * dv];
    let mut per_head: Vec<Vec<f32>> = vec![Vec::new(); hv];
    recurrent.par_chunks_mut(dk * dv).zip(per_head.par_iter_mut()).enumerate().for_each(|(hh, (s, o_head))| {
        let kh = hh / per_key;
        let decay_rate = -a_log[hh].exp();
        let mut kv = vec![0f32; dv];
        o_head.resize(t * dv, 0.0);
        for i in 0..t {
            let qi = &q[i * kd + kh * dk..i * kd + (kh + 1) * dk];
            let ki = &k[i * kd + kh * dk..i * kd + (kh + 1) * dk];
            let vi = &conv[i * channels + 2 * kd + hh * dv..i * channels + 2 * kd + (hh + 1) * dv];
            let beta = sigmoid(b[i * hv + hh]);
            let decay = (decay_rate * softplus(a[i * hv + hh] + dt_bias[hh])).exp();
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
    out
}

/// `x [t, in] · wᵀ` for `w [out, in]` in any stored dtype: returns `[t, out]`. Each weight row is read once (and
/// converted to f32 once) for all `t` tokens, so a batched prefill costs one pass over the weights; one token of a
/// 2-, 4- or 8-bit matrix skips the conversion (matvec_affine).
pub fn matmul(x: &[f32], t: usize, w: &Matrix) -> Vec<f32> {
    let &[out, inp] = w.shape() else { panic!("matmul: weight shape {:?} is not 2-D", w.shape()) };
    assert_eq!(x.len(), t * inp, "matmul: input of {} values for {t} tokens × {inp}", x.len());
    if t == 1 {
        if let Some(y) = matvec_affine(x, w) {
            return y;
        }
    }
    // f32 weights are read in place; everything else is converted (or dequantized) one row at a time.
    let dense_f32 = match w {
        Matrix::Dense(tensor) => match tensor.elems() {
            Elems::F32(v) => Some(v),
            _ => None,
        },
        Matrix::Affine { .. } => None,
    };
    let rows_per_task = (out / (rayon::current_num_threads() * 8)).clamp(1, 64);
    // Computed as [out, t] so each task owns whole weight rows, then transposed.
    let mut yt = vec![0f32; out * t];
    yt.par_chunks_mut(rows_per_task * t).enumerate().for_each(|(chunk, ys)| {
        let mut converted = vec![0f32; inp];
        for (j, y_row) in ys.chunks_mut(t).enumerate() {
            let r = chunk * rows_per_task + j;
            let row: &[f32] = match dense_f32 {
                Some(v) => &v[r * inp..(r + 1) * inp],
                None => {
                    w.row_f32(r, &mut converted);
                    &converted
                }
            };
            for (tok, y) in y_row.iter_mut().enumerate() {
                *y = dot(row, &x[tok * inp..(tok + 1) * inp]);
            }
        }
    });
    if t == 1 {
        return yt;
    }
    let mut y = vec![0f32; t * out];
    for r in 0..out {
        for tok in 0..t {
            y[tok * out + r] = yt[r * t + tok];
        }
    }
    y
}

/// `x · wᵀ` for one token and a 2-, 4- or 8-bit matrix whose groups hold whole blocks of 8 words (the usual MLX
/// formats: 4 bits with groups of 64 or 128, 8 bits with 32, 64 or 128, 2 bits with 128), without dequantizing rows:
/// per group, `s·Σ q·x + b·Σ x`. Value i of every word of a block is at the same shift, so x is first regrouped as
/// `[block][i][k] = x[block·8·V + V·k + i]` (V values per word): then each shift of the 8 words lines up with 8
/// consecutive x values, and the compiler vectorizes it without shuffles (docs/PERF.md, "CPU decode of 4-bit
/// models"). None for other matrices.
fn matvec_affine(x: &[f32], w: &Matrix) -> Option<Vec<f32>> {
    let Matrix::Affine { format, .. } = w else { return None };
    match format.bits {
        2 => matvec_whole_words::<2>(x, w),
        4 => matvec_whole_words::<4>(x, w),
        8 => matvec_whole_words::<8>(x, w),
        _ => None,
    }
}

fn matvec_whole_words<const BITS: usize>(x: &[f32], w: &Matrix) -> Option<Vec<f32>> {
    let Matrix::Affine { words, scales, biases, format, shape } = w else { return None };
    let (rows, cols) = (shape[0], shape[1]);
    let per_word = 32 / BITS;
    let block = 8 * per_word;
    if format.group % block != 0 {
        return None;
    }
    let Elems::U32(words) = words.elems() else { return None };
    let (scales, biases) = (scales.elems(), biases.elems());
    let mut regrouped = vec![[0f32; 8]; cols / 8];
    for (b, values) in regrouped.chunks_exact_mut(per_word).enumerate() {
        for (i, lane) in values.iter_mut().enumerate() {
            for (k, v) in lane.iter_mut().enumerate() {
                *v = x[b * block + per_word * k + i];
            }
        }
    }
    let x_sums: Vec<f32> = x.chunks(format.group).map(|g| g.iter().sum()).collect();
    let rows_of = WholeWordRows::<BITS> {
        words,
        words_per_row: cols / per_word,
        groups: cols / format.group,
        blocks_per_group: format.group / block,
        regrouped: &regrouped,
        x_sums: &x_sums,
        scales,
        biases,
    };
    let mut y = vec![0f32; rows];
    y.par_chunks_mut(64).enumerate().for_each(|(chunk, ys)| {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (detected just above).
            return unsafe { rows_of.run_avx2(chunk * 64, ys) };
        }
        rows_of.run(chunk * 64, ys)
    });
    Some(y)
}

/// What matvec_whole_words' row tasks share.
struct WholeWordRows<'a, const BITS: usize> {
    words: &'a [u32],
    words_per_row: usize,
    groups: usize,
    blocks_per_group: usize,
    regrouped: &'a [[f32; 8]],
    x_sums: &'a [f32],
    scales: Elems<'a>,
    biases: Elems<'a>,
}

impl<const BITS: usize> WholeWordRows<'_, BITS> {
    /// Rows `first..` into `ys`.
    #[inline(always)]
    fn run(&self, first: usize, ys: &mut [f32]) {
        let per_word = 32 / BITS;
        let mask = (1u32 << BITS) - 1;
        for (j, y) in ys.iter_mut().enumerate() {
            let r = first + j;
            let row = &self.words[r * self.words_per_row..(r + 1) * self.words_per_row];
            let mut sum = 0f32;
            for g in 0..self.groups {
                // Four accumulators of 8 lanes, so that consecutive shifts do not wait for each other.
                let mut acc = [[0f32; 8]; 4];
                for b in g * self.blocks_per_group..(g + 1) * self.blocks_per_group {
                    let block: &[u32; 8] = row[b * 8..b * 8 + 8].try_into().unwrap();
                    let xs = &self.regrouped[b * per_word..(b + 1) * per_word];
                    for (i, lane) in xs.iter().enumerate() {
                        for k in 0..8 {
                            acc[i % 4][k] += ((block[k] >> (BITS * i)) & mask) as f32 * lane[k];
                        }
                    }
                }
                let mut qx = [0f32; 8];
                for a in &acc {
                    for k in 0..8 {
                        qx[k] += a[k];
                    }
                }
                let qx: f32 = qx.iter().sum();
                let at = r * self.groups + g;
                sum += self.scales.get_f32(at) * qx + self.biases.get_f32(at) * self.x_sums[g];
            }
            *y = sum;
        }
    }

    /// `run` compiled for AVX2: the same operations in the same order on 8 lanes instead of SSE2's 4 (so the same
    /// results, bit for bit); decode +20% on the dev VM (docs/PERF.md, "CPU decode of 4-bit models").
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn run_avx2(&self, first: usize, ys: &mut [f32]) {
        self.run(first, ys)
    }
}

/// Dot product with eight independent accumulators (lets the compiler vectorize without reassociating).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Rows `ids` of an embedding table `[vocab, h]`, as f32 `[ids.len(), h]`.
pub fn embed_rows(table: &Matrix, ids: &[u32]) -> Vec<f32> {
    let h = table.shape()[1];
    let mut out = vec![0f32; ids.len() * h];
    for (dst, &id) in out.chunks_mut(h).zip(ids) {
        table.row_f32(id as usize, dst);
    }
    out
}

/// RMSNorm of each `dim`-long row of `x`, in place: `x / sqrt(mean(x²) + eps) * scale`.
pub fn rms_norm(x: &mut [f32], dim: usize, scale: &[f32], eps: f32) {
    assert_eq!(scale.len(), dim);
    for row in x.chunks_mut(dim) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for (v, s) in row.iter_mut().zip(scale) {
            *v = *v * inv * s;
        }
    }
}

/// Rotary embedding on the first `rot` dims of each head (NeoX half rotation: pairs (j, j + rot/2)), in place.
/// `x` is `[t, heads, head_dim]`; token `i` sits at position `pos0 + i`.
pub fn rope(x: &mut [f32], heads: usize, head_dim: usize, rot: usize, pos0: usize, theta: f64) {
    let half = rot / 2;
    let t = x.len() / (heads * head_dim);
    let table = rope_table(pos0, t, rot, theta);
    for (i, tok) in x.chunks_mut(heads * head_dim).enumerate() {
        let cs = &table[i * half * 2..(i + 1) * half * 2];
        for head in tok.chunks_mut(head_dim) {
            for j in 0..half {
                let (a, b) = (head[j], head[j + half]);
                let (cos, sin) = (cs[2 * j], cs[2 * j + 1]);
                head[j] = a * cos - b * sin;
                head[j + half] = b * cos + a * sin;
            }
        }
    }
}

/// (cos, sin) of every rotary angle of positions `pos0..pos0 + t`: `[t, rot/2, 2]`. As transformers does:
/// inverse frequencies and angles in f32 (the GPU backend uploads this same table).
pub fn rope_table(pos0: usize, t: usize, rot: usize, theta: f64) -> Vec<f32> {
    let half = rot / 2;
    let inv_freq: Vec<f32> = (0..half).map(|j| (1.0 / theta.powf(2.0 * j as f64 / rot as f64)) as f32).collect();
    let mut table = Vec::with_capacity(t * half * 2);
    for i in 0..t {
        let pos = (pos0 + i) as f32;
        for f in &inv_freq {
            let a = (pos * f) as f64;
            table.extend_from_slice(&[a.cos() as f32, a.sin() as f32]);
        }
    }
    table
}

/// Causal attention of `t` new queries `q [t, nh, hd]` over the cached `keys`/`values` `[len, nkv, hd]`, whose
/// last `t` entries belong to the new tokens. Query head h reads kv head h / (nh / nkv). Returns `[t, nh, hd]`.
pub fn attention(q: &[f32], t: usize, nh: usize, nkv: usize, hd: usize, keys: &[f32], values: &[f32]) -> Vec<f32> {
    let len = keys.len() / (nkv * hd);
    let past = len - t;
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; t * nh * hd];
    out.par_chunks_mut(nh * hd).enumerate().for_each(|(i, o_tok)| {
        let visible = past + i + 1;
        let mut scores = vec![0f32; visible];
        for (h, o) in o_tok.chunks_mut(hd).enumerate() {
            let kvh = h / group;
            let qh = &q[(i * nh + h) * hd..(i * nh + h + 1) * hd];
            for (j, s) in scores.iter_mut().enumerate() {
                *s = dot(qh, &keys[(j * nkv + kvh) * hd..(j * nkv + kvh + 1) * hd]) * scale;
            }
            softmax(&mut scores);
            o.fill(0.0);
            for (j, p) in scores.iter().enumerate() {
                let v = &values[(j * nkv + kvh) * hd..(j * nkv + kvh + 1) * hd];
                for (a, b) in o.iter_mut().zip(v) {
                    *a += p * b;
                }
            }
        }
    });
    out
}

pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// log(1 + eˣ), linear above 20 as in torch.
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}
