// The index of the largest of n values (the lower index on a tie), so greedy decoding reads back 4 bytes instead
// of the logits. Two passes: `partial` runs ceil(n / 4096) workgroups, each reducing 4096 values (16 per thread,
// loaded together) to one (value, index) candidate; `final` reduces the candidates in one workgroup.

struct Params {
    n: u32,
}
var<immediate> p: Params;

{% if stage == "partial" %}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> best_value: array<f32>;
@group(0) @binding(2) var<storage, read_write> best_index: array<u32>;
{% else %}
@group(0) @binding(0) var<storage, read> candidate_value: array<f32>;
@group(0) @binding(1) var<storage, read> candidate_index: array<u32>;
@group(0) @binding(2) var<storage, read_write> result: array<u32>;
{% endif %}

var<workgroup> wv: array<f32, 256>;
var<workgroup> wi: array<u32, 256>;

// Keeps in (v, i) the better of it and (ov, oi): the larger value, or the lower index on a tie.
fn better(v: f32, i: u32, ov: f32, oi: u32) -> bool {
    return ov > v || (ov == v && oi < i);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let lid = lid3.x;
    var v = -3.4e38;
    var i = 0xffffffffu;
{% if stage == "partial" %}
    let first = wid.x * 4096u + lid;
{% for k in range(16) %}
    let c{{ k }} = first + {{ 256 * k }}u;
    let v{{ k }} = x[min(c{{ k }}, p.n - 1u)];
{% endfor %}
{% for k in range(16) %}
    if (c{{ k }} < p.n && better(v, i, v{{ k }}, c{{ k }})) {
        v = v{{ k }};
        i = c{{ k }};
    }
{% endfor %}
{% else %}
    for (var c = lid; c < p.n; c += 256u) {
        if (better(v, i, candidate_value[c], candidate_index[c])) {
            v = candidate_value[c];
            i = candidate_index[c];
        }
    }
{% endif %}
    wv[lid] = v;
    wi[lid] = i;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s && better(wv[lid], wi[lid], wv[lid + s], wi[lid + s])) {
            wv[lid] = wv[lid + s];
            wi[lid] = wi[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
{% if stage == "partial" %}
        best_value[wid.x] = wv[0];
        best_index[wid.x] = wi[0];
{% else %}
        result[0] = wi[0];
{% endif %}
    }
}
