// Reading weights of format {{ fmt.name }} from the packed buffer `w` (included by the kernels that read weight
// matrices; the includer declares `w: array<u32>`).
//
// A matrix is located by element offsets of its parts, each in its own unit: u32 words for packed values and f32,
// 16-bit halves for bf16 and f16. Work is split in units of 32 columns: every MLX group (32, 64 or 128 values)
// holds whole units, and a unit of b-bit values is exactly b words.

struct Mat {
    w: u32,
    s: u32,
    b: u32,
    cols: u32,
}

fn half_at(h: u32) -> u32 {
    let word = w[h >> 1u];
    return select(word & 0xffffu, word >> 16u, (h & 1u) == 1u);
}

fn bf16_at(h: u32) -> f32 {
    return bitcast<f32>(half_at(h) << 16u);
}

fn f16_at(h: u32) -> f32 {
    return unpack2x16float(half_at(h)).x;
}

fn f32_at(i: u32) -> f32 {
    return bitcast<f32>(w[i]);
}
{% if fmt.kind == "dense" %}
// Element (row, c) of the matrix.
fn weight_at(m: Mat, row: u32, c: u32) -> f32 {
    return {{ fmt.dtype }}_at(m.w + row * m.cols + c);
}

// The weights of `row` in columns [32·unit, 32·unit + 32) into `q` (zeros past the end of the row); returns the
// (scale, bias) that turn `q` into weights: (1, 0) for a dense matrix.
fn weight_unit(m: Mat, row: u32, unit: u32, q: ptr<function, array<f32, 32>>) -> vec2<f32> {
    let c0 = unit * 32u;
    let n = min(32u, m.cols - c0);
    let base = m.w + row * m.cols + c0;
    for (var i = 0u; i < 32u; i++) {
        (*q)[i] = 0.0;
        if (i < n) {
            (*q)[i] = {{ fmt.dtype }}_at(base + i);
        }
    }
    return vec2<f32>(1.0, 0.0);
}
{% else %}
const BITS: u32 = {{ fmt.bits }}u;
const GROUP: u32 = {{ fmt.group }}u;
const MASK: u32 = {{ (2 ** fmt.bits) - 1 }}u;

// Element (row, c): scale · q + bias of its group. Values are a bit stream, low bits first.
fn weight_at(m: Mat, row: u32, c: u32) -> f32 {
    let g = row * (m.cols / GROUP) + c / GROUP;
    let first = m.w + row * (m.cols / 32u * BITS);
    let bit = c * BITS;
    var v = w[first + bit / 32u] >> (bit % 32u);
    if (bit % 32u + BITS > 32u) {
        v |= w[first + bit / 32u + 1u] << (32u - bit % 32u);
    }
    return {{ fmt.sdtype }}_at(m.s + g) * f32(v & MASK) + {{ fmt.sdtype }}_at(m.b + g);
}

// The 32 quantized values of `row` in columns [32·unit, 32·unit + 32) into `q`, unrolled; returns their group's
// (scale, bias).
fn weight_unit(m: Mat, row: u32, unit: u32, q: ptr<function, array<f32, 32>>) -> vec2<f32> {
    let base = m.w + row * (m.cols / 32u * BITS) + unit * BITS;
{% for k in range(fmt.bits) %}
    let w{{ k }} = w[base + {{ k }}u];
{% endfor %}
{% for i in range(32) %}
    {% set bit = i * fmt.bits %}
    {% set word = bit // 32 %}
    {% set shift = bit % 32 %}
{% if shift + fmt.bits <= 32 %}
    (*q)[{{ i }}] = f32((w{{ word }} >> {{ shift }}u) & MASK);
{% else %}
    (*q)[{{ i }}] = f32(((w{{ word }} >> {{ shift }}u) | (w{{ word + 1 }} << {{ 32 - shift }}u)) & MASK);
{% endif %}
{% endfor %}
    let g = row * (m.cols / GROUP) + unit * 32u / GROUP;
    return vec2<f32>({{ fmt.sdtype }}_at(m.s + g), {{ fmt.sdtype }}_at(m.b + g));
}
{% endif %}
