{% from "matvec.wgsl" import declarations, accumulate, accumulators, reduce, for_units, subgroup_param %}
{# Decode: 4 rows per thread share each x load, 32 lanes per row group; prefill: 1 row for 8 tokens. Either way
   a workgroup covers 16 (decode) or 8 rows. #}
{% set rows, lanes, groups = (4, 32, 4) if nt == 1 else (1, 16, 8) %}
// y[t, rows] = x[t, cols] · Wᵀ for a weight matrix W [rows, cols] of format {{ fmt.name }}: each thread sums
// {{ rows }} row(s) for {{ nt }} token(s) per pass, so a batched prefill decodes each weight once per {{ nt }} tokens.
// Grid: (ceil(rows / (GROUPS · {{ rows }})), ceil(t / {{ nt }})).

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
@group(0) @binding(1) var<storage, read> x: array<{{ "vec4<f32>" if fmt.kind == "affine" else "f32" }}>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

{% include "weights.wgsl" %}
{{ declarations(rows * nt, lanes, groups) }}

@compute @workgroup_size({{ lanes }}, {{ groups }})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>{{ subgroup_param() }}) {
    let m = Mat(p.w, p.s, p.b, p.cols);
    let row0 = (wid.x * GROUPS + lid.y) * {{ rows }}u;
    let tok0 = wid.y * {{ nt }}u;
{% for n in range(nt) %}
    let xo{{ n }} = min(tok0 + {{ n }}u, p.t - 1u) * p.cols;
{% endfor %}
{{ accumulators(rows, nt) }}
{% call for_units(1) %}
{% for r in range(rows) %}
{{ accumulate(fmt, "m", "min(row0 + " ~ r ~ "u, p.rows - 1u)", r, nt, "valid") }}
{% endfor %}
{% endcall %}
{{ reduce(rows, nt) }}
    if (lid.x < SLOTS) {
        let row = row0 + lid.x / {{ nt }}u;
        let tok = tok0 + lid.x % {{ nt }}u;
        if (row < p.rows && tok < p.t) {
            y[tok * p.rows + row] = partial[(lid.y * SLOTS + lid.x) * LANES];
        }
    }
}
