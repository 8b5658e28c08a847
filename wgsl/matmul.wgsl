// y[t, rows] = x[t, cols] · Wᵀ for a weight matrix W [rows, cols] of format {{ fmt.name }}; {{ nt }} token(s) per
// pass, so a batched prefill decodes each weight once per {{ nt }} tokens.
// Grid: (ceil(rows / ROWS), ceil(t / {{ nt }})).

struct Params {
    rows: u32,
    cols: u32,
    t: u32,
    w: u32,
    s: u32,
    b: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

{% include "weights.wgsl" %}
{% with slots = nt %}{% include "rowdot.wgsl" %}{% endwith %}

@compute @workgroup_size(32, 4)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let m = Mat(p.w, p.s, p.b, p.cols);
    let row = wid.x * ROWS + lid.y;
    let tok0 = wid.y * {{ nt }}u;
    var acc: array<f32, {{ nt }}>;
    if (row < p.rows) {
        var q: array<f32, 32>;
        let units = (p.cols + 31u) / 32u;
        for (var u = lid.x; u < units; u += LANES) {
            let sb = weight_unit(m, row, u, &q);
            let n = min(32u, p.cols - u * 32u);
            for (var k = 0u; k < {{ nt }}u; k++) {
                if (tok0 + k < p.t) {
                    acc[k] += dot_unit(&q, sb, (tok0 + k) * p.cols + u * 32u, n);
                }
            }
        }
    }
    reduce_lanes(lid, &acc);
    if (row < p.rows && lid.x < {{ nt }}u && tok0 + lid.x < p.t) {
        y[(tok0 + lid.x) * p.rows + row] = reduced(lid, lid.x);
    }
}
