//! The forward pass's operations on the GPU ([`Backend`] for [`Gpu`]), and the upload of host weights.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::stream::ExpertSlots;
use super::{grid_1d, kernels, Buf, Gpu};
use crate::backend::{Backend, Counters};
use crate::config::{LinearAttnConfig, ModelConfig};
use crate::convert::expert_record;
use crate::format::{dtype_name, TensorEntry};
use crate::model::WeightsFrom;
use crate::tensor::{DType, Matrix};
use crate::store::StreamedLayer;
use crate::weights::{moe_parts, ExpertWeights, HostExperts, LinearAttnWeights, MoeWeights, Storage, Transfer, Weights};

/// A weight matrix in a GPU buffer: its parts' offsets in their own units (see wgsl/weights.wgsl).
#[derive(Clone)]
pub struct GpuMatrix {
    buf: Rc<Buf>,
    rows: usize,
    cols: usize,
    /// The weight format as kernel names spell it: `f32`, `bf16`, `f16`, `q4g64bf16`, ...
    format: String,
    offsets: [u32; 3],
    /// How far each part's offset moves per row: matrices uploaded together (`Transfer::matrices`) are views
    /// of one matrix, each next one's rows right after the previous one's.
    row_units: [u32; 3],
    /// The rows after these `rows`, for a matrix larger than one binding: split by rows into buffers that each
    /// fit one (each piece with no `more` of its own).
    more: Vec<GpuMatrix>,
}

impl GpuMatrix {
    /// Each piece of the matrix with its first row: this one, then `more`.
    fn pieces(&self) -> impl Iterator<Item = (usize, &GpuMatrix)> {
        std::iter::once(self).chain(&self.more).scan(0, |row0, piece| {
            let first = *row0;
            *row0 += piece.rows;
            Some((first, piece))
        })
    }

    fn total_rows(&self) -> usize {
        self.pieces().map(|(_, piece)| piece.rows).sum()
    }

    /// Whether `next`'s rows follow this matrix's in the same upload (so one dispatch can cover both).
    fn followed_by(&self, next: &GpuMatrix) -> bool {
        self.more.is_empty()
            && next.more.is_empty()
            && Rc::ptr_eq(&self.buf, &next.buf)
            && self.format == next.format
            && self.cols == next.cols
            && (0..3).all(|i| self.offsets[i] + self.rows as u32 * self.row_units[i] == next.offsets[i])
    }
}

/// One layer's routed experts: fixed-stride records (the floe format's layout) in one GPU buffer; where its shape
/// agrees, the shared expert too, as record `routed` (the router then has its gate as one more row, and every
/// token gets it as one more routed expert weighted sigmoid(gate): three dispatches fewer per layer).
#[derive(Clone)]
pub struct GpuExperts {
    /// All the records, or (streamed) the buffer of this layer's slots.
    buf: Rc<Buf>,
    /// Streamed: the slots and this layer's number.
    stream: Option<(Rc<ExpertSlots>, usize)>,
    routed: usize,
    shared: bool,
    stride: u32,
    hidden: usize,
    intermediate: usize,
    gate_up_format: String,
    down_format: String,
    /// Byte offsets of (weights, scales, biases) of gate, up and down within a record.
    gate: [u32; 3],
    up: [u32; 3],
    down: [u32; 3],
}

/// An f32 activation array on the GPU.
pub struct Act {
    buf: Buf,
    len: usize,
}

/// A token id chosen on the GPU ([`Backend::choose`]), and its way back to the CPU: a copy in a mappable buffer
/// (reused from earlier choices), mapped once the submission that chose it has run.
pub struct Chosen {
    id: Buf,
    readback: wgpu::Buffer,
    submission: wgpu::SubmissionIndex,
    /// Where `readback` goes, unmapped, once this is dropped (the next choice reuses it).
    spare: Rc<RefCell<Vec<wgpu::Buffer>>>,
}

impl Drop for Chosen {
    fn drop(&mut self) {
        // Also ends a mapping still pending (a choice never read).
        self.readback.unmap();
        self.spare.borrow_mut().push(self.readback.clone());
    }
}

/// Per token, k expert ids and their weights, on the GPU.
pub struct Routing {
    ids: Buf,
    weights: Buf,
    tokens: usize,
    k: usize,
}

pub struct KvCache {
    keys: Buf,
    values: Buf,
    /// Tokens the buffers hold room for.
    capacity: usize,
    width: usize,
}

pub struct LinearState {
    /// A ring of `kernel` rows of past inputs: position P in row P mod kernel (see wgsl/conv1d.wgsl).
    conv: Buf,
    recurrent: Buf,
    /// Tokens run so far: the next position.
    pos: usize,
}

impl Storage for Gpu {
    type Matrix = GpuMatrix;
    type Vector = Rc<Buf>;
    type Experts = GpuExperts;
}

