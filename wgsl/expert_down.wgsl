// The second half of every routed expert of a layer in one dispatch: out[pair, r] = down_e[r] · act[pair] for
// each (token, slot k) pair, e = ids[pair]; down is of format {{ fmt.name }}. Grid: (ceil(rows / ROWS), t · k).

struct Params {
    rows: u32,
    cols: u32,
    stride: u32,
    down_w: u32,
    down_s: u32,
    down_b: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

{% include "weights.wgsl" %}
{% with slots = 1 %}{% include "rowdot.wgsl" %}{% endwith %}

const WB: u32 = {{ fmt.wbytes }}u;
const SB: u32 = {{ fmt.sbytes }}u;

@compute @workgroup_size(32, 4)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let pair = wid.y;
    let record = ids[pair] * p.stride;
    let down = Mat((record + p.down_w) / WB, (record + p.down_s) / SB, (record + p.down_b) / SB, p.cols);
    let row = wid.x * ROWS + lid.y;
    var acc: array<f32, 1>;
    if (row < p.rows) {
        var q: array<f32, 32>;
        let units = (p.cols + 31u) / 32u;
        for (var u = lid.x; u < units; u += LANES) {
            let sb = weight_unit(down, row, u, &q);
            acc[0] += dot_unit(&q, sb, pair * p.cols + u * 32u, min(32u, p.cols - u * 32u));
        }
    }
    reduce_lanes(lid, &acc);
    if (row < p.rows && lid.x == 0u) {
        y[pair * p.rows + row] = reduced(lid, 0u);
    }
}
