// Row-parallel matrix-vector work: a workgroup of LANES × ROWS threads, LANES threads per output row, each
// summing every LANES-th unit of 32 columns; `reduce_lanes` adds up the SLOTS partial sums each thread keeps
// (tokens, or gate and up) across the lanes of its row. Tree reduction in workgroup memory: no subgroup width is
// assumed. The includer declares `x: array<f32>`, the input vectors.

const LANES: u32 = 32u;
const ROWS: u32 = 4u;

var<workgroup> partial: array<f32, {{ 32 * 4 * slots }}>;

// Leaves the sum of slot k of row y in partial[(y · SLOTS + k) · LANES]. Must be reached by every thread.
fn reduce_lanes(lid: vec3<u32>, acc: ptr<function, array<f32, {{ slots }}>>) {
    for (var k = 0u; k < {{ slots }}u; k++) {
        partial[(lid.y * {{ slots }}u + k) * LANES + lid.x] = (*acc)[k];
    }
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            for (var k = 0u; k < {{ slots }}u; k++) {
                let i = (lid.y * {{ slots }}u + k) * LANES + lid.x;
                partial[i] += partial[i + s];
            }
        }
        workgroupBarrier();
    }
}

fn reduced(lid: vec3<u32>, k: u32) -> f32 {
    return partial[(lid.y * {{ slots }}u + k) * LANES];
}

// Σ w·x over one unit, with x starting at `xo` and `n` valid columns: scale·Σ(q·x) + bias·Σx, so the group's
// bias costs one add per value instead of one multiply-add.
fn dot_unit(q: ptr<function, array<f32, 32>>, sb: vec2<f32>, xo: u32, n: u32) -> f32 {
    var qx = 0.0;
    var xs = 0.0;
    for (var i = 0u; i < 32u; i++) {
        if (i < n) {
            let xv = x[xo + i];
            qx = fma((*q)[i], xv, qx);
            xs += xv;
        }
    }
    return sb.x * qx + sb.y * xs;
}
