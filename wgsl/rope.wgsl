// Rotary embedding in place on the first 2·half dims of each head of x [t, heads, head_dim] (NeoX half rotation:
// pairs (j, j + half)). The cos/sin table [t, half, 2] is computed on the CPU exactly as the CPU backend does, so
// large angles lose no precision to the GPU's trigonometry.

struct Params {
    t: u32,
    heads: u32,
    head_dim: u32,
    half: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> table: array<f32>;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

{% include "common.wgsl" %}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg, 64u);
    if (idx >= p.t * p.heads * p.half) {
        return;
    }
    let j = idx % p.half;
    let th = idx / p.half;
    let i = th / p.heads;
    let at = th * p.head_dim + j;
    let c = table[(i * p.half + j) * 2u];
    let s = table[(i * p.half + j) * 2u + 1u];
    let a = x[at];
    let b = x[at + p.half];
    x[at] = a * c - b * s;
    x[at + p.half] = b * c + a * s;
}
