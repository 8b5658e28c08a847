// RMSNorm of each `dim`-long row: y = x / sqrt(mean(x²) + eps) · weight{% if gated %} · silu(z) (the gated form
// Gated DeltaNet applies per value head){% endif %}{% if residual == "add" %}, of x = hidden + added, which is also
// stored in hidden (the residual add and the next norm in one pass){% elif residual %}, of x = hidden + the MoE
// block's output Σ_j routing[i, j] · experts[i·k + j]{% if residual == "moe_shared" %} + sigmoid(shared_gate[i]) ·
// shared_out[i]{% endif %}, which is also stored in hidden (the MoE block's end and the next norm in one pass){% endif %}.
// One workgroup of 256 per row (the grid folded into two dimensions). Each thread handles 8 columns per pass,
// 256 apart, all their loads issued before any is used: a decode step normalizes one row with one workgroup, so
// its time is a few rounds of memory latency, not bandwidth.

struct Params {
    dim: u32,
    eps: f32,
    rows: u32,
    k: u32,
}
var<immediate> p: Params;

{% if residual %}
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
{% else %}
@group(0) @binding(0) var<storage, read> x: array<f32>;
{% endif %}
@group(0) @binding(1) var<storage, read> weight: array<f32>;
{% if residual == "add" %}
@group(0) @binding(2) var<storage, read> added: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
{% elif residual %}
@group(0) @binding(2) var<storage, read> experts: array<f32>;
@group(0) @binding(3) var<storage, read> routing: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
{% if residual == "moe_shared" %}
@group(0) @binding(5) var<storage, read> shared_out: array<f32>;
@group(0) @binding(6) var<storage, read> shared_gate: array<f32>;
{% endif %}
{% elif gated %}
@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
{% else %}
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
{% endif %}

{% include "common.wgsl" %}

var<workgroup> sums: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    let last = base + p.dim - 1u;
    var ss = 0.0;
    for (var c0 = lid.x; c0 < p.dim; c0 += 2048u) {
{% for i in range(8) %}
        let in{{ i }} = c0 + {{ 256 * i }}u < p.dim;
        let at{{ i }} = min(base + c0 + {{ 256 * i }}u, last);
        var v{{ i }} = select(0.0, x[at{{ i }}], in{{ i }});
{% endfor %}
{% if residual == "add" %}
{% for i in range(8) %}
        v{{ i }} += select(0.0, added[at{{ i }}], in{{ i }});
{% endfor %}
{% elif residual %}
{% for i in range(8) %}
        var a{{ i }} = 0.0;
{% endfor %}
        for (var j = 0u; j < p.k; j++) {
            let w = routing[row * p.k + j];
            let first = (row * p.k + j) * p.dim;
{% for i in range(8) %}
            a{{ i }} += w * experts[first + at{{ i }} - base];
{% endfor %}
        }
{% if residual == "moe_shared" %}
        let g = sigmoid(shared_gate[row]);
{% for i in range(8) %}
        a{{ i }} += g * shared_out[at{{ i }}];
{% endfor %}
{% endif %}
{% for i in range(8) %}
        v{{ i }} += select(0.0, a{{ i }}, in{{ i }});
{% endfor %}
{% endif %}
{% if residual %}
{% for i in range(8) %}
        if (in{{ i }}) {
            x[at{{ i }}] = v{{ i }};
        }
{% endfor %}
{% endif %}
        ss += ((v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3)) + ((v4 * v4 + v5 * v5) + (v6 * v6 + v7 * v7));
    }
    sums[lid.x] = ss;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            sums[lid.x] += sums[lid.x + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(sums[0] / f32(p.dim) + p.eps);
    for (var c0 = lid.x; c0 < p.dim; c0 += 2048u) {
{% for i in range(8) %}
        let c{{ i }} = c0 + {{ 256 * i }}u;
        let x{{ i }} = x[min(base + c{{ i }}, last)];
        let w{{ i }} = weight[min(c{{ i }}, p.dim - 1u)];
{% if gated %}
        let z{{ i }} = z[min(base + c{{ i }}, last)];
{% endif %}
{% endfor %}
{% for i in range(8) %}
        if (c{{ i }} < p.dim) {
            y[base + c{{ i }}] = x{{ i }} * inv * w{{ i }}{% if gated %} * silu(z{{ i }}){% endif %};
        }
{% endfor %}
    }
}
