{# The inputs of a prefill matmul on tensor cores (gemm_f16.wgsl) in f16, packed two to a word: with `fmt`, the
   weights W [rows, cols] of that format, dequantized (w = s·q + b) once per matmul; without, the tokens' x. Each
   weight then serves every token as it is, where dequantizing it inside the tile (a first design, removed) cost as
   much as the FP32 tile's products (docs/PERF.md, "Tensor cores"). #}
{% if fmt %}
// wh[r · cols/2 + c/2] = W's weights (r, c) and (r, c + 1) in f16, W [rows, cols] of format {{ fmt.name }}; a thread
// per word of W, so that neighbouring threads write neighbouring bytes.
struct Params {
    rows: u32,
    cols: u32,
    w: u32,
    s: u32,
    b: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read_write> wh: array<u32>;

{% include "weights.wgsl" %}
{% else %}
// xh[t · cols/2 + c/2] = x's values (t, c) and (t, c + 1) in f16 for t < n / (cols/2); zeros for tokens t ≥ p.t
// (the padding of the last tile of tokens).
struct Params {
    n: u32,
    cols: u32,
    t: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> x: array<vec2<f32>>;
@group(0) @binding(1) var<storage, read_write> xh: array<u32>;
{% endif %}

{% include "common.wgsl" %}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, 64u);
{% if fmt %}
    // Word i of the matrix: word k of unit u of its row (value j of a unit is at bit j · BITS of its words; 2, 4
    // and 8 bits never straddle a word), written as 32 / BITS / 2 consecutive pairs.
    let units = p.cols / 32u;
    if (i >= p.rows * units * BITS) {
        return;
    }
    let row = i / (units * BITS);
    let u = i / BITS % units;
    let k = i % BITS;
    let g = row * (p.cols / GROUP) + u * 32u / GROUP;
    let s = {{ fmt.sdtype }}_at(p.s + g);
    let b = {{ fmt.sdtype }}_at(p.b + g);
    let word = w[p.w + i];
    let out = (row * p.cols + u * 32u + k * (32u / BITS)) / 2u;
    for (var j = 0u; j < 32u / BITS; j += 2u) {
        let lo = s * f32((word >> (j * BITS)) & MASK) + b;
        let hi = s * f32((word >> ((j + 1u) * BITS)) & MASK) + b;
        wh[out + j / 2u] = pack2x16float(vec2<f32>(lo, hi));
    }
{% else %}
    if (i >= p.n) {
        return;
    }
    if (i / (p.cols / 2u) < p.t) {
        xh[i] = pack2x16float(x[i]);
    } else {
        xh[i] = 0u;
    }
{% endif %}
}