impl Gpu {
    /// The kernel `name`, which build.rs rendered for every format an upload accepts.
    fn kernel(&self, name: &str) -> &'static str {
        kernels::find(name).unwrap_or_else(|| panic!("no kernel named {name}")).name
    }

    /// The embedding rows of `n` token ids held in `ids`.
    fn embed_ids(&self, table: &GpuMatrix, ids: &Buf, n: usize) -> Act {
        let out = self.empty(n * table.cols);
        let kernel = self.kernel(&format!("embed_{}", table.format));
        let grid = (table.cols.div_ceil(64) as u32, n as u32, 1);
        // Each piece of a split table fills the rows of the tokens it holds.
        for (row0, piece) in table.pieces() {
            let [w, s, b] = piece.offsets;
            let params = [table.cols as u32, w, s, b, row0 as u32, piece.rows as u32];
            self.dispatch(kernel, &[&piece.buf, ids, &out.buf], &params, grid);
        }
        out
    }

    /// The index of `x`'s largest value (the lower on a tie), in a buffer of one u32.
    fn argmax_id(&self, x: &Act) -> Buf {
        let groups = x.len.div_ceil(4096);
        assert!(groups <= 65535, "argmax over more than 268M values");
        let (values, indices, result) = (self.scratch(groups), self.scratch(groups), self.scratch(1));
        self.dispatch("argmax_partial", &[&x.buf, &values, &indices], &[x.len as u32], (groups as u32, 1, 1));
        self.dispatch("argmax_final", &[&values, &indices, &result], &[groups as u32], (1, 1, 1));
        result
    }

    /// [`matmul_layout`] on this GPU.
    fn matmul_layout(&self, rows: usize, cols: usize, t: usize, wide: bool, format: &str) -> (&'static str, (u32, u32, u32)) {
        matmul_layout(rows, cols, t, wide, format, self.tensor_cores.get())
    }

    /// A prefill's y = x · Wᵀ on tensor cores (`gemm_f16` in [`matmul_layout`]): the `rows` rows of W (in `format`
    /// at `offsets` of its buffer) dequantized into f16 and x rounded to f16 (wgsl/dequant.wgsl), then multiplied
    /// by `gemm_f16`, into `outs` (four: `gemm_f16_split`) with `tail` the outputs' params.
    fn gemm_f16(&self, x: &Act, t: usize, cols: usize, w: (&Buf, [u32; 3], usize, &str), outs: &[&Buf], tail: &[u32]) {
        let (buf, [wo, so, bo], rows, format) = w;
        let (rows128, t64) = (rows.next_multiple_of(128), t.next_multiple_of(64));
        let xh = self.scratch(t64 * cols / 2);
        let pairs = t64 * cols / 2;
        self.dispatch("x_f16", &[&x.buf, &xh], &[pairs as u32, cols as u32, t as u32], grid_1d(pairs));
        let wh = self.scratch(rows128 * cols / 2);
        let dequant = self.kernel(&format!("matmul_{format}_dequant"));
        let bits: usize = format[1..2].parse().expect("an affine format's bits");
        self.dispatch(dequant, &[buf, &wh], &[rows as u32, cols as u32, wo, so, bo], grid_1d(rows * cols / 32 * bits));
        let bound = [&[&wh, &xh][..], outs].concat();
        let params = [&[rows as u32, cols as u32, t as u32][..], tail].concat();
        let kernel = if outs.len() == 4 { "gemm_f16_split" } else { "gemm_f16" };
        self.dispatch(kernel, &bound, &params, ((rows128 / 128) as u32, (t64 / 64) as u32, 1));
    }

    /// Kernel `name`, or its subgroup variant `{name}_sg` where subgroups are on and it has one (the matrix kernels
    /// but the tiled ones, which reduce nothing; the router; the norms).
    fn sg_variant(&self, name: &str) -> &'static str {
        match self.subgroups.get().then(|| kernels::find(&format!("{name}_sg"))).flatten() {
            Some(k) => k.name,
            None => self.kernel(name),
        }
    }

    /// A new activation of `len` values, contents undefined.
    fn empty(&self, len: usize) -> Act {
        Act { buf: self.scratch(len), len }
    }

    /// A new buffer with `buf`'s contents (copied in order with the recorded work).
    fn copy_of(&self, buf: &Buf) -> Result<Buf> {
        let copy = self.zeros((buf.buffer.size() / 4) as usize)?;
        self.copy(&buf.buffer, 0, &copy, 0, buf.buffer.size());
        Ok(copy)
    }

    /// The two expert kernels for (token, j) pairs `pairs`, reading record `ids[pair]` of `e.buf` for each, in
    /// `layout` (see [`ExpertLayout`]).
    #[allow(clippy::too_many_arguments)]
    fn expert_kernels(&self, x: &Act, ids: &Buf, k: usize, e: &GpuExperts, pairs: std::ops::Range<usize>, layout: ExpertLayout, act: &Act, out: &Act) {
        let (h, i) = (e.hidden, e.intermediate);
        let (first, n) = (pairs.start as u32, pairs.len() as u32);
        let [gw, gs, gb] = e.gate;
        let [uw, us, ub] = e.up;
        let [dw, ds, db] = e.down;
        let gate_up = [i as u32, h as u32, k as u32, e.stride, gw, gs, gb, uw, us, ub, first];
        let down = [h as u32, i as u32, e.stride, dw, ds, db, first];
        if layout == ExpertLayout::PerPair {
            let kernel = self.sg_variant(&format!("expert_gate_up_{}", e.gate_up_format));
            self.dispatch(kernel, &[&e.buf, &x.buf, ids, &act.buf], &gate_up, (i.div_ceil(16) as u32, n, 1));
            let kernel = self.sg_variant(&format!("expert_down_{}", e.down_format));
            self.dispatch(kernel, &[&e.buf, &act.buf, ids, &out.buf], &down, (h.div_ceil(32) as u32, n, 1));
            return;
        }
        let size = layout.chunk_pairs();
        let (records, chunks) = group_chunks(e, pairs.len(), size);
        let (order, chunk_table, work) = (self.scratch(pairs.len()), self.scratch(2 * chunks), self.scratch(2 * records));
        let params = [n, first, records as u32, chunks as u32, size as u32];
        self.dispatch("group_pairs", &[ids, &order, &chunk_table, &work], &params, (1, 1, 1));
        // Rows per workgroup: 8 of gate and up and 16 of down grouped; 256 and 512 in rows.
        let (suffix, gate_up_rows, down_rows) = match layout {
            ExpertLayout::Rows => ("rows", 256, 512),
            _ => ("grouped", 8, 16),
        };
        // The rows kernels also read the records as 16-byte words, through a second binding of the same buffer.
        let again: &[&Buf] = if layout == ExpertLayout::Rows { &[&*e.buf] } else { &[] };
        let kernel = self.sg_variant(&format!("expert_gate_up_{}_{suffix}", e.gate_up_format));
        let buffers = [&[&*e.buf, &x.buf, ids, &act.buf, &order, &chunk_table][..], again].concat();
        self.dispatch(kernel, &buffers, &gate_up, (i.div_ceil(gate_up_rows) as u32, chunks as u32, 1));
        let kernel = self.sg_variant(&format!("expert_down_{}_{suffix}", e.down_format));
        let buffers = [&[&*e.buf, &act.buf, ids, &out.buf, &order, &chunk_table][..], again].concat();
        self.dispatch(kernel, &buffers, &down, (h.div_ceil(down_rows) as u32, chunks as u32, 1));
    }

    /// Element-wise `op` over `n` values; `copy` reads from element `src` on and writes from `dst` on.
    fn elementwise(&self, op: &'static str, buffers: &[&Buf], n: usize, [src, dst]: [u32; 2]) {
        self.dispatch(op, buffers, &[n as u32, src, dst], grid_1d(n));
    }
}

impl Backend for Gpu {
    type Act = Act;
    type Routing = Routing;
    type KvCache = KvCache;
    type LinearState = LinearState;
    type Chosen = Chosen;

