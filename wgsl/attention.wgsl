// Causal attention of t new queries q [t, nh, hd] over the KV cache [len, nkv, hd] (the new tokens' keys and values
// already stored at positions pos0..pos0 + t). Query head h reads kv head h / (nh / nkv). One workgroup per (head,
// query); keys in blocks of 64 with an online softmax, so any context length runs in bounded memory.
// Grid: (nh, t). head_dim ≤ 256.

struct Params {
    t: u32,
    nh: u32,
    nkv: u32,
    hd: u32,
    pos0: u32,
    scale: f32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> keys: array<f32>;
@group(0) @binding(2) var<storage, read> values: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> qs: array<f32, 256>;
var<workgroup> probs: array<f32, 64>;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let i = wid.y;
    let kvh = h / (p.nh / p.nkv);
    let qo = (i * p.nh + h) * p.hd;
    for (var d = lid.x; d < p.hd; d += 64u) {
        qs[d] = q[qo + d];
    }
    workgroupBarrier();
    let visible = p.pos0 + i + 1u;
    var m = -1e30;
    var l = 0.0;
    var o: array<f32, 4>;
    for (var j0 = 0u; j0 < visible; j0 += 64u) {
        let j = j0 + lid.x;
        var score = -1e30;
        if (j < visible) {
            let ko = (j * p.nkv + kvh) * p.hd;
            var acc = 0.0;
            for (var d = 0u; d < p.hd; d++) {
                acc = fma(qs[d], keys[ko + d], acc);
            }
            score = acc * p.scale;
        }
        red[lid.x] = score;
        workgroupBarrier();
        for (var s = 32u; s > 0u; s >>= 1u) {
            if (lid.x < s) {
                red[lid.x] = max(red[lid.x], red[lid.x + s]);
            }
            workgroupBarrier();
        }
        let m_new = max(m, red[0]);
        let correction = exp(m - m_new);
        probs[lid.x] = select(0.0, exp(score - m_new), j < visible);
        workgroupBarrier();
        let n = min(64u, visible - j0);
        var block_sum = 0.0;
        for (var jj = 0u; jj < n; jj++) {
            block_sum += probs[jj];
        }
        l = l * correction + block_sum;
        for (var k = 0u; k < 4u; k++) {
            let d = lid.x + k * 64u;
            if (d < p.hd) {
                var acc = o[k] * correction;
                for (var jj = 0u; jj < n; jj++) {
                    acc = fma(probs[jj], values[((j0 + jj) * p.nkv + kvh) * p.hd + d], acc);
                }
                o[k] = acc;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var k = 0u; k < 4u; k++) {
        let d = lid.x + k * 64u;
        if (d < p.hd) {
            out[qo + d] = o[k] / l;
        }
    }
}
