// Gated DeltaNet's recurrence for t tokens, per value head hh (which reads key head hh / (hv / hk)):
//   q, k ← L2-normalized (q also × 1/sqrt(dk));  S ← exp(g)·S;  δ = β·(v − Sᵀk);  S ← S + k δᵀ;  o = Sᵀq
// with β = sigmoid(b), g = −exp(a_log)·softplus(a + dt_bias). conv [t, channels] holds q (all key heads), k, v.
// The state S [dk, dv] stays in registers for the whole call: each column j is held by Q threads (p.q, the
// power of two ≥ dk / 32), R = 32 rows each, so 64 / Q columns per workgroup; their partial sums of Sᵀk and Sᵀq
// meet in workgroup memory. (Before, every token read and wrote the state in memory twice: 110 ms of a
// 512-token prefill of 35B-A3B on the H100.) A token's inputs (q, k, v, b, a) are loaded into registers while the
// token before it is computed, so the walk over the tokens waits for memory once, not once per token. Grid: (hv,
// ceil(dv / (64 / Q))). dk ≤ 256 and a multiple of 8.

struct Params {
    t: u32,
    hk: u32,
    hv: u32,
    dk: u32,
    dv: u32,
    channels: u32,
    q: u32,
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

const R: u32 = 32u;
// This token's q and k (zero past dk, so rows a thread holds beyond dk add nothing), and the threads' partial sums.
var<workgroup> qn: array<f32, 256>;
var<workgroup> kn: array<f32, 256>;
var<workgroup> part: array<f32, 64>;
// Each thread's share of the token's |q|² and |k|².
var<workgroup> q_squares: array<f32, 64>;
var<workgroup> k_squares: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let hh = wid.x;
    let kh = hh / (p.hv / p.hk);
    let kd = p.hk * p.dk;
    let head_state = hh * p.dk * p.dv;
    let lane = lid.x;
    let col = lane / p.q;
    let r0 = (lane % p.q) * R;
    let j = wid.y * (64u / p.q) + col;
    let live = j < p.dv;
    let jv = min(j, p.dv - 1u);
{% for i in range(32) %}
    var s{{ i }} = select(0.0, state[head_state + min(r0 + {{ i }}u, p.dk - 1u) * p.dv + jv], r0 + {{ i }}u < p.dk);
{% endfor %}
    for (var r = p.dk + lane; r < 256u; r += 64u) {
        qn[r] = 0.0;
        kn[r] = 0.0;
    }
    let a_scale = -exp(a_log[hh]);
    let dtb = dt_bias[hh];
    let inv_sqrt_dk = 1.0 / sqrt(f32(p.dk));
    // Token i's inputs: rows lane + 64·m of q and k, this column's v, b and a (loaded during token i - 1).
{% macro load_inputs(i) %}
    {
        let row = {{ i }} * p.channels;
{% for m in range(4) %}
        q_in{{ m }} = conv[row + kh * p.dk + min(lane + {{ 64 * m }}u, p.dk - 1u)];
        k_in{{ m }} = conv[row + kd + kh * p.dk + min(lane + {{ 64 * m }}u, p.dk - 1u)];
{% endfor %}
        v_in = conv[row + 2u * kd + hh * p.dv + jv];
        b_in = b[{{ i }} * p.hv + hh];
        a_in = a[{{ i }} * p.hv + hh];
    }
{% endmacro %}
{% for m in range(4) %}
    var q_in{{ m }} = 0.0;
    var k_in{{ m }} = 0.0;
{% endfor %}
    var v_in = 0.0;
    var b_in = 0.0;
    var a_in = 0.0;
{{ load_inputs("0u") }}
    for (var i = 0u; i < p.t; i++) {
        var sq_part = 0.0;
        var sk_part = 0.0;
{% for m in range(4) %}
        if (lane + {{ 64 * m }}u < p.dk) {
            qn[lane + {{ 64 * m }}u] = q_in{{ m }};
            kn[lane + {{ 64 * m }}u] = k_in{{ m }};
            sq_part = fma(q_in{{ m }}, q_in{{ m }}, sq_part);
            sk_part = fma(k_in{{ m }}, k_in{{ m }}, sk_part);
        }
{% endfor %}
        q_squares[lane] = sq_part;
        k_squares[lane] = sk_part;
        let v = v_in;
        let beta = sigmoid(b_in);
        let decay = exp(a_scale * softplus(a_in + dtb));
{{ load_inputs("min(i + 1u, p.t - 1u)") }}
        workgroupBarrier();
        // Every thread sums the 64 shares itself (the same addresses for all: broadcast reads, no reduction).
        var sq = 0.0;
        var sk = 0.0;
        for (var r = 0u; r < 64u; r += 8u) {
{% for c in range(8) %}
            let q{{ c }} = q_squares[r + {{ c }}u];
            let k{{ c }} = k_squares[r + {{ c }}u];
{% endfor %}
            sq += ((q0 + q1) + (q2 + q3)) + ((q4 + q5) + (q6 + q7));
            sk += ((k0 + k1) + (k2 + k3)) + ((k4 + k5) + (k6 + k7));
        }
        let inv_q = 1.0 / sqrt(sq + 1e-6) * inv_sqrt_dk;
        let inv_k = 1.0 / sqrt(sk + 1e-6);
        var kv = 0.0;
{% for i in range(32) %}
        s{{ i }} *= decay;
        kv = fma(s{{ i }}, kn[r0 + {{ i }}u], kv);
{% endfor %}
        part[lane] = kv;
        workgroupBarrier();
        var kv_all = 0.0;
        for (var m = 0u; m < p.q; m++) {
            kv_all += part[col * p.q + m];
        }
        let step = (v - kv_all * inv_k) * beta * inv_k;
        var o = 0.0;
{% for i in range(32) %}
        s{{ i }} = fma(kn[r0 + {{ i }}u], step, s{{ i }});
        o = fma(s{{ i }}, qn[r0 + {{ i }}u], o);
{% endfor %}
        workgroupBarrier();
        part[lane] = o;
        workgroupBarrier();
        if (lane % p.q == 0u && live) {
            var o_all = 0.0;
            for (var m = 0u; m < p.q; m++) {
                o_all += part[col * p.q + m];
            }
            out[(i * p.hv + hh) * p.dv + j] = o_all * inv_q;
        }
        // Before the next token overwrites qn, kn and part.
        workgroupBarrier();
    }
    if (live) {
{% for i in range(32) %}
        if (r0 + {{ i }}u < p.dk) {
            state[head_state + (r0 + {{ i }}u) * p.dv + j] = s{{ i }};
        }
{% endfor %}
    }
}
