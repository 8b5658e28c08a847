{% from "matvec.wgsl" import declarations, accumulate, accumulators, reduce, for_units, x_tile, subgroup_param %}
{# Decode: 4 rows per thread share each x load, 32 lanes per row group (32 rows per workgroup for affine formats,
   which read x from a tile in workgroup memory: the tile's fill is shared by more rows, and 16 per workgroup
   measured slower, 64 slower on 4,096 rows; 16 for dense ones); `wide` (decode of
   a matrix with few rows, such as a router or a 2,048-row output projection): 1 row per thread, 64 lanes (4 rows
   per workgroup, so that more workgroups run); prefill: 2 rows for 8 tokens (16 rows per workgroup; 1 row was
   1.5× slower, 4 rows × 32 lanes × 4 no faster: docs/PERF.md); nt64: tiles in workgroup memory (below). #}
{% set tiled = nt == 1 and not wide and fmt.kind == "affine" %}
{% set rows, lanes, groups = (1, 64, 4) if wide else ((4, 32, 8 if tiled else 4) if nt == 1 else (2, 16, 8)) %}
{# A word per step (matvec.wgsl) where it measured faster on the H100 (docs/PERF.md): prefill, 3.7× (each unit's
   x loads, 8 tokens × 32 lanes × 128 bytes apart, were the bottleneck), and the wide decode layout at 4 bits
   (−24%); at 8 bits, and in the 4-row decode layout, units were as fast or faster. #}
{% set words = nt > 1 or (wide and fmt.bits != 8) %}
{% if nt == 64 %}
// y[t, rows] = x[t, cols] · Wᵀ for a weight matrix W [rows, cols] of format {{ fmt.name }}, in tiles of 64 rows × 64
// tokens, so a batched prefill decodes each weight once per 64 tokens. Grid: (ceil(rows / 64), ceil(t / 64)).
{% else %}
// y[t, rows] = x[t, cols] · Wᵀ for a weight matrix W [rows, cols] of format {{ fmt.name }}: each thread sums
// {{ rows }} row(s) for {{ nt }} token(s) per pass, so a batched prefill decodes each weight once per {{ nt }} tokens.
// Grid: (ceil(rows / (GROUPS · {{ rows }})), ceil(t / {{ nt }})).
{% endif %}
{% if split %}
// Split: W is several matrices' rows back to back (one upload) and each one's rows go to its own output,
// y0 [t, r1], y1 [t, r2 − r1], y2 [t, r3 − r2], y3 [t, rows − r3]: one dispatch instead of one per matrix.
{% endif %}

