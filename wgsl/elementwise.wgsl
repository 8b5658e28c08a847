// Element-wise op `{{ op }}` over n values, one thread each:
//   swiglu: out = silu(a) · b · copy: b[dst + i] = a[src + i]
//   kv_append: keys[dst + i] = k[i] and values[dst + i] = v[i] (new keys and values into an attention cache)

struct Params {
    n: u32,
    src: u32,
    dst: u32,
}
var<immediate> p: Params;

{% if op == "swiglu" %}
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
{% elif op == "copy" %}
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> b: array<f32>;
{% elif op == "kv_append" %}
@group(0) @binding(0) var<storage, read> k: array<f32>;
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(2) var<storage, read_write> keys: array<f32>;
@group(0) @binding(3) var<storage, read_write> values: array<f32>;
{% endif %}

{% include "common.wgsl" %}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 64u);
    if (i >= p.n) {
        return;
    }
{% if op == "swiglu" %}
    out[i] = silu(a[i]) * b[i];
{% elif op == "copy" %}
    b[p.dst + i] = a[p.src + i];
{% elif op == "kv_append" %}
    keys[p.dst + i] = k[i];
    values[p.dst + i] = v[i];
{% endif %}
}
