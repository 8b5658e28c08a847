{% from "matvec.wgsl" import declarations, accumulate, accumulators, reduce, for_units, x_tile, tiled_units, subgroup_param, tile_declarations, tile_matmul, out_params, out_bindings, store_out %}
{# Decode: 4 rows per thread share each x load, 32 lanes per row group (32 rows per workgroup for affine formats,
   which read x from a tile in workgroup memory: the tile's fill is shared by more rows, and 16 per workgroup
   measured slower, 64 slower on 4,096 rows; 16 for dense ones); `wide` (decode of
   a matrix with few rows, such as a router or a 2,048-row output projection): 1 row per thread, 64 lanes (4 rows
   per workgroup, so that more workgroups run); prefill: 2 rows for 8 tokens (16 rows per workgroup; 1 row was
   1.5× slower, 4 rows × 32 lanes × 4 no faster: docs/PERF.md); nt64: tiles in workgroup memory (below). `long`:
   the decode of quantized rows longer than 2,048 columns stages x 4,096 columns at a time (one tile, one fill for
   a 4,096-column row; 20 KiB of workgroup memory with the partial sums), its 4 units per lane unrolled. #}
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
{{ out_params(split) }}
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<{{ "vec4<f32>" if fmt.kind == "affine" else "f32" }}>;
{{ out_bindings(split) }}

{% include "weights.wgsl" %}

{% if nt == 64 %}
{#- Tiled (prefills whose matmul makes enough tiles to fill the GPU, see ops.rs; 2/4/8-bit affine formats):
    tile_matmul (matvec.wgsl) computes 64 rows × 64 tokens per workgroup (on tensor cores, where the adapter has
    them, prefills run gemm_f16.wgsl instead). -#}
{{ tile_declarations(fmt) }}
var<private> tile_row0: u32;
var<private> tile_tok0: u32;

// Where tile row r's weight words, scales and biases start.
fn tile_row(r: u32) -> vec3<u32> {
    let row = min(tile_row0 + r, p.rows - 1u);
    let groups = row * (p.cols / GROUP);
    return vec3<u32>(p.w + row * (p.cols / 32u * BITS), p.s + groups, p.b + groups);
}

// Where tile token t's x starts (in vec4s).
fn tile_x(t: u32) -> u32 {
    return min(tile_tok0 + t, p.t - 1u) * p.cols / 4u;
}

@compute @workgroup_size(8, 8)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    tile_row0 = wid.x * 64u;
    tile_tok0 = wid.y * 64u;
{{ tile_matmul(fmt) }}
{% for i in range(8) %}
{% for j in range(8) %}
    {
        let row = tile_row0 + lid.y * 8u + {{ i }}u;
        let tok = tile_tok0 + lid.x * 8u + {{ j }}u;
        if (row < p.rows && tok < p.t) {
{{ store_out(split, "row", "tok", "acc" ~ i ~ "_" ~ j) }}
        }
    }
{% endfor %}
{% endfor %}
}
{% else %}
{{ declarations(rows * nt, lanes, groups) }}
{% if tiled %}{{ x_tile(128 if long else 64) }}{% endif %}

@compute @workgroup_size({{ lanes }}, {{ groups }})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>{{ subgroup_param() }}) {
    let m = Mat(p.w, p.s, p.b, p.cols);
    let row0 = (wid.x * GROUPS + lid.y) * {{ rows }}u;
    let tok0 = wid.y * {{ nt }}u;
{% for n in range(nt) %}
    let xo{{ n }} = min(tok0 + {{ n }}u, p.t - 1u) * p.cols;
{% endfor %}
{{ accumulators(rows, nt) }}
{% if tiled %}
{{ tiled_units(fmt, [["m", "min(row0, p.rows - 1u)"], ["m", "min(row0 + 1u, p.rows - 1u)"], ["m", "min(row0 + 2u, p.rows - 1u)"], ["m", "min(row0 + 3u, p.rows - 1u)"]], 4 if long else 2, steps=4 if long else 0) }}
{% else %}
{% call for_units(fmt, words) %}
{% for r in range(rows) %}
{{ accumulate(fmt, "m", "min(row0 + " ~ r ~ "u, p.rows - 1u)", r, nt, "valid", words) }}
{% endfor %}
{% endcall %}
{% endif %}
{{ reduce(rows, nt) }}
    if (lid.x < SLOTS) {
        let row = row0 + lid.x / {{ nt }}u;
        let tok = tok0 + lid.x % {{ nt }}u;
        if (row < p.rows && tok < p.t) {
{{ store_out(split, "row", "tok", "partial[(lid.y * SLOTS + lid.x) * LANES]") }}
        }
    }
}
{% endif %}
