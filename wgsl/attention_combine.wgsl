// Merges the splits of attention.wgsl for query i and head h (a workgroup each): with M the largest running max,
//   out = Σ_s e^(m_s − M) · o_s / Σ_s e^(m_s − M) · l_s.
// A split with no keys (past the causal limit) has l = 0 and o = 0 and adds nothing. With `gated`, out is then
// multiplied by sigmoid(gate) (Qwen3.5's output gate). Thread s first reads split s's (m, l); then each thread sums
// 4 dims over the splits, 8 splits per loop iteration, so their loads are in flight together. splits ≤ 64,
// head_dim ≤ 256 and a multiple of 4. Grid: (nh, t).

struct Params {
    nh: u32,
    hd: u32,
    splits: u32,
    gated: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> partial: array<f32>;
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

{% include "common.wgsl" %}

var<workgroup> maxes: array<f32, 64>;
var<workgroup> sums: array<f32, 64>;
var<workgroup> scales: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.y * p.nh + wid.x;
    let base = row * p.splits * (p.hd + 2u);
    let stride = p.hd + 2u;
    if (lid.x < p.splits) {
        maxes[lid.x] = partial[base + lid.x * stride];
        sums[lid.x] = partial[base + lid.x * stride + 1u];
    }
    workgroupBarrier();
    var big = -1e30;
    for (var s = 0u; s < p.splits; s++) {
        big = max(big, maxes[s]);
    }
    var total = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        total += exp(maxes[s] - big) * sums[s];
    }
    // Zero past the splits, so the unrolled sum can read whole groups of 8.
    scales[lid.x] = select(0.0, exp(maxes[min(lid.x, p.splits - 1u)] - big), lid.x < p.splits);
    workgroupBarrier();
    let d = lid.x * 4u;
    if (d >= p.hd) {
        return;
    }
    var acc = vec4<f32>(0.0);
    for (var s = 0u; s < p.splits; s += 8u) {
{% for i in range(8) %}
        let at{{ i }} = base + min(s + {{ i }}u, p.splits - 1u) * stride + 2u + d;
        let o{{ i }} = vec4<f32>(partial[at{{ i }}], partial[at{{ i }} + 1u], partial[at{{ i }} + 2u], partial[at{{ i }} + 3u]);
{% endfor %}
{% for i in range(8) %}
        acc = fma(vec4<f32>(scales[min(s + {{ i }}u, 63u)]), o{{ i }}, acc);
{% endfor %}
    }
    let o = acc / total;
    let at = row * p.hd + d;
    for (var c = 0u; c < 4u; c++) {
        out[at + c] = select(o[c], o[c] * sigmoid(gate[at + c]), p.gated == 1u);
    }
}
