// Gated DeltaNet's q and k L2-normalized in place, before the recurrence (wgsl/delta_rule.wgsl) walks the tokens:
// each key head's dk values of q and of k in conv [t, channels] (q of all key heads | k | v) divided by
// sqrt(sum of squares + 1e-6), q also by sqrt(dk). Done here, for all tokens at once, the recurrence keeps no sums
// of its own per token (they were 2 of its 4 barriers per token and 128 reads of workgroup memory per thread).
// A workgroup per head (q heads 0 .. hk, then k heads) and token (gid.y, gid.y + grid.y, ..); dk ≤ 256.
// Grid: (2 · hk, min(t, 65535)).

struct Params {
    t: u32,
    dk: u32,
    channels: u32,
    hk: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read_write> conv: array<f32>;

var<workgroup> squares: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lane: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let head = wid.x;
    let scale = select(1.0, 1.0 / sqrt(f32(p.dk)), head < p.hk);
    for (var i = wid.y; i < p.t; i += nwg.y) {
        let base = i * p.channels + head * p.dk;
        // Rows lane + 64·m of the head, all four loads in flight together.
{% for m in range(4) %}
        let v{{ m }} = select(0.0, conv[base + min(lane + {{ 64 * m }}u, p.dk - 1u)], lane + {{ 64 * m }}u < p.dk);
{% endfor %}
        squares[lane] = fma(v0, v0, fma(v1, v1, fma(v2, v2, v3 * v3)));
        for (var half = 32u; half > 0u; half /= 2u) {
            workgroupBarrier();
            if (lane < half) {
                squares[lane] += squares[lane + half];
            }
        }
        workgroupBarrier();
        let inv = 1.0 / sqrt(squares[0] + 1e-6) * scale;
{% for m in range(4) %}
        if (lane + {{ 64 * m }}u < p.dk) {
            conv[base + lane + {{ 64 * m }}u] = v{{ m }} * inv;
        }
{% endfor %}
        // Before the next token's squares overwrite the sum.
        workgroupBarrier();
    }
}
