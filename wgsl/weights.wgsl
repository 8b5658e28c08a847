// Reading weights of format {{ fmt.name }} from the packed buffer `w` (included by the kernels that read weight
// matrices; the includer declares `w: array<u32>`).
//
// A matrix is located by element offsets of its parts, each in its own unit: u32 words for packed values and f32,
// 16-bit halves for bf16 and f16. The matvec kernels work in units of 32 columns (matvec.wgsl):
// every MLX group (32, 64 or 128 values) holds whole units, and a unit of b-bit values is exactly b words.

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
{% endif %}