    fn new_kv_cache(&self, width: usize) -> Result<KvCache> {
        Ok(KvCache { keys: self.zeros(width)?, values: self.zeros(width)?, capacity: 0, width })
    }

    fn new_linear_state(&self, l: &LinearAttnConfig) -> Result<LinearState> {
        Ok(LinearState {
            conv: self.zeros(l.conv_kernel * l.conv_channels())?,
            recurrent: self.zeros(l.num_value_heads * l.key_head_dim * l.value_head_dim)?,
            pos: 0,
        })
    }

    fn copy_kv_cache(&self, cache: &KvCache) -> Result<KvCache> {
        Ok(KvCache {
            keys: self.copy_of(&cache.keys)?,
            values: self.copy_of(&cache.values)?,
            capacity: cache.capacity,
            width: cache.width,
        })
    }

    fn copy_linear_state(&self, state: &LinearState) -> Result<LinearState> {
        Ok(LinearState { conv: self.copy_of(&state.conv)?, recurrent: self.copy_of(&state.recurrent)?, pos: state.pos })
    }

    fn act(&self, values: &[f32]) -> Result<Act> {
        Ok(Act { buf: self.upload("an activation", bytemuck::cast_slice(values))?, len: values.len() })
    }

    fn embed(&self, table: &GpuMatrix, tokens: &[u32]) -> Result<Act> {
        ensure!(tokens.len() <= 65535, "at most 65535 tokens per forward call on the GPU");
        let ids = self.upload("token ids", bytemuck::cast_slice(tokens))?;
        Ok(self.embed_ids(table, &ids, tokens.len()))
    }

    fn embed_chosen(&self, table: &GpuMatrix, chosen: &Chosen) -> Result<Act> {
        Ok(self.embed_ids(table, &chosen.id, 1))
    }

    fn matmul(&self, x: &Act, w: &GpuMatrix) -> Act {
        let t = x.len / w.cols;
        let total = w.total_rows();
        let out = self.empty(t * total);
        // Each piece of a split matrix writes its rows of the output.
        for (row0, piece) in w.pieces() {
            let (layout, grid) = self.matmul_layout(piece.rows, w.cols, t, true, &w.format);
            if layout == "gemm_f16" {
                let tail = [total as u32, row0 as u32];
                self.gemm_f16(x, t, w.cols, (&piece.buf, piece.offsets, piece.rows, &w.format), &[&out.buf], &tail);
                continue;
            }
            let kernel = self.sg_variant(&format!("matmul_{}_{layout}", w.format));
            let [wo, so, bo] = piece.offsets;
            let params = [piece.rows as u32, w.cols as u32, t as u32, wo, so, bo, total as u32, row0 as u32];
            self.dispatch(kernel, &[&piece.buf, &x.buf, &out.buf], &params, grid);
        }
        out
    }

    fn matmuls<const N: usize>(&self, x: &Act, ws: [&GpuMatrix; N]) -> [Act; N] {
        if !(2..=4).contains(&N) || !ws.windows(2).all(|pair| pair[0].followed_by(pair[1])) {
            return ws.map(|w| self.matmul(x, w));
        }
        // One dispatch over the rows of all of them, each matrix's rows written to its own output.
        let (first, cols) = (ws[0], ws[0].cols);
        let t = x.len / cols;
        let outs = ws.map(|w| self.empty(t * w.rows));
        // Where each matrix's rows end (the last ones past N: all rows).
        let rows: usize = ws.iter().map(|w| w.rows).sum();
        let mut ends = [rows as u32; 4];
        for (i, w) in ws.iter().enumerate().take(N - 1) {
            ends[i] = if i == 0 { w.rows as u32 } else { ends[i - 1] + w.rows as u32 };
        }
        // Outputs past the N-th are never written but must be bound: distinct scratch buffers.
        let unused: Vec<Buf> = (N..4).map(|_| self.scratch(1)).collect();
        let mut bound: Vec<&Buf> = vec![&first.buf, &x.buf];
        bound.extend(outs.iter().map(|o| &o.buf).chain(unused.iter()));
        let (layout, grid) = self.matmul_layout(rows, cols, t, false, &first.format);
        if layout == "gemm_f16" {
            self.gemm_f16(x, t, cols, (&first.buf, first.offsets, rows, &first.format), &bound[2..], &ends[..3]);
            return outs;
        }
        let kernel = self.sg_variant(&format!("matmul_{}_{layout}_split", first.format));
        let [wo, so, bo] = first.offsets;
        let params = [rows as u32, cols as u32, t as u32, wo, so, bo, ends[0], ends[1], ends[2]];
        self.dispatch(kernel, &bound, &params, grid);
        outs
    }

    fn rms_norm(&self, x: &Act, weight: &Rc<Buf>, dim: usize, eps: f32) -> Act {
        let out = self.empty(x.len);
        let rows = x.len / dim;
        let grid = rows_grid(rows);
        self.dispatch(self.sg_variant("rms_norm"), &[&x.buf, weight, &out.buf], &[dim as u32, eps.to_bits(), rows as u32], grid);
        out
    }

    fn add_rms_norm(&self, hidden: &mut Act, x: &Act, weight: &Rc<Buf>, dim: usize, eps: f32) -> Act {
        let out = self.empty(hidden.len);
        let rows = hidden.len / dim;
        let params = [dim as u32, eps.to_bits(), rows as u32];
        self.dispatch(self.sg_variant("add_rms_norm"), &[&hidden.buf, weight, &x.buf, &out.buf], &params, rows_grid(rows));
        out
    }

