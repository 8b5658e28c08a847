// RMSNorm of each `dim`-long row: y = x / sqrt(mean(x²) + eps) · weight{% if gated %} · silu(z) (the gated form
// Gated DeltaNet applies per value head){% endif %}{% if residual == "add" %}, of x = hidden + added, which is also
// stored in hidden (the residual add and the next norm in one pass){% elif residual %}, of x = hidden + the MoE
// block's output Σ_j routing[i, j] · experts[i·k + j]{% if residual == "moe_shared" %} + sigmoid(shared_gate[i]) ·
// shared_out[i]{% endif %}, which is also stored in hidden (the MoE block's end and the next norm in one pass){% endif %}.
// One workgroup of 256 per row (the grid folded into two dimensions). A decode step normalizes one row with one
// workgroup, so its time is rounds of memory latency and barriers, not bandwidth: each thread handles 8 columns,
// 256 apart, with every load of them (weights too) issued before any is used, and keeps them in registers for
// the output (rows longer than 2,048 columns loop, and read their later columns again); the experts of the MoE
// sum are read 4 at a time; the sum of squares is reduced {% if subgroups %}through subgroup sums and one barrier
// (subgroups are runs of `sg_size` consecutive invocations; no width is assumed){% else %}by a tree in workgroup
// memory{% endif %}.

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

{# The 8 values v0..v7 of x at columns c0 + 256·i of the row (in{i}: inside it), the residual's sum stored back
   into x, and their squares added to ss. #}
{% macro chunk_values() %}
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
        for (var j0 = 0u; j0 < p.k; j0 += 4u) {
{% for u in range(4) %}
            let j{{ u }} = min(j0 + {{ u }}u, p.k - 1u);
            let w{{ u }} = select(0.0, routing[row * p.k + j{{ u }}], j0 + {{ u }}u < p.k);
            let first{{ u }} = (row * p.k + j{{ u }}) * p.dim - base;
{% for i in range(8) %}
            let e{{ u }}_{{ i }} = experts[first{{ u }} + at{{ i }}];
{% endfor %}
{% endfor %}
{% for u in range(4) %}
{% for i in range(8) %}
            a{{ i }} += w{{ u }} * e{{ u }}_{{ i }};
{% endfor %}
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
{% endmacro %}

{# y at the 8 columns c0 + 256·i from v0..v7 (and weight and z as wt{i}, z{i}). #}
{% macro chunk_output() %}
{% for i in range(8) %}
        if (c0 + {{ 256 * i }}u < p.dim) {
            y[base + c0 + {{ 256 * i }}u] = v{{ i }} * inv * wt{{ i }}{% if gated %} * silu(z{{ i }}){% endif %};
        }
{% endfor %}
{% endmacro %}

{# The weights (and z) of the 8 columns c0 + 256·i. #}
{% macro chunk_weights() %}
{% for i in range(8) %}
        let wt{{ i }} = weight[min(c0 + {{ 256 * i }}u, p.dim - 1u)];
{% if gated %}
        let z{{ i }} = z[min(base + c0 + {{ 256 * i }}u, last)];
{% endif %}
{% endfor %}
{% endmacro %}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>{% if subgroups %}, @builtin(subgroup_size) sg_size: u32{% endif %}) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    let last = base + p.dim - 1u;
    var ss = 0.0;
    // The first 2,048 columns, kept in registers.
    let c0 = lid.x;
{{ chunk_values() }}
{{ chunk_weights() }}
    for (var c0 = lid.x + 2048u; c0 < p.dim; c0 += 2048u) {
{{ chunk_values() }}
    }
{% if subgroups %}
    let partial = subgroupAdd(ss);
    if (lid.x % sg_size == 0u) {
        sums[lid.x / sg_size] = partial;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var s = 0u; s < 256u / sg_size; s++) {
        total += sums[s];
    }
{% else %}
    sums[lid.x] = ss;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            sums[lid.x] += sums[lid.x + s];
        }
        workgroupBarrier();
    }
    let total = sums[0];
{% endif %}
    let inv = 1.0 / sqrt(total / f32(p.dim) + p.eps);
{{ chunk_output() }}
    for (var c0 = lid.x + 2048u; c0 < p.dim; c0 += 2048u) {
{% for i in range(8) %}
        let v{{ i }} = x[min(base + c0 + {{ 256 * i }}u, last)];
{% endfor %}
{{ chunk_weights() }}
{{ chunk_output() }}
    }
}
