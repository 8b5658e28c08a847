// y[i, c] = table[tokens[i], c] for a table of format {{ fmt.name }} (dequantized), for the tokens whose rows this
// piece of the table holds (rows first.. first + rows; a table larger than one binding is split by rows).
// Grid: (ceil(cols / 64), t).

struct Params {
    cols: u32,
    w: u32,
    s: u32,
    b: u32,
    first: u32,
    rows: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> w: array<u32>;
@group(0) @binding(1) var<storage, read> tokens: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

{% include "weights.wgsl" %}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let row = tokens[gid.y] - p.first;
    if (c < p.cols && tokens[gid.y] >= p.first && row < p.rows) {
        y[gid.y * p.cols + c] = weight_at(Mat(p.w, p.s, p.b, p.cols), row, c);
    }
}