    fn attention_heads(
        &self,
        c: &ModelConfig,
        projected: &Act,
        k: &Act,
        q_norm: &Rc<Buf>,
        k_norm: &Rc<Buf>,
        pos0: usize,
    ) -> (Act, Option<Act>, Act) {
        let (nh, nkv, hd, rot) = (c.num_heads, c.num_kv_heads, c.head_dim, c.rotary_dim);
        let t = k.len / (nkv * hd);
        let key = (pos0, t, rot, c.rope_theta.to_bits());
        let mut kept = self.rope_table.borrow_mut();
        if kept.as_ref().is_none_or(|(k, _)| *k != key) {
            let values = crate::cpu::rope_table(pos0, t, rot, c.rope_theta);
            // At most 65,535 tokens × 128 pairs × 8 bytes = 64 MiB: within every binding limit.
            let table = self.upload("rope table", bytemuck::cast_slice(&values)).expect("a rope table fits a binding");
            *kept = Some((key, Rc::new(table)));
        }
        let table = kept.as_ref().unwrap().1.clone();
        drop(kept);
        let gated = c.attn_output_gate();
        let (q, gate, k_out) = (self.empty(t * nh * hd), self.empty(if gated { t * nh * hd } else { 1 }), self.empty(k.len));
        let params = [t as u32, nh as u32, nkv as u32, hd as u32, (rot / 2) as u32, c.rms_norm_eps.to_bits(), gated as u32];
        let buffers = [&projected.buf, &k.buf, &**q_norm, &**k_norm, &*table, &q.buf, &gate.buf, &k_out.buf];
        self.dispatch("attention_heads", &buffers, &params, ((nh + nkv) as u32, t as u32, 1));
        (q, gated.then_some(gate), k_out)
    }

    fn attention(
        &self,
        q: &Act,
        k: &Act,
        v: &Act,
        cache: &mut KvCache,
        pos0: usize,
        (nh, nkv): (usize, usize),
        hd: usize,
        gate: Option<&Act>,
    ) -> Result<Act> {
        let t = q.len / (nh * hd);
        let needed = pos0 + t;
        if needed > cache.capacity {
            // Grow by doubling, copying what is cached.
            let capacity = needed.next_power_of_two().max(256);
            let (keys, values) = (self.zeros(capacity * cache.width)?, self.zeros(capacity * cache.width)?);
            let n = pos0 * cache.width;
            self.elementwise("copy", &[&cache.keys, &keys], n, [0, 0]);
            self.elementwise("copy", &[&cache.values, &values], n, [0, 0]);
            (cache.keys, cache.values, cache.capacity) = (keys, values, capacity);
        }
        let at = (pos0 * cache.width) as u32;
        self.elementwise("kv_append", &[&k.buf, &v.buf, &cache.keys, &cache.values], k.len, [0, at]);
        // Split the keys so that a decode step has enough workgroups: up to 32 splits of whole 64-key blocks,
        // fewer for a long prefill so the partial results stay within 64 MiB.
        let blocks = needed.div_ceil(64);
        let budget = (64 << 20) / (t * nh * (hd + 2) * 4);
        let splits = blocks.min(32).min(budget.max(1));
        let per_split = blocks.div_ceil(splits);
        let splits = blocks.div_ceil(per_split);
        let partial = self.empty(t * nh * splits * (hd + 2));
        let scale = 1.0 / (hd as f32).sqrt();
        let params = [t as u32, nh as u32, nkv as u32, hd as u32, pos0 as u32, scale.to_bits(), per_split as u32, splits as u32];
        let grid = (nh as u32, t as u32, splits as u32);
        self.dispatch("attention", &[&q.buf, &cache.keys, &cache.values, &partial.buf], &params, grid);
        let out = self.empty(q.len);
        let params = [nh as u32, hd as u32, splits as u32, gate.is_some() as u32];
        let gate = gate.map_or(&partial.buf, |g| &g.buf); // unread without a gate
        self.dispatch("attention_combine", &[&partial.buf, gate, &out.buf], &params, (nh as u32, t as u32, 1));
        Ok(out)
    }

    fn gated_delta_net(
        &self,
        l: &LinearAttnConfig,
        w: &LinearAttnWeights<Gpu>,
        x: &Act,
        z: &Act,
        b: &Act,
        a: &Act,
        eps: f32,
        state: &mut LinearState,
    ) -> Act {
        let channels = l.conv_channels();
        let t = x.len / channels;
        let (hk, hv, dk, dv) = (l.num_key_heads, l.num_value_heads, l.key_head_dim, l.value_head_dim);
        let (kernel, pos) = (l.conv_kernel as u32, state.pos as u32);
        state.pos += t;
        let out = self.empty(t * hv * dv);
        // A decode step in one dispatch where a workgroup of 256 holds a value head's state and the conv has at most
        // 4 taps (see wgsl/delta_step.wgsl): G groups of 4 columns per row block, 256 / G row blocks of 16 rows.
        let groups = (dv / 4).next_power_of_two().max(16);
        if t == 1 && dv % 4 == 0 && groups <= 64 && dk <= 16 * (256 / groups) && kernel <= 4 {
            let params = [hk as u32, hv as u32, dk as u32, dv as u32, channels as u32, kernel, groups as u32, pos, eps.to_bits()];
            let buffers = [&x.buf, &z.buf, &b.buf, &a.buf, &*w.conv1d, &*w.a_log, &*w.dt_bias, &*w.norm, &state.conv, &state.recurrent, &out.buf];
            self.dispatch("delta_step", &buffers, &params, (hv as u32, 1, 1));
            return out;
        }
        let conv = self.empty(x.len);
        let params = [t as u32, channels as u32, kernel, pos];
        // Chunks of 16 tokens in parallel, where only the first reads the ring (see wgsl/conv1d.wgsl).
        let chunks = if kernel <= 17 { t.div_ceil(16).min(65535) } else { 1 };
        let grid = (channels.div_ceil(64) as u32, chunks as u32, 1);
        self.dispatch("conv1d", &[&x.buf, &w.conv1d, &state.conv, &conv.buf], &params, grid);
        // q and k L2-normalized for all tokens at once, before the recurrence walks them.
        let params = [t as u32, dk as u32, channels as u32, hk as u32];
        self.dispatch("delta_qk_norm", &[&conv.buf], &params, (2 * hk as u32, t.min(65535) as u32, 1));
        let recurrence = self.empty(t * hv * dv);
        // Threads per state column: each holds 32 of its dk rows (see wgsl/delta_rule.wgsl).
        let q = dk.div_ceil(32).next_power_of_two();
        let params = [t as u32, hk as u32, hv as u32, dk as u32, dv as u32, channels as u32, q as u32];
        let buffers = [&conv.buf, &b.buf, &a.buf, &*w.a_log, &*w.dt_bias, &state.recurrent, &recurrence.buf];
        self.dispatch("delta_rule", &buffers, &params, (hv as u32, dv.div_ceil(64 / q) as u32, 1));
        let rows = t * hv;
        let params = [dv as u32, eps.to_bits(), rows as u32];
        self.dispatch(self.sg_variant("rms_norm_gated"), &[&recurrence.buf, &w.norm, &z.buf, &out.buf], &params, rows_grid(rows));
        out
    }

