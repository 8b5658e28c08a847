{% from "matvec.wgsl" import declarations, accumulate, accumulators, reduce, for_units, x_tile, tiled_units, subgroup_param, grouped_chunk, rows_declarations, rows_passes %}
// The second half of every routed expert of a layer in one dispatch: out[pair, r] = down_e[r] · act[pair] for
// each (token, slot k) pair, e = ids[pair]; down is of format {{ fmt.name }}. Each thread sums 4 rows, which
// share its x loads; 16 lanes per row group, as the intermediate size (its columns) is small: 512 columns are 16
// units of 32. Grid: (ceil(rows / 32), pairs).
{% if rows %}
// Rows (prefills): each workgroup runs one chunk of up to 16 pairs of one expert (group_pairs.wgsl), each
// thread 2 rows, 256 apart, over all of them (rows_passes in matvec.wgsl). Grid: (ceil(rows / 512), chunks).
{% elif grouped %}
// Grouped (prefill, where gate_up's or down's format has no rows kernel): each workgroup runs one chunk of up to 8
// pairs of one expert (group_pairs.wgsl); each thread unpacks 2 rows once for 8 tokens. Grid: (ceil(rows / (GROUPS ·
// 2)), chunks).
{% endif %}

struct Params {
    rows: u32,
    cols: u32,
    stride: u32,
    down_w: u32,
    down_s: u32,
    down_b: u32,
    first_pair: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<{{ "vec4<f32>" if fmt.kind == "affine" else "f32" }}>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
{% if grouped %}
@group(0) @binding(4) var<storage, read> order: array<u32>;
@group(0) @binding(5) var<storage, read> chunks: array<vec2<u32>>;
var<workgroup> chunk_shared: vec2<u32>;
{% endif %}

{% include "weights.wgsl" %}
const WB: u32 = {{ fmt.wbytes }}u;
const SB: u32 = {{ fmt.sbytes }}u;
{% if rows %}
{{ rows_declarations() }}

// Chunk token t is the chunk's pair t (the last one past its count), whose input is its own row of x.
fn token_x(chunk: vec2<u32>, t: u32) -> u32 {
    return order[chunk.x + min(t, chunk.y - 1u)] * p.cols / 4u;
}

fn store_rows(i: u32, ra: u32, rb: u32, a: f32, b: f32) {
    let pair = order[i];
    if (ra < p.rows) {
        y[pair * p.rows + ra] = a;
    }
    if (rb < p.rows) {
        y[pair * p.rows + rb] = b;
    }
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
{{ grouped_chunk(0, "lid == 0u") }}
    let record = ids[order[chunk.x]] * p.stride;
    let ma = Mat((record + p.down_w) / WB, (record + p.down_s) / SB, (record + p.down_b) / SB, p.cols);
    let mb = ma;
    let ra = wid.x * 512u + lid;
    let rb = ra + 256u;
{{ rows_passes(fmt) }}
}
{% else %}
{{ declarations(16 if grouped else 4, 16, 8) }}
{# Per pair (decode, short prefill chunks) of an affine format: x from a tile in workgroup memory (matvec.wgsl). #}
{% set tiled = not grouped and fmt.kind == "affine" %}
{% if tiled %}{{ x_tile(16) }}{% endif %}

@compute @workgroup_size(16, 8)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>{{ subgroup_param() }}) {
{% if grouped %}
{{ grouped_chunk() }}
{% for n in range(8) %}
    let xo{{ n }} = pair{{ n }} * p.cols;
{% endfor %}
    let record = ids[pair0] * p.stride;
    let down = Mat((record + p.down_w) / WB, (record + p.down_s) / SB, (record + p.down_b) / SB, p.cols);
    let row0 = (wid.x * GROUPS + lid.y) * 2u;
{{ accumulators(2, 8) }}
{% call for_units(fmt, true) %}
{{ accumulate(fmt, "down", "min(row0, p.rows - 1u)", 0, 8, "valid", true) }}
{{ accumulate(fmt, "down", "min(row0 + 1u, p.rows - 1u)", 1, 8, "valid", true) }}
{% endcall %}
{{ reduce(2, 8) }}
    // Lane n < 8 writes token n's two rows.
    if (lid.x < chunk.y) {
        let pair = order[chunk.x + lid.x];
        for (var r = 0u; r < 2u && row0 + r < p.rows; r++) {
            y[pair * p.rows + row0 + r] = partial[(lid.y * SLOTS + r * 8u + lid.x) * LANES];
        }
    }
{% else %}
    let pair = p.first_pair + wid.y;
    let record = ids[pair] * p.stride;
    let down = Mat((record + p.down_w) / WB, (record + p.down_s) / SB, (record + p.down_b) / SB, p.cols);
    let xo0 = pair * p.cols;
    let row0 = (wid.x * GROUPS + lid.y) * 4u;
{{ accumulators(4, 1) }}
{% if tiled %}
{{ tiled_units(fmt, [["down", "min(row0, p.rows - 1u)"], ["down", "min(row0 + 1u, p.rows - 1u)"], ["down", "min(row0 + 2u, p.rows - 1u)"], ["down", "min(row0 + 3u, p.rows - 1u)"]], 1, preload=true) }}
{% else %}
{% call for_units(fmt) %}
{% for r in range(4) %}
{{ accumulate(fmt, "down", "min(row0 + " ~ r ~ "u, p.rows - 1u)", r, 1, "valid") }}
{% endfor %}
{% endcall %}
{% endif %}
{{ reduce(4, 1) }}
    if (lid.x < 4u && row0 + lid.x < p.rows) {
        y[pair * p.rows + row0 + lid.x] = partial[(lid.y * SLOTS + lid.x) * LANES];
    }
{% endif %}
}
{% endif %}
