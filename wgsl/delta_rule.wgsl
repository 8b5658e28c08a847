// Gated DeltaNet's recurrence for t tokens, one workgroup per value head hh (which reads key head
// hh / (hv / hk)); each thread owns columns j of the state S [dk, dv] and needs no reduction:
//   q, k ← L2-normalized (q also × 1/sqrt(dk));  S ← exp(g)·S;  δ = β·(v − Sᵀk);  S ← S + k δᵀ;  o = Sᵀq
// with β = sigmoid(b), g = −exp(a_log)·softplus(a + dt_bias). conv [t, channels] holds q (all key heads), k, v.
// Grid: (hv, ceil(dv / 64)), a thread per state column; the loops over dk read 8 rows per iteration so their
// loads are in flight together. dk ≤ 256 and a multiple of 8.

struct Params {
    t: u32,
    hk: u32,
    hv: u32,
    dk: u32,
    dv: u32,
    channels: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> conv: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> a_log: array<f32>;
@group(0) @binding(4) var<storage, read> dt_bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> state: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

{% include "common.wgsl" %}

var<workgroup> qn: array<f32, 256>;
var<workgroup> kn: array<f32, 256>;
var<workgroup> red_q: array<f32, 64>;
var<workgroup> red_k: array<f32, 64>;

fn softplus(v: f32) -> f32 {
    if (v > 20.0) {
        return v;
    }
    return log(1.0 + exp(v));
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let hh = wid.x;
    let kh = hh / (p.hv / p.hk);
    let kd = p.hk * p.dk;
    let head_state = hh * p.dk * p.dv;
    for (var i = 0u; i < p.t; i++) {
        let row = i * p.channels;
        var sq = 0.0;
        var sk = 0.0;
        for (var r = lid.x; r < p.dk; r += 64u) {
            let qv = conv[row + kh * p.dk + r];
            let kv = conv[row + kd + kh * p.dk + r];
            qn[r] = qv;
            kn[r] = kv;
            sq = fma(qv, qv, sq);
            sk = fma(kv, kv, sk);
        }
        red_q[lid.x] = sq;
        red_k[lid.x] = sk;
        workgroupBarrier();
        for (var s = 32u; s > 0u; s >>= 1u) {
            if (lid.x < s) {
                red_q[lid.x] += red_q[lid.x + s];
                red_k[lid.x] += red_k[lid.x + s];
            }
            workgroupBarrier();
        }
        let inv_q = 1.0 / sqrt(red_q[0] + 1e-6) * (1.0 / sqrt(f32(p.dk)));
        let inv_k = 1.0 / sqrt(red_k[0] + 1e-6);
        workgroupBarrier();
        for (var r = lid.x; r < p.dk; r += 64u) {
            qn[r] *= inv_q;
            kn[r] *= inv_k;
        }
        workgroupBarrier();
        let beta = sigmoid(b[i * p.hv + hh]);
        let decay = exp(-exp(a_log[hh]) * softplus(a[i * p.hv + hh] + dt_bias[hh]));
        let j = wid.y * 64u + lid.x;
        if (j < p.dv) {
            var kv = 0.0;
            for (var r = 0u; r < p.dk; r += 8u) {
{% for i in range(8) %}
                let s{{ i }} = state[head_state + (r + {{ i }}u) * p.dv + j] * decay;
{% endfor %}
{% for i in range(8) %}
                state[head_state + (r + {{ i }}u) * p.dv + j] = s{{ i }};
{% endfor %}
                kv += ((s0 * kn[r] + s1 * kn[r + 1u]) + (s2 * kn[r + 2u] + s3 * kn[r + 3u]))
                    + ((s4 * kn[r + 4u] + s5 * kn[r + 5u]) + (s6 * kn[r + 6u] + s7 * kn[r + 7u]));
            }
            let delta = (conv[row + 2u * kd + hh * p.dv + j] - kv) * beta;
            var o = 0.0;
            for (var r = 0u; r < p.dk; r += 8u) {
{% for i in range(8) %}
                let s{{ i }} = fma(kn[r + {{ i }}u], delta, state[head_state + (r + {{ i }}u) * p.dv + j]);
{% endfor %}
{% for i in range(8) %}
                state[head_state + (r + {{ i }}u) * p.dv + j] = s{{ i }};
{% endfor %}
                o += ((s0 * qn[r] + s1 * qn[r + 1u]) + (s2 * qn[r + 2u] + s3 * qn[r + 3u]))
                    + ((s4 * qn[r + 4u] + s5 * qn[r + 5u]) + (s6 * qn[r + 6u] + s7 * qn[r + 7u]));
            }
            out[(i * p.hv + hh) * p.dv + j] = o;
        }
        workgroupBarrier();
    }
}