    fn swiglu(&self, gate: &Act, up: &Act) -> Act {
        let out = self.empty(gate.len);
        self.elementwise("swiglu", &[&gate.buf, &up.buf, &out.buf], gate.len, [0, 0]);
        out
    }

    fn route(&self, logits: &Act, experts: &GpuExperts, k: usize, renormalize: bool) -> Routing {
        let (e, shared) = (experts.routed, experts.shared as usize);
        let tokens = logits.len / (e + shared);
        let per_token = k + shared;
        let (ids, weights) = (self.scratch(tokens * per_token), self.scratch(tokens * per_token));
        let params = [tokens as u32, e as u32, k as u32, renormalize as u32, shared as u32];
        self.dispatch(self.sg_variant("router"), &[&logits.buf, &ids, &weights], &params, (tokens as u32, 1, 1));
        Routing { ids, weights, tokens, k: per_token }
    }

    fn reads_ahead(&self, e: &GpuExperts, tokens: usize) -> bool {
        e.stream.as_ref().is_some_and(|(slots, _)| slots.store.reads_ahead(tokens))
    }

    fn experts(&self, x: &Act, r: &Routing, e: &GpuExperts, ahead: Option<&Routing>) -> Result<Act> {
        let pairs = r.tokens * r.k;
        ensure!(pairs <= 65535, "at most 65535 (token, expert) pairs per forward call on the GPU");
        // Decided per call, not per streamed chunk, so that streamed and resident runs compute alike.
        let layout = ExpertLayout::of(e, r.tokens);
        ensure!(
            layout == ExpertLayout::PerPair || group_chunks(e, pairs, layout.chunk_pairs()).1 <= 65535,
            "too many (token, expert) pairs per forward call on the GPU"
        );
        let (h, i) = (e.hidden, e.intermediate);
        let act = self.empty(pairs * i);
        let out = self.empty(pairs * h);
        let Some((slots, layer)) = &e.stream else {
            self.expert_kernels(x, &r.ids, r.k, e, 0..pairs, layout, &act, &out);
            return Ok(out);
        };
        // Streamed: the router's choices come back to the CPU, which makes them resident and runs the kernels on
        // slot numbers, chunk by chunk when a prefill needs more experts than there are slots.
        // With a guess of the next layer's routing, its experts not in the slots start being read now.
        let wait = std::time::Instant::now();
        let mut wanted = vec![(&r.ids, pairs)];
        wanted.extend(ahead.map(|a| (&a.ids, a.tokens * a.k)));
        let mut back = self.read_back_all(&wanted)?.into_iter().map(|b| bytemuck::pod_collect_to_vec::<u8, u32>(&b));
        let ids = back.next().expect("read back above");
        let waited = wait.elapsed().as_nanos() as u64;
        slots.store.counters[*layer].route_wait_nanos.fetch_add(waited, std::sync::atomic::Ordering::Relaxed);
        let mut guess = back.next().map(|guess| {
            // (Every layer has as many routed experts; the shared expert's id, `routed`, is never read.)
            let mut guess: Vec<usize> = guess.into_iter().map(|id| id as usize).filter(|&id| id < e.routed).collect();
            guess.sort_unstable();
            guess.dedup();
            guess.retain(|&id| !slots.resident(layer + 1, id));
            guess
        });
        let mut first = 0;
        while first < pairs {
            let (covered, slot_ids) = self.stage_experts(slots, *layer, &ids, r.k, e.routed, first)?;
            // The guesses start being read once this layer's first records are in: alongside them they slowed the
            // reads this layer waits for; after them, they keep the disk busy while the GPU runs this layer and
            // routes the next.
            if let Some(guess) = guess.take() {
                slots.store.prefetch(layer + 1, &guess);
            }
            let slot_ids = slots.slot_ids(self, *layer, &slot_ids)?;
            self.expert_kernels(x, &slot_ids, r.k, e, first..first + covered, layout, &act, &out);
            first += covered;
            // The GPU copies and computes this chunk while the next one is read, or while the CPU records what
            // follows (with every expert in GPU slots, the wait for the next layer's routing fell 17%).
            self.flush();
        }
        Ok(out)
    }

    fn moe_combine_rms_norm(
        &self,
        hidden: &mut Act,
        expert_out: &Act,
        r: &Routing,
        shared: Option<(&Act, &Act)>,
        weight: &Rc<Buf>,
        h: usize,
        eps: f32,
    ) -> Act {
        let out = self.empty(hidden.len);
        let params = [h as u32, eps.to_bits(), r.tokens as u32, r.k as u32];
        let grid = rows_grid(r.tokens);
        let mut buffers = vec![&hidden.buf, &**weight, &expert_out.buf, &r.weights, &out.buf];
        match shared {
            Some((shared_out, gate)) => {
                buffers.extend([&shared_out.buf, &gate.buf]);
                self.dispatch(self.sg_variant("moe_combine_shared_rms_norm"), &buffers, &params, grid);
            }
            None => self.dispatch(self.sg_variant("moe_combine_rms_norm"), &buffers, &params, grid),
        }
        out
    }

    fn last_row(&self, x: &Act, width: usize) -> Act {
        let out = self.empty(width);
        self.elementwise("copy", &[&x.buf, &out.buf], width, [(x.len - width) as u32, 0]);
        out
    }

