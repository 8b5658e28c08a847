// The end of a MoE block, added to the residual stream, per token i and column r (one thread per value):
//   hidden[i, r] += Σ_k weights[i, k] · experts[i·k + k, r]{% if shared %} + sigmoid(shared_gate[i]) · shared_out[i, r]{% endif %}


struct Params {
    t: u32,
    h: u32,
    k: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> experts: array<f32>;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
{% if shared %}@group(0) @binding(2) var<storage, read> shared_out: array<f32>;
@group(0) @binding(3) var<storage, read> shared_gate: array<f32>;
@group(0) @binding(4) var<storage, read_write> hidden: array<f32>;
{% else %}@group(0) @binding(2) var<storage, read_write> hidden: array<f32>;
{% endif %}
{% include "common.wgsl" %}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg, 64u);
    if (idx >= p.t * p.h) {
        return;
    }
    let i = idx / p.h;
    let r = idx % p.h;
    var acc = 0.0;
    for (var k = 0u; k < p.k; k++) {
        acc += weights[i * p.k + k] * experts[(i * p.k + k) * p.h + r];
    }
{% if shared %}
    acc += sigmoid(shared_gate[i]) * shared_out[idx];
{% endif %}
    hidden[idx] += acc;
}
