// The index of the largest of n values (the lower index on a tie), so greedy decoding reads back 4 bytes instead
// of the logits. One workgroup.

struct Params {
    n: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> result: array<u32>;

var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var v = -3.4e38;
    var i = 0u;
    for (var c = lid; c < p.n; c += 256u) {
        if (x[c] > v) {
            v = x[c];
            i = c;
        }
    }
    best_v[lid] = v;
    best_i[lid] = i;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ov = best_v[lid + s];
            let oi = best_i[lid + s];
            if (ov > best_v[lid] || (ov == best_v[lid] && oi < best_i[lid])) {
                best_v[lid] = ov;
                best_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        result[0] = best_i[0];
    }
}
