// One decode step of Gated DeltaNet in one dispatch: the causal conv + SiLU of this token's q, k and v channels,
// the recurrence (as wgsl/delta_rule.wgsl: q, k L2-normalized, q × 1/sqrt(dk); S ← exp(g)·S; δ = β·(v − Sᵀk);
// S ← S + k δᵀ; o = Sᵀq) and the gated RMSNorm of the head's output: o / sqrt(mean(o²) + eps) · norm · silu(z).
// In a decode step these were three dispatches (conv1d, delta_rule, rms_norm_gated), each a few rounds of memory
// latency; here one workgroup holds a whole value head, so the norm needs no other workgroup.
//
// One workgroup of 256 per value head hh (which reads key head hh / (hv / hk)). The state S [dk, dv] (dv a multiple
// of 4) is held as vec4s of 4 columns: lane = m·G + g holds columns 4g … 4g + 3 of rows 16·m … 16·m + 15, with G
// (p.groups, a power of two from 16 to 64, so dv ≤ 256) column groups per row block and 256 / G ≤ 16 row blocks (so
// dk ≤ 16 · 256 / G and every row index stays below 256). With dv = 128 (G = 32) a warp's load is one whole row of
// 32 consecutive vec4s: in a decode step the state (2 MB per layer for 35B-A3B) comes from DRAM, read and written
// by one workgroup per head.
// Every load a thread needs before the first barrier is issued before any is used: a decode step is a few rounds
// of memory latency, and a loop would wait for each load in turn.
// The conv state is a ring of `kernel` (≤ 4) rows: the input at position P sits in row P mod kernel. This step
// reads positions pos − kernel + 1 … pos − 1 and writes pos into the one row none of them uses, so workgroups that
// share a key head's q and k channels can each compute their conv without racing the one that stores them.