    fn read(&self, x: &Act) -> Result<Vec<f32>> {
        let bytes = self.read_back(&x.buf, x.len)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn argmax(&self, x: &Act) -> Result<u32> {
        let bytes = self.read_back(&self.argmax_id(x), 1)?;
        Ok(u32::from_le_bytes(bytes[..4].try_into().unwrap()))
    }

    fn choose(&self, x: &Act) -> Result<Chosen> {
        let id = self.argmax_id(x);
        let spare = self.chosen_readbacks.borrow_mut().pop();
        let readback = spare.unwrap_or_else(|| {
            self.chosen_readbacks_made.set(self.chosen_readbacks_made.get() + 1);
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("chosen token"),
                size: 4,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        self.copy_out(&id, &readback, 4);
        let submission = self.flush().expect("the choice was recorded");
        self.settle_pool();
        readback.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        Ok(Chosen { id, readback, submission, spare: self.chosen_readbacks.clone() })
    }

    fn runs_ahead(&self) -> bool {
        true
    }

    fn read_chosen(&self, chosen: &Chosen) -> Result<u32> {
        self.wait_for(Some(chosen.submission.clone()))?;
        let view = chosen.readback.slice(..).get_mapped_range().map_err(|e| anyhow!("reading the chosen token: {e}"))?;
        Ok(u32::from_le_bytes(view[..4].try_into().unwrap()))
    }

    fn counters(&self) -> Counters {
        Counters { dispatches: self.dispatches.get(), syncs: self.syncs.get(), wait_nanos: self.wait_nanos.get() }
    }
}

/// The layout of the matmul kernel for `t` tokens over `rows` rows of `cols` columns of a matrix of `format` (its
/// name's `nt…` part) and its grid: a workgroup covers 32 rows (decode of a quantized matrix; 16 of a dense one), 4
/// (`nt1w`, decode of at most 2,048 rows, where more per workgroup would leave much of the GPU idle; measured on the
/// H100: routers 16.6 → 11.5 µs, 2,048 × 4,096 matrices 22 → 19 µs), 16 (8 tokens per pass) or 64 rows × 64 tokens
/// (`nt64`, large prefills, formats that have it); see wgsl/matmul.wgsl. `wide`: whether `nt1w` may be used.
/// Quantized decode over more than 2,048 columns stages x in one tile of 4,096 columns (`nt1l`): on the H100, 4,096²
/// 10.4 → 8.6 µs; the tile of 2,048 stays for narrower rows, where the larger one measured 4% slower (lm_head).
/// `tensor_cores`: the tiles' matmuls run on them instead (`gemm_f16`, see `Gpu::gemm_f16`).
fn matmul_layout(rows: usize, cols: usize, t: usize, wide: bool, format: &str, tensor_cores: bool) -> (&'static str, (u32, u32, u32)) {
    let affine = format.starts_with('q');
    let (layout, rows_per_group, tokens_per_pass) = match t {
        1 if wide && rows <= 2048 => ("nt1w", 4, 1),
        1 if affine && cols > 2048 => ("nt1l", 32, 1),
        1 => ("nt1", if affine { 32 } else { 16 }, 1),
        t if rows.div_ceil(64) * t.div_ceil(64) >= TILED_WORKGROUPS && kernels::find(&format!("matmul_{format}_nt64")).is_some() => {
            (if tensor_cores { "gemm_f16" } else { "nt64" }, 64, 64)
        }
        _ => ("nt8", 16, 8),
    };
    (layout, (rows.div_ceil(rows_per_group) as u32, t.div_ceil(tokens_per_pass) as u32, 1))
}

/// Matmuls that make at least this many tiles of 64 rows × 64 tokens run so (`nt64`), where the format has them:
/// fewer leave the GPU idle (on the H100, the 40 tiles of a 257-row router at 512 tokens took 2× the time of `nt8`).
const TILED_WORKGROUPS: usize = 256;

/// One workgroup per row, folded into two dimensions.
fn rows_grid(rows: usize) -> (u32, u32, u32) {
    let x = rows.clamp(1, 65535) as u32;
    (x, rows.div_ceil(x as usize).max(1) as u32, 1)
}

// ---- Upload ---------------------------------------------------------------------------------------------------

impl WeightsFrom for Gpu {
    /// The limits the kernels are written for (workgroup arrays sized for them).
    fn supports(&self, c: &ModelConfig) -> Result<()> {
        ensure!(c.num_experts <= 1024 && c.experts_per_token < 64, "the GPU router takes ≤ 1024 experts and < 64 per token");
        let hd = c.head_dim;
        ensure!(hd <= 256 && hd.is_multiple_of(4), "the GPU attention takes head_dim ≤ 256, a multiple of 4 (this model: {hd})");
        if let Some(l) = &c.linear {
            let (dk, dv) = (l.key_head_dim, l.value_head_dim);
            ensure!(dk % 8 == 0 && dk <= 256 && dv <= 256, "the GPU delta rule takes head dims ≤ 256 (key: a multiple of 8)");
        }
        Ok(())
    }

    fn weights_from(&self, host: &Weights) -> Result<Weights<Gpu>> {
        let weights = host.transfer(&mut &*self)?;
        // Every pipeline the forward pass will use, built now and in parallel rather than one by one on first use.
        // Weight kernels by their plain names (a stem and a layout, each also as a split), each built as the variant
        // sg_variant runs; every other kernel as it is. The tiles on tensor cores only where they run.
        let stems = self.weight_kernels.borrow();
        let tiles: &[&str] = if self.tensor_cores.get() { &["_nt64", "_dequant"] } else { &["_nt64"] };
        let layouts = [&["", "_grouped", "_rows", "_nt1", "_nt1l", "_nt1w", "_nt8"], tiles].concat();
        let mut names: Vec<&'static str> = Vec::new();
        for name in kernels::KERNELS.iter().map(|k| k.name) {
            if name.starts_with("gemm_") {
                if self.tensor_cores.get() {
                    names.push(name);
                }
            } else if !["matmul_", "expert_", "embed_"].iter().any(|p| name.starts_with(p)) {
                names.push(name);
            } else if stems.iter().any(|stem| {
                name.strip_prefix(stem.as_str()).is_some_and(|r| layouts.contains(&r.replacen("_split", "", 1).as_str()))
            }) {
                names.push(self.sg_variant(name));
            }
        }
        drop(stems);
        self.build_pipelines(&names);
        Ok(weights)
    }
}

/// How a forward call runs its expert kernels. Decided per call, not per streamed chunk, so that streamed and
/// resident runs compute alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExpertLayout {
    /// Each (token, expert) pair alone (decode, short prompts).
    PerPair,
    /// Pairs grouped by expert on the GPU, each expert's rows run for 8 of its pairs at a time: one pass over its
    /// weights per 8 tokens instead of per token.
    Grouped,
    /// Grouped, 16 pairs of an expert per pass, a thread per row (rows_passes in matvec.wgsl), where both kernels'
    /// formats have them (2, 4 and 8 bits) and the records' matrices start on 16 bytes. On the H200 they beat
    /// Grouped from 2 pairs per expert on (a 64-token prefill of 35B-A3B: 76.2 → 56.0 ms; docs/PERF.md, "A thread
    /// per row").
    Rows,
}

impl ExpertLayout {
    fn of(e: &GpuExperts, tokens: usize) -> ExpertLayout {
        if tokens < GROUPED_FROM {
            return ExpertLayout::PerPair;
        }
        let has = |layout: &str| {
            [format!("expert_gate_up_{}_{layout}", e.gate_up_format), format!("expert_down_{}_{layout}", e.down_format)]
                .iter()
                .all(|k| kernels::find(k).is_some())
        };
        // The rows kernels read 4- and 8-bit rows in 16-byte loads: every matrix of a record starts on 16 bytes
        // (always so for the floe format's records, whose parts are whole units; checked, not assumed).
        let aligned = e.stride % 16 == 0 && [e.gate, e.up, e.down].iter().all(|[w, _, _]| w % 16 == 0);
        match has("rows") && aligned {
            true => ExpertLayout::Rows,
            false => ExpertLayout::Grouped,
        }
    }

    /// Pairs of one expert per chunk (group_pairs.wgsl).
    fn chunk_pairs(self) -> usize {
        match self {
            ExpertLayout::Rows => 16,
            _ => 8,
        }
    }
}

/// Forward calls of at least this many tokens run the grouped expert kernels.
const GROUPED_FROM: usize = 32;

/// For `pairs` pairs over the records of `e.buf` (experts, or slots when streamed; pairs name them by number):
/// the record count and the most chunks of up to `size` pairs of one record they can make.
fn group_chunks(e: &GpuExperts, pairs: usize, size: usize) -> (usize, usize) {
    let records = (e.buf.buffer.size() / e.stride as u64) as usize;
    (records, pairs.div_ceil(size) + records.min(pairs))
}

/// The kernel spelling of a matrix's format, and the byte size of its packed-weight and scale units.
fn matrix_format(m: &Matrix) -> Result<(String, usize, usize)> {
    Ok(match m {
        Matrix::Dense(t) => match t.dtype() {
            DType::U32 => bail!("a u32 matrix is not a weight format"),
            d => (dtype_name(d).to_string(), d.size(), d.size()),
        },
        Matrix::Affine { scales, biases, format, .. } => {
            ensure!(scales.dtype() == biases.dtype(), "scales and biases of different dtypes");
            let d = scales.dtype();
            (format!("q{}g{}{}", format.bits, format.group, dtype_name(d)), 4, d.size())
        }
    })
}

/// Uploads host weights (`&Gpu` so a shared GPU can take them).
impl Transfer<Gpu> for &Gpu {
    fn matrix(&mut self, name: &str, m: &Matrix) -> Result<GpuMatrix> {
        let &[rows, _] = m.shape() else { bail!("{name}: a matrix of shape {:?}", m.shape()) };
        // Larger than one binding: split by rows into pieces that fit (each part padded to 4 bytes).
        let row_bytes = m.size_bytes().div_ceil(rows.max(1)) as u64;
        let per_piece = (self.max_binding().saturating_sub(12) / row_bytes.max(1)) as usize;
        if rows > per_piece {
            ensure!(per_piece > 0, "{name}: one row takes {row_bytes} bytes, more than this GPU's largest binding");
            let mut pieces = (0..rows)
                .step_by(per_piece)
                .map(|r0| self.upload_matrix(name, &m.rows(r0..(r0 + per_piece).min(rows))))
                .collect::<Result<Vec<_>>>()?;
            let mut first = pieces.remove(0);
            first.more = pieces;
            return Ok(first);
        }
        self.upload_matrix(name, m)
    }

    fn vector(&mut self, name: &str, v: &[f32]) -> Result<Rc<Buf>> {
        Ok(Rc::new(self.upload(name, bytemuck::cast_slice(v))?))
    }

    fn matrices<const N: usize>(&mut self, named: [(&str, &Matrix); N]) -> Result<[GpuMatrix; N]> {
        // Together, where they have one format and fit one binding.
        let together = named[1..].iter().try_fold(named[0].1.clone(), |all, (_, m)| all.concat_rows(m));
        let Some(together) = together.filter(|all| all.size_bytes() as u64 + 12 <= self.max_binding()) else {
            let moved = named.iter().map(|(name, m)| self.matrix(name, m)).collect::<Result<Vec<_>>>()?;
            return Ok(moved.try_into().unwrap_or_else(|_| unreachable!("one matrix per name")));
        };
        let names: Vec<&str> = named.iter().map(|(name, _)| *name).collect();
        let all = self.matrix(&names.join("+"), &together)?;
        // Each a view of `all`: its parts' offsets moved past the rows before it.
        let mut row0 = 0;
        Ok(named.map(|(_, m)| {
            let rows = m.shape()[0];
            let offsets = std::array::from_fn(|i| all.offsets[i] + row0 as u32 * all.row_units[i]);
            row0 += rows;
            GpuMatrix { rows, offsets, ..all.clone() }
        }))
    }


    fn experts(&mut self, layer: usize, experts: &HostExperts) -> Result<GpuExperts> {
        match experts {
            HostExperts::Resident(all) => self.upload_experts(layer, &all.iter().collect::<Vec<_>>(), false),
            HostExperts::Streamed(s) => self.streamed_experts(s, None),
        }
    }

    fn moe(&mut self, layer: usize, moe: &MoeWeights) -> Result<MoeWeights<Gpu>> {
        if let Some(s) = &moe.shared {
            let (shared_layout, shared_record) = expert_record(&s.mlp, None)?;
            let routed_layout = match &moe.experts {
                HostExperts::Resident(all) => expert_record(&all[0], None)?.0,
                HostExperts::Streamed(st) => st.store.components.clone(),
            };
            if let (true, Some(router)) = (shared_layout == routed_layout, moe.router.concat_rows(&s.gate)) {
                let router = self.matrix(&format!("layers.{layer}.moe.router+shared_gate"), &router)?;
                let experts = match &moe.experts {
                    HostExperts::Resident(all) => {
                        let mut all: Vec<&ExpertWeights> = all.iter().collect();
                        all.push(&s.mlp);
                        self.upload_experts(layer, &all, true)?
                    }
                    HostExperts::Streamed(st) => self.streamed_experts(st, Some(&shared_record))?,
                };
                return Ok(MoeWeights { router, experts, shared: None });
            }
        }
        moe_parts(self, layer, moe)
    }
}

impl Gpu {
    /// Uploads `m` as one buffer (it fits one binding).
    fn upload_matrix(&self, name: &str, m: &Matrix) -> Result<GpuMatrix> {
        let &[rows, cols] = m.shape() else { bail!("{name}: a matrix of shape {:?}", m.shape()) };
        let (format, wunit, sunit) = matrix_format(m).with_context(|| name.to_string())?;
        ensure!(kernels::find(&format!("matmul_{format}_nt1")).is_some(), "{name}: the GPU has no kernel for {format}");
        ensure!(rows.div_ceil(8) <= 65535, "{name}: {rows} rows are more than the GPU matmul's grid takes");
        let parts: Vec<&[u8]> = match m {
            Matrix::Dense(t) => vec![t.bytes()],
            Matrix::Affine { words, scales, biases, .. } => vec![words.bytes(), scales.bytes(), biases.bytes()],
        };
        let mut bytes = Vec::new();
        let mut offsets = [0u32; 3];
        for (i, part) in parts.iter().enumerate() {
            offsets[i] = (bytes.len() / if i == 0 { wunit } else { sunit }) as u32;
            bytes.extend_from_slice(part);
            bytes.resize(bytes.len().next_multiple_of(4), 0);
        }
        let buf = Rc::new(self.upload(name, &bytes)?);
        self.weight_kernels.borrow_mut().extend([format!("matmul_{format}"), format!("embed_{format}")]);
        let row_units = match m {
            Matrix::Dense(_) => [cols as u32, 0, 0],
            Matrix::Affine { format: q, .. } => {
                let groups = (cols / q.group) as u32;
                [(cols * q.bits as usize / 32) as u32, groups, groups]
            }
        };
        Ok(GpuMatrix { buf, rows, cols, format, offsets, row_units, more: vec![] })
    }

    /// A streamed layer's experts: its buffer of slots (made for the first layer of a model); with `shared`, the
    /// shared expert's record, put in the layer's fixed slot.
    fn streamed_experts(&self, s: &StreamedLayer, shared: Option<&[u8]>) -> Result<GpuExperts> {
        let mut kept = self.slots.borrow_mut();
        let slots = match kept.as_ref().filter(|k| Arc::ptr_eq(&k.store, &s.store)) {
            Some(slots) => slots.clone(),
            None => {
                let (bytes, policy) = self.expert_memory.get();
                let slots = Rc::new(ExpertSlots::new(self, s.store.clone(), bytes, policy, shared.is_some())?);
                *kept = Some(slots.clone());
                slots
            }
        };
        if let Some(record) = shared {
            slots.place_shared(self, s.layer, record);
        }
        let records =
            Records { buf: slots.buffer(s.layer), stride: slots.stride, routed: s.store.num_experts, shared: shared.is_some() };
        self.expert_layout(s.layer, &s.store.components, records, Some((slots.clone(), s.layer)))
    }

    /// One layer's experts as fixed-stride records in one buffer; with `shared`, the last is the shared expert.
    fn upload_experts(&self, layer: usize, experts: &[&ExpertWeights], shared: bool) -> Result<GpuExperts> {
        let what = format!("the experts of layer {layer}");
        let (components, first) = expert_record(experts[0], None)?;
        let stride = first.len().next_multiple_of(256);
        let total = (stride * experts.len()) as u64;
        ensure!(
            total <= self.max_binding(),
            "{what} take {total} bytes, more than this GPU's largest binding ({} bytes); use --backend cpu or --gpu-mem",
            self.max_binding()
        );
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(&what),
            size: total,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        });
        {
            let mut view = buffer.slice(..).get_mapped_range_mut().map_err(|e| anyhow!("{what}: {e}"))?;
            for (e, expert) in experts.iter().enumerate() {
                let (c, record) = expert_record(expert, None)?;
                ensure!(c == components, "{what}: expert {e}'s layout differs from expert 0's");
                view.slice(e * stride..e * stride + record.len()).copy_from_slice(&record);
            }
        }
        buffer.unmap();
        let records = Records { buf: Rc::new(self.wrap(buffer)), stride: stride as u64, routed: experts.len() - shared as usize, shared };
        self.expert_layout(layer, &components, records, None)
    }

