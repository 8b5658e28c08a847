//! CPU kernels in f32, parallel with rayon. They are the reference every other backend is compared with, so they
//! favour plain, obviously-correct loops; the matmul is the only one written for speed (it dominates decode).

use rayon::prelude::*;

use crate::tensor::{Elems, Matrix};

/// `x [t, in] · wᵀ` for `w [out, in]` in any stored dtype: returns `[t, out]`. Each weight row is read once (and
/// converted to f32 once) for all `t` tokens, so a batched prefill costs one pass over the weights.
pub fn matmul(x: &[f32], t: usize, w: &Matrix) -> Vec<f32> {
    let &[out, inp] = w.shape() else { panic!("matmul: weight shape {:?} is not 2-D", w.shape()) };
    assert_eq!(x.len(), t * inp, "matmul: input of {} values for {t} tokens × {inp}", x.len());
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
    // As transformers does: inverse frequencies and angles in f32.
    let inv_freq: Vec<f32> = (0..half).map(|j| (1.0 / theta.powf(2.0 * j as f64 / rot as f64)) as f32).collect();
    for (i, tok) in x.chunks_mut(heads * head_dim).enumerate() {
        let pos = (pos0 + i) as f32;
        let (cos, sin): (Vec<f32>, Vec<f32>) = inv_freq
            .iter()
            .map(|f| {
                let a = (pos * f) as f64;
                (a.cos() as f32, a.sin() as f32)
            })
            .unzip();
        for head in tok.chunks_mut(head_dim) {
            for j in 0..half {
                let (a, b) = (head[j], head[j + half]);
                head[j] = a * cos[j] - b * sin[j];
                head[j + half] = b * cos[j] + a * sin[j];
            }
        }
    }
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