struct Params {
    hk: u32,
    hv: u32,
    dk: u32,
    dv: u32,
    channels: u32,
    kernel: u32,
    groups: u32,
    pos: u32,
    eps: f32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> z: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> a: array<f32>;
@group(0) @binding(4) var<storage, read> conv_weight: array<f32>;
@group(0) @binding(5) var<storage, read> a_log: array<f32>;
@group(0) @binding(6) var<storage, read> dt_bias: array<f32>;
@group(0) @binding(7) var<storage, read> norm: array<f32>;
@group(0) @binding(8) var<storage, read_write> conv_state: array<f32>;
@group(0) @binding(9) var<storage, read_write> state: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> out: array<f32>;

{% include "common.wgsl" %}

// This token's q and k after the conv (zero past dk: rows a thread holds beyond dk add nothing), its v for the
// head's columns, the threads' partial sums of Sᵀk, Sᵀq (per 4 columns), |k|² and |q|², the head's output before the
// norm and partial sums of its squares.
var<workgroup> qn: array<f32, 256>;
var<workgroup> kn: array<f32, 256>;
var<workgroup> vn: array<f32, 256>;
var<workgroup> part_k: array<vec4<f32>, 256>;
var<workgroup> part_q: array<vec4<f32>, 256>;
var<workgroup> part_kk: array<f32, 256>;
var<workgroup> part_qq: array<f32, 256>;
var<workgroup> o_head: array<vec4<f32>, 64>;
var<workgroup> part_ss: array<f32, 8>;

// Channel c of this workgroup's [q of key head kh | k of key head kh | v of value head hh] (clamped past them).
fn channel(c: u32, kh: u32, hh: u32) -> u32 {
    let kd = p.hk * p.dk;
    if (c < p.dk) {
        return kh * p.dk + c;
    }
    if (c < 2u * p.dk) {
        return kd + kh * p.dk + c - p.dk;
    }
    return 2u * kd + hh * p.dv + min(c - 2u * p.dk, p.dv - 1u);
}

// Tap j < kernel − 1 of channel ch: weight × the input at position pos − (kernel − 1) + j (zero before the first).
fn tap(j: u32, ch: u32) -> f32 {
    let shifted = p.pos + j;
    let row = (max(shifted, p.kernel - 1u) - (p.kernel - 1u)) % p.kernel;
    let product = conv_weight[ch * p.kernel + min(j, p.kernel - 1u)] * conv_state[row * p.channels + ch];
    return select(0.0, product, j + 1u < p.kernel && shifted >= p.kernel - 1u);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let hh = wid.x;
    let group = p.hv / p.hk;
    let kh = hh / group;
    let lane = lid.x;
    let g = lane % p.groups;
    let m = lane / p.groups;
    let live = 4u * g < p.dv;
    let gv = min(g, p.dv / 4u - 1u);
    let r0 = m * 16u;
    // In vec4s: the head's state, and a row's.
    let head_state = hh * p.dk * p.dv / 4u;
    let row = p.dv / 4u;
    // The state first: its loads are in flight while the conv runs.
{% for i in range(16) %}
    var s{{ i }} = select(vec4(0.0), state[head_state + min(r0 + {{ i }}u, p.dk - 1u) * row + gv], r0 + {{ i }}u < p.dk);
{% endfor %}
    // The conv of the head's 2·dk + dv ≤ 768 channels, 3 per thread: q and k of key head kh, then v of value
    // head hh. Its ring row for this position is stored by one workgroup per channel: v by its own head, q and k
    // by the key head's first.
    let ring = (p.pos % p.kernel) * p.channels;
{% for c in range(3) %}
    let c{{ c }} = lane + {{ 256 * c }}u;
    let ch{{ c }} = channel(c{{ c }}, kh, hh);
    let x{{ c }} = x[ch{{ c }}];
    let conv{{ c }} = silu(((tap(0u, ch{{ c }}) + tap(1u, ch{{ c }})) + tap(2u, ch{{ c }})) + conv_weight[ch{{ c }} * p.kernel + p.kernel - 1u] * x{{ c }});
{% endfor %}
{% for c in range(3) %}
    if (c{{ c }} < p.dk) {
        qn[c{{ c }}] = conv{{ c }};
    } else if (c{{ c }} < 2u * p.dk) {
        kn[c{{ c }} - p.dk] = conv{{ c }};
    } else if (c{{ c }} < 2u * p.dk + p.dv) {
        vn[c{{ c }} - 2u * p.dk] = conv{{ c }};
    }
    if (c{{ c }} < 2u * p.dk + p.dv && (c{{ c }} >= 2u * p.dk || hh % group == 0u)) {
        conv_state[ring + ch{{ c }}] = x{{ c }};
    }
{% endfor %}
    // Zero past dk and dv: rows past dk add nothing, and the head's sum of squares runs over 64 vec4s.
    if (lane >= p.dk) {
        qn[lane] = 0.0;
        kn[lane] = 0.0;
    }
    if (lane < 64u && 4u * lane >= p.dv) {
        o_head[lane] = vec4(0.0);
    }
    let beta = sigmoid(b[hh]);
    let decay = exp(-exp(a_log[hh]) * softplus(a[hh] + dt_bias[hh]));
    let column = hh * p.dv + 4u * gv;
    let zv = vec4(z[column], z[column + 1u], z[column + 2u], z[column + 3u]);
    let weight = vec4(norm[4u * gv], norm[4u * gv + 1u], norm[4u * gv + 2u], norm[4u * gv + 3u]);
    workgroupBarrier();
    // The norms of q and k come with the sums of Sᵀk and Sᵀq: a column's row blocks hold all dk rows between them.
    var kv0 = vec4(0.0);
    var kv1 = vec4(0.0);
    var kk0 = 0.0;
    var kk1 = 0.0;
{% for i in range(16) %}
    let k{{ i }} = kn[r0 + {{ i }}u];
    s{{ i }} *= decay;
    kv{{ i % 2 }} = fma(s{{ i }}, vec4(k{{ i }}), kv{{ i % 2 }});
    kk{{ i % 2 }} = fma(k{{ i }}, k{{ i }}, kk{{ i % 2 }});
{% endfor %}
    part_k[lane] = kv0 + kv1;
    part_kk[lane] = kk0 + kk1;
    workgroupBarrier();
    var kv_all = vec4(0.0);
    var sk = 0.0;
    for (var n = g; n < 256u; n += p.groups) {
        kv_all += part_k[n];
        sk += part_kk[n];
    }
    let inv_k = 1.0 / sqrt(sk + 1e-6);
    let v = vec4(vn[4u * gv], vn[4u * gv + 1u], vn[4u * gv + 2u], vn[4u * gv + 3u]);
    let step = (v - kv_all * inv_k) * beta * inv_k;
    var o0 = vec4(0.0);
    var o1 = vec4(0.0);
    var qq0 = 0.0;
    var qq1 = 0.0;
{% for i in range(16) %}
    let q{{ i }} = qn[r0 + {{ i }}u];
    s{{ i }} = fma(vec4(k{{ i }}), step, s{{ i }});
    o{{ i % 2 }} = fma(s{{ i }}, vec4(q{{ i }}), o{{ i % 2 }});
    qq{{ i % 2 }} = fma(q{{ i }}, q{{ i }}, qq{{ i % 2 }});
{% endfor %}
    part_q[lane] = o0 + o1;
    part_qq[lane] = qq0 + qq1;
    if (live) {
{% for i in range(16) %}
        if (r0 + {{ i }}u < p.dk) {
            state[head_state + (r0 + {{ i }}u) * row + g] = s{{ i }};
        }
{% endfor %}
    }
    workgroupBarrier();
    var o_all = vec4(0.0);
    var sq = 0.0;
    for (var n = g; n < 256u; n += p.groups) {
        o_all += part_q[n];
        sq += part_qq[n];
    }
    o_all *= 1.0 / sqrt(sq + 1e-6) / sqrt(f32(p.dk));
    if (m == 0u && live) {
        o_head[g] = o_all;
    }
    workgroupBarrier();
    // The head's sum of squares: 8 threads sum 8 vec4s each (o_head is zero past dv), then every thread the 8.
    if (lane < 8u) {
        var h = 0.0;
{% for c in range(8) %}
        h += dot(o_head[lane * 8u + {{ c }}u], o_head[lane * 8u + {{ c }}u]);
{% endfor %}
        part_ss[lane] = h;
    }
    workgroupBarrier();
    let ss = ((part_ss[0] + part_ss[1]) + (part_ss[2] + part_ss[3])) + ((part_ss[4] + part_ss[5]) + (part_ss[6] + part_ss[7]));
    if (live && m == 0u) {
        let y = o_all * (1.0 / sqrt(ss / f32(p.dv) + p.eps)) * weight * vec4(silu(zv.x), silu(zv.y), silu(zv.z), silu(zv.w));
        out[column] = y.x;
        out[column + 1u] = y.y;
        out[column + 2u] = y.z;
        out[column + 3u] = y.w;
    }
}