    /// Experts whose records (laid out as `components` say) sit in `records`, for the expert kernels.
    fn expert_layout(
        &self,
        layer: usize,
        components: &BTreeMap<String, TensorEntry>,
        records: Records,
        stream: Option<(Rc<ExpertSlots>, usize)>,
    ) -> Result<GpuExperts> {
        let what = format!("the experts of layer {layer}");
        let component = |name: &str| -> Result<(String, [u32; 3])> {
            let entry: &TensorEntry = components.get(name).with_context(|| format!("{what}: no {name} matrix"))?;
            let format = match entry.quant {
                Some(q) => format!("q{}g{}{}", q.bits, q.group, entry.dtype),
                None => entry.dtype.clone(),
            };
            let mut offsets = [0u32; 3];
            for (i, part) in entry.parts.iter().enumerate() {
                let unit = if i == 0 && entry.quant.is_some() { 4 } else { dtype_size(&entry.dtype) };
                ensure!(part.offset % unit as u64 == 0, "{what}: {name} part {i} is not aligned to {unit} bytes");
                offsets[i] = part.offset as u32;
            }
            ensure!(kernels::find(&format!("expert_down_{format}")).is_some(), "{what}: the GPU has no kernel for {format}");
            Ok((format, offsets))
        };
        let (gate_format, gate) = component("gate")?;
        let (up_format, up) = component("up")?;
        let (down_format, down) = component("down")?;
        ensure!(gate_format == up_format, "{what}: gate ({gate_format}) and up ({up_format}) differ in format");
        let (intermediate, hidden) = (components["gate"].shape[0], components["gate"].shape[1]);
        self.weight_kernels.borrow_mut().extend([format!("expert_gate_up_{gate_format}"), format!("expert_down_{down_format}")]);
        ensure!(records.stride <= u32::MAX as u64 / 2, "{what}: records of {} bytes are too large", records.stride);
        Ok(GpuExperts {
            buf: records.buf,
            stream,
            routed: records.routed,
            shared: records.shared,
            stride: records.stride as u32,
            hidden,
            intermediate,
            gate_up_format: gate_format,
            down_format,
            gate,
            up,
            down,
        })
    }
}

/// A buffer of expert records: `routed` experts, then the shared expert when `shared`.
struct Records {
    buf: Rc<Buf>,
    stride: u64,
    routed: usize,
    shared: bool,
}

fn dtype_size(name: &str) -> usize {
    if name == "f32" || name == "u32" {
        4
    } else {
        2
    }
}
