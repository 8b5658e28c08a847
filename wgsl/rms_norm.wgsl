// RMSNorm of each `dim`-long row: y = x / sqrt(mean(x²) + eps) · weight{% if gated %} · silu(z) (the gated form
// Gated DeltaNet applies per value head){% endif %}{% if residual %}, of x = hidden + addend, which is also stored
// in hidden (the residual add and the next norm in one pass){% endif %}. One workgroup of 256 per row (the grid folded into two
// dimensions); each thread reads 4 values per loop iteration, so their loads are in flight together.

struct Params {
    dim: u32,
    eps: f32,
    rows: u32,
}
var<immediate> p: Params;

{% if residual %}
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
{% else %}
@group(0) @binding(0) var<storage, read> x: array<f32>;
{% endif %}
@group(0) @binding(1) var<storage, read> weight: array<f32>;
{% if residual %}
@group(0) @binding(2) var<storage, read> addend: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
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
    for (var c0 = lid.x; c0 < p.dim; c0 += 1024u) {
{% for i in range(4) %}
{% if residual %}
        let at{{ i }} = min(base + c0 + {{ 256 * i }}u, last);
        let v{{ i }} = select(0.0, x[at{{ i }}] + addend[at{{ i }}], c0 + {{ 256 * i }}u < p.dim);
        if (c0 + {{ 256 * i }}u < p.dim) {
            x[at{{ i }}] = v{{ i }};
        }
{% else %}
        let v{{ i }} = select(0.0, x[min(base + c0 + {{ 256 * i }}u, last)], c0 + {{ 256 * i }}u < p.dim);
{% endif %}
{% endfor %}
        ss += (v0 * v0 + v1 * v1) + (v2 * v2 + v3 * v3);
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
    for (var c0 = lid.x; c0 < p.dim; c0 += 1024u) {
{% for i in range(4) %}
        let c{{ i }} = c0 + {{ 256 * i }}u;
        if (c{{ i }} < p.dim) {
            y[base + c{{ i }}] = x[base + c{{ i }}] * inv * weight[c{{ i }}]{% if gated %} * silu(z[base + c{{ i }}]){% endif %};
        }
{% endfor %}
    }
}
