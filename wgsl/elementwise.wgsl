// Element-wise op `{{ op }}` over n values, one thread each:
//   mul_sigmoid: a ·= sigmoid(b) · swiglu: out = silu(a) · b
//   split_heads: [rows, 2·width] → a (first halves), b (second halves) · copy: b[dst + i] = a[src + i]

struct Params {
    n: u32,
    width: u32,
    src: u32,
    dst: u32,
}
var<immediate> p: Params;

{% if op == "mul_sigmoid" %}
@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
{% elif op == "swiglu" %}
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
{% elif op == "split_heads" %}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;
{% elif op == "copy" %}
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> b: array<f32>;
{% endif %}

{% include "common.wgsl" %}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 64u);
    if (i >= p.n) {
        return;
    }
{% if op == "mul_sigmoid" %}
    a[i] *= sigmoid(b[i]);
{% elif op == "swiglu" %}
    out[i] = silu(a[i]) * b[i];
{% elif op == "split_heads" %}
    let head = i / p.width;
    let d = i % p.width;
    a[i] = x[head * 2u * p.width + d];
    b[i] = x[head * 2u * p.width + p.width + d];
{% elif op == "copy" %}
    b[p.dst + i] = a[p.src + i];
{% endif %}
}
