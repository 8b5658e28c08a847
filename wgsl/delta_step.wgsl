// One decode step of Gated DeltaNet in one dispatch: the causal conv + SiLU of this token's q, k and v channels,
// the recurrence (as wgsl/delta_rule.wgsl: q, k L2-normalized, q × 1/sqrt(dk); S ← exp(g)·S; δ = β·(v − Sᵀk);
// S ← S + k δᵀ; o = Sᵀq) and the gated RMSNorm of the head's output: o / sqrt(mean(o²) + eps) · norm · silu(z).
// In a decode step these were three dispatches (conv1d, delta_rule, rms_norm_gated), each a few rounds of memory
// latency; here one workgroup holds a whole value head, so the norm needs no other workgroup.
//
// One workgroup of 256 per value head hh (which reads key head hh / (hv / hk)). Column j of the state S [dk, dv]
// is held by Q threads (p.q ≤ 4, Q·dv ≤ 256), thread m of them holding rows 64·m … 64·m + 63 (so dk ≤ 64·Q ≤ 256).
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
    q: u32,
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
@group(0) @binding(9) var<storage, read_write> state: array<f32>;
@group(0) @binding(10) var<storage, read_write> out: array<f32>;

{% include "common.wgsl" %}

// This token's q and k after the conv (zero past dk: rows a thread holds beyond dk add nothing), its v for the
// head's columns, the threads' partial sums of Sᵀk, Sᵀq, |k|² and |q|², the head's output before the norm and
// partial sums of its squares.
var<workgroup> qn: array<f32, 256>;
var<workgroup> kn: array<f32, 256>;
var<workgroup> vn: array<f32, 256>;
var<workgroup> part_k: array<f32, 256>;
var<workgroup> part_q: array<f32, 256>;
var<workgroup> part_kk: array<f32, 256>;
var<workgroup> part_qq: array<f32, 256>;
var<workgroup> o_head: array<f32, 256>;
var<workgroup> part_ss: array<f32, 32>;

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
    let head_state = hh * p.dk * p.dv;
    let lane = lid.x;
    let j = lane / p.q;
    let m = lane % p.q;
    let live = j < p.dv;
    let jv = min(j, p.dv - 1u);
    let r0 = m * 64u;
    // The state first: its loads are in flight while the conv runs.
{% for i in range(64) %}
    var s{{ i }} = select(0.0, state[head_state + min(r0 + {{ i }}u, p.dk - 1u) * p.dv + jv], r0 + {{ i }}u < p.dk);
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
    // Zero past dk and dv: rows past dk add nothing, and the head's sum of squares runs over 256 columns.
    if (lane >= p.dk) {
        qn[lane] = 0.0;
        kn[lane] = 0.0;
    }
    if (lane >= p.dv) {
        o_head[lane] = 0.0;
    }
    let beta = sigmoid(b[hh]);
    let decay = exp(-exp(a_log[hh]) * softplus(a[hh] + dt_bias[hh]));
    let zv = z[hh * p.dv + jv];
    let weight = norm[jv];
    workgroupBarrier();
    // The norms of q and k come with the sums of Sᵀk and Sᵀq: a column's Q threads hold all dk rows between them.
    // Four chains of FMAs, not one: 64 dependent ones would wait for each other.
    var kv0 = 0.0;
    var kv1 = 0.0;
    var kv2 = 0.0;
    var kv3 = 0.0;
    var kk0 = 0.0;
    var kk1 = 0.0;
{% for i in range(64) %}
    let k{{ i }} = kn[r0 + {{ i }}u];
    s{{ i }} *= decay;
    kv{{ i % 4 }} = fma(s{{ i }}, k{{ i }}, kv{{ i % 4 }});
    kk{{ i % 2 }} = fma(k{{ i }}, k{{ i }}, kk{{ i % 2 }});
{% endfor %}
    part_k[lane] = (kv0 + kv1) + (kv2 + kv3);
    part_kk[lane] = kk0 + kk1;
    workgroupBarrier();
    var kv_all = 0.0;
    var sk = 0.0;
    for (var n = 0u; n < p.q; n++) {
        kv_all += part_k[j * p.q + n];
        sk += part_kk[j * p.q + n];
    }
    let inv_k = 1.0 / sqrt(sk + 1e-6);
    let step = (vn[jv] - kv_all * inv_k) * beta * inv_k;
    var o0 = 0.0;
    var o1 = 0.0;
    var o2 = 0.0;
    var o3 = 0.0;
    var qq0 = 0.0;
    var qq1 = 0.0;
{% for i in range(64) %}
    let q{{ i }} = qn[r0 + {{ i }}u];
    s{{ i }} = fma(k{{ i }}, step, s{{ i }});
    o{{ i % 4 }} = fma(s{{ i }}, q{{ i }}, o{{ i % 4 }});
    qq{{ i % 2 }} = fma(q{{ i }}, q{{ i }}, qq{{ i % 2 }});
{% endfor %}
    part_q[lane] = (o0 + o1) + (o2 + o3);
    part_qq[lane] = qq0 + qq1;
    if (live) {
{% for i in range(64) %}
        if (r0 + {{ i }}u < p.dk) {
            state[head_state + (r0 + {{ i }}u) * p.dv + j] = s{{ i }};
        }
{% endfor %}
    }
    workgroupBarrier();
    var o_all = 0.0;
    var sq = 0.0;
    for (var n = 0u; n < p.q; n++) {
        o_all += part_q[j * p.q + n];
        sq += part_qq[j * p.q + n];
    }
    o_all *= 1.0 / sqrt(sq + 1e-6) / sqrt(f32(p.dk));
    if (m == 0u && live) {
        o_head[j] = o_all;
    }
    workgroupBarrier();
    // The head's sum of squares: 32 threads sum 8 columns each (o_head is zero past dv), then every thread the 32.
    if (lane < 32u) {
{% for c in range(8) %}
        let h{{ c }} = o_head[lane * 8u + {{ c }}u];
{% endfor %}
        part_ss[lane] = ((h0 * h0 + h1 * h1) + (h2 * h2 + h3 * h3)) + ((h4 * h4 + h5 * h5) + (h6 * h6 + h7 * h7));
    }
    workgroupBarrier();
    var ss = 0.0;
{% for n in range(0, 32, 4) %}
    ss += (part_ss[{{ n }}u] + part_ss[{{ n + 1 }}u]) + (part_ss[{{ n + 2 }}u] + part_ss[{{ n + 3 }}u]);
{% endfor %}
    if (live && m == 0u) {
        out[hh * p.dv + j] = o_all * (1.0 / sqrt(ss / f32(p.dv) + p.eps)) * weight * silu(zv);
    }
}
