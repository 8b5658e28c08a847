// Gated DeltaNet's recurrence for t tokens, per value head hh (which reads key head hh / (hv / hk)):
//   S ← exp(g)·S;  δ = β·(v − Sᵀk);  S ← S + k δᵀ;  o = Sᵀq
// with β = sigmoid(b), g = −exp(a_log)·softplus(a + dt_bias). conv [t, channels] holds q (all key heads), k, v,
// with q and k already L2-normalized (q also × 1/sqrt(dk)) by wgsl/delta_qk_norm.wgsl.
// The state S [dk, dv] stays in registers for the whole call: each column j is held by Q threads (p.q, the
// power of two ≥ dk / 32), R = 32 rows each, so 64 / Q columns per workgroup; their partial sums of Sᵀk and Sᵀq
// meet in workgroup memory. (Before, every token read and wrote the state in memory twice: 110 ms of a
// 512-token prefill of 35B-A3B on the H100.) A token's inputs are loaded into registers a token ahead (q and k
// two), so the walk over the tokens waits for memory once, not once per token; q and k go through workgroup memory
// in two halves (token i reads one while token i + 1's are written into the other), so a token costs two barriers.
// Grid: (hv, ceil(dv / (64 / Q))). dk ≤ 256 and a multiple of 8.

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

{% set R = 32 %}
const R: u32 = {{ R }}u;
// Two tokens' q and k (halves i % 2, of 64 vec4s; zero past dk, so rows a thread holds beyond dk add nothing),
// read as vec4s: a thread's R rows in R / 4 reads.
var<workgroup> qn: array<vec4<f32>, 128>;
var<workgroup> kn: array<vec4<f32>, 128>;
// The threads' partial sums of Sᵀk and of Sᵀq.
var<workgroup> part_kv: array<f32, 64>;
var<workgroup> part_o: array<f32, 64>;

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
{% for i in range(R) %}
    var s{{ i }} = select(0.0, state[head_state + min(r0 + {{ i }}u, p.dk - 1u) * p.dv + jv], r0 + {{ i }}u < p.dk);
{% endfor %}
    for (var r = p.dk + lane; r < 256u; r += 64u) {
        qn[r / 4u][r % 4u] = 0.0;
        kn[r / 4u][r % 4u] = 0.0;
        qn[64u + r / 4u][r % 4u] = 0.0;
        kn[64u + r / 4u][r % 4u] = 0.0;
    }
    let a_scale = -exp(a_log[hh]);
    let dtb = dt_bias[hh];
    // Rows lane + 64·m of token i's q and k.
{% macro load_qk(i) %}
    {
        let row = {{ i }} * p.channels;
{% for m in range(4) %}
        q_in{{ m }} = conv[row + kh * p.dk + min(lane + {{ 64 * m }}u, p.dk - 1u)];
        k_in{{ m }} = conv[row + kd + kh * p.dk + min(lane + {{ 64 * m }}u, p.dk - 1u)];
{% endfor %}
    }
{% endmacro %}
    // Into half h (0 or 64) of qn and kn.
{% macro store_qk(h) %}
{% for m in range(4) %}
        if (lane + {{ 64 * m }}u < p.dk) {
            qn[{{ h }} + lane / 4u + {{ 16 * m }}u][lane % 4u] = q_in{{ m }};
            kn[{{ h }} + lane / 4u + {{ 16 * m }}u][lane % 4u] = k_in{{ m }};
        }
{% endfor %}
{% endmacro %}
    // Token i's v of this column, b and a.
{% macro load_vba(i) %}
    {
        v_in = conv[{{ i }} * p.channels + 2u * kd + hh * p.dv + jv];
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
{{ load_qk("0u") }}
{{ store_qk("0u") }}
{{ load_vba("0u") }}
{{ load_qk("min(1u, p.t - 1u)") }}
    workgroupBarrier();
    for (var i = 0u; i < p.t; i++) {
        let cur = (i % 2u) * 64u;
        let mine = cur + r0 / 4u;
        let v = v_in;
        let beta = sigmoid(b_in);
        let decay = exp(a_scale * softplus(a_in + dtb));
{{ load_vba("min(i + 1u, p.t - 1u)") }}
        // Sᵀk over this thread's rows, in four chains.
        var kv0 = 0.0;
        var kv1 = 0.0;
        var kv2 = 0.0;
        var kv3 = 0.0;
{% for m in range(R // 4) %}
        let k{{ m }} = kn[mine + {{ m }}u];
{% endfor %}
{% for i in range(R) %}
        s{{ i }} *= decay;
        kv{{ i % 4 }} = fma(s{{ i }}, k{{ i // 4 }}.{{ "xyzw"[i % 4] }}, kv{{ i % 4 }});
{% endfor %}
        part_kv[lane] = (kv0 + kv1) + (kv2 + kv3);
        // Token i + 1's q and k into the other half (its readers, token i - 1, are past the barrier that ended it).
{{ store_qk("64u - cur") }}
{{ load_qk("min(i + 2u, p.t - 1u)") }}
        workgroupBarrier();
        var kv_all = 0.0;
        for (var m = 0u; m < p.q; m++) {
            kv_all += part_kv[col * p.q + m];
        }
        let step = (v - kv_all) * beta;
        var o0 = 0.0;
        var o1 = 0.0;
        var o2 = 0.0;
        var o3 = 0.0;
{% for m in range(R // 4) %}
        let q{{ m }} = qn[mine + {{ m }}u];
{% endfor %}
{% for i in range(R) %}
        s{{ i }} = fma(k{{ i // 4 }}.{{ "xyzw"[i % 4] }}, step, s{{ i }});
        o{{ i % 4 }} = fma(s{{ i }}, q{{ i // 4 }}.{{ "xyzw"[i % 4] }}, o{{ i % 4 }});
{% endfor %}
        part_o[lane] = (o0 + o1) + (o2 + o3);
        // part_o is read after this barrier and written again after the next token's first one.
        workgroupBarrier();
        if (lane % p.q == 0u && live) {
            var o_all = 0.0;
            for (var m = 0u; m < p.q; m++) {
                o_all += part_o[col * p.q + m];
            }
            out[(i * p.hv + hh) * p.dv + j] = o_all;
        }
    }
    if (live) {
{% for i in range(R) %}
        if (r0 + {{ i }}u < p.dk) {
            state[head_state + (r0 + {{ i }}u) * p.dv + j] = s{{ i }};
        }
{% endfor %}
    }
}