struct Params {
    rows: u32,
    cols: u32,
    t: u32,
    w: u32,
    s: u32,
    b: u32,
{% if split %}
    r1: u32,
    r2: u32,
    r3: u32,
{% else %}
    // The output's row count and this matrix's first row in it (a matrix split over bindings runs in pieces).
    out_rows: u32,
    row0: u32,
{% endif %}
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<{{ "vec4<f32>" if fmt.kind == "affine" else "f32" }}>;
{% if split %}
{% for o in range(4) %}
@group(0) @binding({{ 2 + o }}) var<storage, read_write> y{{ o }}: array<f32>;
{% endfor %}
{% else %}
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
{% endif %}

{% include "weights.wgsl" %}

{# Writes value `v` of (row, tok) to its output. #}
{% macro store(row, tok, v) %}
{% if split %}
            if ({{ row }} < p.r1) {
                y0[{{ tok }} * p.r1 + {{ row }}] = {{ v }};
            } else if ({{ row }} < p.r2) {
                y1[{{ tok }} * (p.r2 - p.r1) + {{ row }} - p.r1] = {{ v }};
            } else if ({{ row }} < p.r3) {
                y2[{{ tok }} * (p.r3 - p.r2) + {{ row }} - p.r2] = {{ v }};
            } else {
                y3[{{ tok }} * (p.rows - p.r3) + {{ row }} - p.r3] = {{ v }};
            }
{% else %}
            y[{{ tok }} * p.out_rows + p.row0 + {{ row }}] = {{ v }};
{% endif %}
{% endmacro %}

{% if nt == 64 %}
{#- Tiled (prefills whose matmul makes enough tiles to fill the GPU, see ops.rs; 2/4/8-bit affine formats): a
    workgroup of 16 × 16 threads computes a tile of 64 rows × 64 tokens, each thread 4 rows × 4 tokens. Per unit of 32 columns, the workgroup dequantizes the 64
    rows' weights and copies the 64 tokens' x into workgroup memory (column-major, so a thread reads 4 rows or 4
    tokens as one vec4), then each thread does 16 FMAs per 2 loads from there: each weight is unpacked once per
    64 tokens instead of once per 8 (nt8). -#}
const VALS: u32 = {{ 32 // fmt.bits }}u;
// Column k of the unit: ws[k · 16 + r / 4][r % 4] = w[row0 + r, u · 32 + k], xs[k · 16 + t / 4][t % 4] = x[tok0 + t, …].
var<workgroup> ws: array<vec4<f32>, 512>;
var<workgroup> xs: array<vec4<f32>, 512>;

@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let id = lid.y * 16u + lid.x;
    let row0 = wid.x * 64u;
    let tok0 = wid.y * 64u;
    let words = p.cols / 32u * BITS;
{% for i in range(4) %}
{% for j in range(4) %}
    var acc{{ i }}_{{ j }} = 0.0;
{% endfor %}
{% endfor %}
    // This thread's share of a unit, loaded a unit ahead (in flight while the FMAs of the unit before run): weight
    // words `wi{n} / 64` of rows `wi{n} % 64` (consecutive threads on consecutive rows) with their group's scale and
    // bias, and x vec4s `id % 8` of tokens `id / 8` and 32 + `id / 8`.
{% set wl = (64 * fmt.bits + 255) // 256 %}
{% for n in range(wl) %}
    let wi{{ n }} = id + {{ n * 256 }}u;
    let wr{{ n }} = min(row0 + wi{{ n }} % 64u, p.rows - 1u);
    var wv{{ n }} = 0u;
    var wsc{{ n }} = 0.0;
    var wbi{{ n }} = 0.0;
{% endfor %}
    var xv0 = vec4<f32>();
    var xv1 = vec4<f32>();
{% macro load_unit(u) %}
{% for n in range(wl) %}
        if (wi{{ n }} < 64u * BITS) {
            let g = wr{{ n }} * (p.cols / GROUP) + ({{ u }}) * 32u / GROUP;
            wv{{ n }} = w[p.w + wr{{ n }} * words + ({{ u }}) * BITS + wi{{ n }} / 64u];
            wsc{{ n }} = {{ fmt.sdtype }}_at(p.s + g);
            wbi{{ n }} = {{ fmt.sdtype }}_at(p.b + g);
        }
{% endfor %}
{% for n in range(2) %}
        xv{{ n }} = x[(min(tok0 + id / 8u + {{ n * 32 }}u, p.t - 1u) * p.cols + ({{ u }}) * 32u) / 4u + id % 8u];
{% endfor %}
{% endmacro %}
{{ load_unit("0u") }}
    let units = p.cols / 32u;
    for (var u = 0u; u < units; u++) {
        workgroupBarrier();
{% for n in range(wl) %}
        if (wi{{ n }} < 64u * BITS) {
            let r = wi{{ n }} % 64u;
            let word = wi{{ n }} / 64u;
            for (var j = 0u; j < VALS; j++) {
                ws[(word * VALS + j) * 16u + r / 4u][r % 4u] = wsc{{ n }} * f32((wv{{ n }} >> (j * BITS)) & MASK) + wbi{{ n }};
            }
        }
{% endfor %}
{% for n in range(2) %}
        {
            let t = id / 8u + {{ n * 32 }}u;
            let q = id % 8u;
            xs[(q * 4u) * 16u + t / 4u][t % 4u] = xv{{ n }}.x;
            xs[(q * 4u + 1u) * 16u + t / 4u][t % 4u] = xv{{ n }}.y;
            xs[(q * 4u + 2u) * 16u + t / 4u][t % 4u] = xv{{ n }}.z;
            xs[(q * 4u + 3u) * 16u + t / 4u][t % 4u] = xv{{ n }}.w;
        }
{% endfor %}
        workgroupBarrier();
{{ load_unit("min(u + 1u, units - 1u)") }}
{% for k in range(32) %}
        {
            let wv = ws[{{ k * 16 }}u + lid.y];
            let xv = xs[{{ k * 16 }}u + lid.x];
{% for i in range(4) %}
{% for j in range(4) %}
            acc{{ i }}_{{ j }} = fma(wv[{{ i }}], xv[{{ j }}], acc{{ i }}_{{ j }});
{% endfor %}
{% endfor %}
        }
{% endfor %}
    }
{% for i in range(4) %}
{% for j in range(4) %}
    {
        let row = row0 + lid.y * 4u + {{ i }}u;
        let tok = tok0 + lid.x * 4u + {{ j }}u;
        if (row < p.rows && tok < p.t) {
{{ store("row", "tok", "acc" ~ i ~ "_" ~ j) }}
        }
    }
{% endfor %}
{% endfor %}
}
{% else %}
{{ declarations(rows * nt, lanes, groups) }}
{% if tiled %}{{ x_tile() }}{% endif %}

@compute @workgroup_size({{ lanes }}, {{ groups }})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>{{ subgroup_param() }}) {
    let m = Mat(p.w, p.s, p.b, p.cols);
    let row0 = (wid.x * GROUPS + lid.y) * {{ rows }}u;
    let tok0 = wid.y * {{ nt }}u;
{% for n in range(nt) %}
    let xo{{ n }} = min(tok0 + {{ n }}u, p.t - 1u) * p.cols;
{% endfor %}
{{ accumulators(rows, nt) }}
{% call for_units(fmt, words, tiled) %}
{% for r in range(rows) %}
{{ accumulate(fmt, "m", "min(row0 + " ~ r ~ "u, p.rows - 1u)", r, nt, "valid", words, tiled) }}
{% endfor %}
{% endcall %}
{{ reduce(rows, nt) }}
    if (lid.x < SLOTS) {
        let row = row0 + lid.x / {{ nt }}u;
        let tok = tok0 + lid.x % {{ nt }}u;
        if (row < p.rows && tok < p.t) {
{{ store("row", "tok", "partial[(lid.y * SLOTS + lid.x) * LANES]") }}
        }
    }
}
{% endif %}
