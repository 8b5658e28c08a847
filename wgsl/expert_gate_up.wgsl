{% from "matvec.wgsl" import declarations, accumulate, accumulators, reduce, for_units, x_tile, tiled_units, subgroup_param, grouped_chunk, rows_declarations, rows_passes %}
// The first half of every routed expert of a layer in one dispatch: for each (token, slot k) pair, the expert id
// comes from `ids` (written by the router on the GPU: no CPU round trip) and
//   act[pair, r] = silu(gate_e[r] · x[token]) · (up_e[r] · x[token]).
// Experts are fixed-stride records in `w` (the floe format's layout); gate and up are of format {{ fmt.name }}.
// Each thread sums 2 rows of gate and of up. Grid: (ceil(rows / (GROUPS · 2)), pairs).
{% if rows %}
// Rows (prefills): each workgroup runs one chunk of up to 16 pairs of one expert (group_pairs.wgsl), each
// thread a row of gate and the same row of up over all of them (rows_passes in matvec.wgsl), so it applies the
// SwiGLU itself. Grid: (ceil(rows / 256), chunks).
{% elif grouped %}
// Grouped (prefill, where gate_up's or down's format has no rows kernel): each workgroup runs one chunk of up to 8
// pairs of one expert (group_pairs.wgsl), so each thread unpacks a row of gate and of up once for 8 tokens. Grid:
// (ceil(rows / GROUPS), chunks).
{% endif %}

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
    /// The pair of workgroup row 0 (a streamed prefill runs its pairs in chunks).
    first_pair: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<{{ "vec4<f32>" if fmt.kind == "affine" else "f32" }}>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> act: array<f32>;
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

// Chunk token t is the chunk's pair t (the last one past its count): x's row of that pair's token.
fn token_x(chunk: vec2<u32>, t: u32) -> u32 {
    return order[chunk.x + min(t, chunk.y - 1u)] / p.k * p.cols / 4u;
}

fn store_rows(i: u32, ra: u32, rb: u32, g: f32, u: f32) {
    let pair = order[i];
    if (ra < p.rows) {
        act[pair * p.rows + ra] = g / (1.0 + exp(-g)) * u;
    }
}
{% else %}
{{ declarations(16 if grouped else 4) }}
{# Per pair (decode, short prefill chunks) of an affine format: x from a tile in workgroup memory (matvec.wgsl). #}
{% set tiled = not grouped and fmt.kind == "affine" %}
{% if tiled %}{{ x_tile(64) }}{% endif %}
{% endif %}

{% if rows %}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
{{ grouped_chunk(0, "lid == 0u") }}
    let record = ids[order[chunk.x]] * p.stride;
    let ma = Mat((record + p.gate_w) / WB, (record + p.gate_s) / SB, (record + p.gate_b) / SB, p.cols);
    let mb = Mat((record + p.up_w) / WB, (record + p.up_s) / SB, (record + p.up_b) / SB, p.cols);
    let ra = wid.x * 256u + lid;
    let rb = ra;
{{ rows_passes(fmt) }}
}
{% else %}
@compute @workgroup_size(16, 8)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>{{ subgroup_param() }}) {
{% if grouped %}
{{ grouped_chunk() }}
{% for n in range(8) %}
    let xo{{ n }} = (pair{{ n }} / p.k) * p.cols;
{% endfor %}
    let record = ids[pair0] * p.stride;
    let gate = Mat((record + p.gate_w) / WB, (record + p.gate_s) / SB, (record + p.gate_b) / SB, p.cols);
    let up = Mat((record + p.up_w) / WB, (record + p.up_s) / SB, (record + p.up_b) / SB, p.cols);
    let row0 = wid.x * GROUPS + lid.y;
    let r0 = min(row0, p.rows - 1u);
{{ accumulators(2, 8) }}
{% call for_units(fmt, true) %}
{{ accumulate(fmt, "gate", "r0", 0, 8, "valid", true) }}
{{ accumulate(fmt, "up", "r0", 1, 8, "valid", true) }}
{% endcall %}
{{ reduce(2, 8) }}
    if (lid.x < chunk.y && row0 < p.rows) {
        let g = partial[(lid.y * SLOTS + lid.x) * LANES];
        let u = partial[(lid.y * SLOTS + 8u + lid.x) * LANES];
        act[order[chunk.x + lid.x] * p.rows + row0] = g / (1.0 + exp(-g)) * u;
    }
{% else %}
    let pair = p.first_pair + wid.y;
    let record = ids[pair] * p.stride;
    let gate = Mat((record + p.gate_w) / WB, (record + p.gate_s) / SB, (record + p.gate_b) / SB, p.cols);
    let up = Mat((record + p.up_w) / WB, (record + p.up_s) / SB, (record + p.up_b) / SB, p.cols);
    let xo0 = (pair / p.k) * p.cols;
    let row0 = (wid.x * GROUPS + lid.y) * 2u;
    let r0 = min(row0, p.rows - 1u);
    let r1 = min(row0 + 1u, p.rows - 1u);
{{ accumulators(4, 1) }}
{% if tiled %}
{{ tiled_units(fmt, [["gate", "r0"], ["gate", "r1"], ["up", "r0"], ["up", "r1"]], 4) }}
{% else %}
{% call for_units(fmt) %}
{{ accumulate(fmt, "gate", "r0", 0, 1, "valid") }}
{{ accumulate(fmt, "gate", "r1", 1, 1, "valid") }}
{{ accumulate(fmt, "up", "r0", 2, 1, "valid") }}
{{ accumulate(fmt, "up", "r1", 3, 1, "valid") }}
{% endcall %}
{% endif %}
{{ reduce(4, 1) }}
    if (lid.x < 2u && row0 + lid.x < p.rows) {
        let g = partial[(lid.y * SLOTS + lid.x) * LANES];
        let u = partial[(lid.y * SLOTS + 2u + lid.x) * LANES];
        act[pair * p.rows + row0 + lid.x] = g / (1.0 + exp(-g)) * u;
    }
{% endif %}
}
{% endif %}
