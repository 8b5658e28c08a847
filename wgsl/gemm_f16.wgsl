{% from "matvec.wgsl" import out_params, out_bindings, store_out %}
enable f16;
enable wgpu_cooperative_matrix;
// y[t, rows] = x[t, cols] · Wᵀ on tensor cores (cooperative matrices of 16 × 16 f16 with f32 sums), from W and x
// already in f16 (dequant.wgsl): W [ceil(rows / 128) · 128, cols] and x [ceil(t / 64) · 64, cols], cols a multiple
// of 32; the padding's sums are never stored. A workgroup of 4 subgroups of 32 computes a tile of 128 rows × 64
// tokens, each subgroup 32 tokens × 64 rows (2 × 4 fragments). Per 32 columns the tile's weights and x are copied
// into workgroup memory (each thread's share loaded 32 columns ahead, in flight during the products before) and
// every fragment is read from there. Grid: (ceil(rows / 128), ceil(t / 64)).
{% if split %}
// Split: W is several matrices' rows back to back and each one's rows go to its own output.
{% endif %}

struct Params {
    rows: u32,
    cols: u32,
    t: u32,
{{ out_params(split) }}
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> wh: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> xh: array<vec4<u32>>;
{{ out_bindings(split) }}

// 32 columns of the tile: ws[r · LD + k] = weight of tile row r, xs[t · LD + k] = x of tile token t. LD = 40 halves
// (80 bytes, a multiple of the 16 a cooperative load needs): the 8 rows of 16 bytes a load reads at once fall on
// distinct banks.
const LD: u32 = 40u;
var<workgroup> ws: array<f16, {{ 128 * 40 }}>;
var<workgroup> xs: array<f16, {{ 64 * 40 }}>;
// The tile's sums: cs[t · 128 + r] of tile token t and tile row r.
var<workgroup> cs: array<f32, {{ 128 * 64 }}>;

// Stores the 8 halves of `v` at ws or xs[o ..].
{% for a in ["ws", "xs"] %}
fn put_{{ a }}(o: u32, v: vec4<u32>) {
{% for c in range(4) %}
    let h{{ c }} = unpack2x16float(v.{{ "xyzw"[c] }});
    {{ a }}[o + {{ 2 * c }}u] = f16(h{{ c }}.x);
    {{ a }}[o + {{ 2 * c + 1 }}u] = f16(h{{ c }}.y);
{% endfor %}
}
{% endfor %}

@compute @workgroup_size(128)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_id) sg: u32) {
    let row0 = wid.x * 128u;
    let tok0 = wid.y * 64u;
    // 8 halves (a vec4<u32>) per load; a row's 32 columns are 4 of them. This thread's share: vec4 `lid % 4` of tile
    // rows lid / 4 + 32·n and of tile tokens lid / 4 + 32·n.
    let vecs = p.cols / 8u;
    let part = lid % 4u;
{% for n in range(4) %}
    let wsrc{{ n }} = (row0 + lid / 4u + {{ 32 * n }}u) * vecs + part;
    let wdst{{ n }} = (lid / 4u + {{ 32 * n }}u) * LD + part * 8u;
    var wv{{ n }} = wh[wsrc{{ n }}];
{% endfor %}
{% for n in range(2) %}
    let xsrc{{ n }} = (tok0 + lid / 4u + {{ 32 * n }}u) * vecs + part;
    let xdst{{ n }} = (lid / 4u + {{ 32 * n }}u) * LD + part * 8u;
    var xv{{ n }} = xh[xsrc{{ n }}];
{% endfor %}
    // This subgroup's fragments: tile tokens tq .. tq + 32 by tile rows rq .. rq + 64.
    let tq = (sg / 2u) * 32u;
    let rq = (sg % 2u) * 64u;
{% for i in range(2) %}
{% for j in range(4) %}
    var c{{ i }}{{ j }} = coop_mat16x16<f32, C>();
{% endfor %}
{% endfor %}
    let steps = p.cols / 32u;
    for (var s = 0u; s < steps; s++) {
        workgroupBarrier();
{% for n in range(4) %}
        put_ws(wdst{{ n }}, wv{{ n }});
{% endfor %}
{% for n in range(2) %}
        put_xs(xdst{{ n }}, xv{{ n }});
{% endfor %}
        workgroupBarrier();
        // The next 32 columns (the last ones again at the end: in range, unused).
        let next = min(s + 1u, steps - 1u) * 4u;
{% for n in range(4) %}
        wv{{ n }} = wh[wsrc{{ n }} + next];
{% endfor %}
{% for n in range(2) %}
        xv{{ n }} = xh[xsrc{{ n }} + next];
{% endfor %}
{% for h in [0, 16] %}
        {
            // Every index and stride a value of its own (naga's SPIR-V for cooperative loads).
            let ld = LD;
{% for i in range(2) %}
            let ia{{ i }} = (tq + {{ 16 * i }}u) * LD + {{ h }}u;
            let a{{ i }} = coopLoadT<coop_mat16x16<f16, A>>(&xs[ia{{ i }}], ld);
{% endfor %}
{% for j in range(4) %}
            let ib{{ j }} = (rq + {{ 16 * j }}u) * LD + {{ h }}u;
            let b{{ j }} = coopLoad<coop_mat16x16<f16, B>>(&ws[ib{{ j }}], ld);
{% endfor %}
{% for i in range(2) %}
{% for j in range(4) %}
            c{{ i }}{{ j }} = coopMultiplyAdd(a{{ i }}, b{{ j }}, c{{ i }}{{ j }});
{% endfor %}
{% endfor %}
        }
{% endfor %}
    }
    {
        let lc = 128u;
{% for i in range(2) %}
{% for j in range(4) %}
        let o{{ i }}{{ j }} = (tq + {{ 16 * i }}u) * 128u + rq + {{ 16 * j }}u;
        coopStoreT(c{{ i }}{{ j }}, &cs[o{{ i }}{{ j }}], lc);
{% endfor %}
{% endfor %}
    }
    workgroupBarrier();
    for (var i = lid; i < {{ 128 * 64 }}u; i += 128u) {
        let row = row0 + i % 128u;
        let tok = tok0 + i / 128u;
        if (row < p.rows && tok < p.t) {
{{ store_out(split, "row", "tok", "cs[i]") }}
        }
    }
}
