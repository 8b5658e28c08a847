// RMSNorm of each `dim`-long row: y = x / sqrt(mean(x²) + eps) · weight{% if gated %} · silu(z) (the gated form
// Gated DeltaNet applies per value head){% endif %}. One workgroup per row (the grid folded
// into two dimensions).

struct Params {
    dim: u32,
    eps: f32,
    rows: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
{% if gated %}@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
{% else %}@group(0) @binding(2) var<storage, read_write> y: array<f32>;
{% endif %}
{% include "common.wgsl" %}

var<workgroup> sums: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    var ss = 0.0;
    for (var c = lid.x; c < p.dim; c += 64u) {
        let v = x[base + c];
        ss = fma(v, v, ss);
    }
    sums[lid.x] = ss;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            sums[lid.x] += sums[lid.x + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(sums[0] / f32(p.dim) + p.eps);
    for (var c = lid.x; c < p.dim; c += 64u) {
        y[base + c] = x[base + c] * inv * weight[c]{% if gated %} * silu(z[base + c]){% endif %};
    }
}
