// Merges the splits of attention.wgsl for query i and head h (a workgroup each): with M the largest running max,
//   out = Σ_s e^(m_s − M) · o_s / Σ_s e^(m_s − M) · l_s.
// A split with no keys (past the causal limit) has l = 0 and o = 0 and adds nothing. With `gated`, out is then
// multiplied by sigmoid(gate) (Qwen3.5's output gate). Grid: (nh, t).

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

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.y * p.nh + wid.x;
    let base = row * p.splits * (p.hd + 2u);
    var big = -1e30;
    for (var s = 0u; s < p.splits; s++) {
        big = max(big, partial[base + s * (p.hd + 2u)]);
    }
    var total = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        let at = base + s * (p.hd + 2u);
        total += exp(partial[at] - big) * partial[at + 1u];
    }
    for (var d = lid.x; d < p.hd; d += 64u) {
        var acc = 0.0;
        for (var s = 0u; s < p.splits; s++) {
            let at = base + s * (p.hd + 2u);
            acc += exp(partial[at] - big) * partial[at + 2u + d];
        }
        let o = acc / total;
        out[row * p.hd + d] = select(o, o * sigmoid(gate[row * p.hd + d]), p.gated == 1u);
    }
}
