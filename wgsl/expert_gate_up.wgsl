// The first half of every routed expert of a layer in one dispatch: for each (token, slot k) pair, the expert id
// comes from `ids` (written by the router on the GPU: no CPU round trip) and
//   act[pair, r] = silu(gate_e[r] · x[token]) · (up_e[r] · x[token]).
// Experts are fixed-stride records in `w` (the floe format's layout); gate and up are of format {{ fmt.name }}.
// Grid: (ceil(rows / ROWS), t · k).

struct Params {
    rows: u32,
    cols: u32,
    k: u32,
    stride: u32,
    gate_w: u32,
    gate_s: u32,
    gate_b: u32,
    up_w: u32,
    up_s: u32,
    up_b: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> act: array<f32>;

{% include "weights.wgsl" %}
{% with slots = 2 %}{% include "rowdot.wgsl" %}{% endwith %}

const WB: u32 = {{ fmt.wbytes }}u;
const SB: u32 = {{ fmt.sbytes }}u;

@compute @workgroup_size(32, 4)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let pair = wid.y;
    let record = ids[pair] * p.stride;
    let gate = Mat((record + p.gate_w) / WB, (record + p.gate_s) / SB, (record + p.gate_b) / SB, p.cols);
    let up = Mat((record + p.up_w) / WB, (record + p.up_s) / SB, (record + p.up_b) / SB, p.cols);
    let xo = (pair / p.k) * p.cols;
    let row = wid.x * ROWS + lid.y;
    var acc: array<f32, 2>;
    if (row < p.rows) {
        var q: array<f32, 32>;
        let units = (p.cols + 31u) / 32u;
        for (var u = lid.x; u < units; u += LANES) {
            let n = min(32u, p.cols - u * 32u);
            let sg = weight_unit(gate, row, u, &q);
            acc[0] += dot_unit(&q, sg, xo + u * 32u, n);
            let su = weight_unit(up, row, u, &q);
            acc[1] += dot_unit(&q, su, xo + u * 32u, n);
        }
    }
    reduce_lanes(lid, &acc);
    if (row < p.rows && lid.x == 0u) {
        let g = reduced(lid, 0u);
        act[pair * p.rows + row] = g / (1.0 + exp(-g)) * reduced(lid, 1u);
    }
}
