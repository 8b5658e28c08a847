// Causal attention of t new queries q [t, nh, hd] over the KV cache [len, nkv, hd] (the new tokens' keys and values
// already stored at positions pos0..pos0 + t), split over the keys (flash decoding): the workgroup for (head h,
// query i, split s) runs an online softmax over keys [s·B·64, (s+1)·B·64) in blocks of 64 and writes its partial
// result (running max m, sum l, unnormalized output o) to `partial`; attention_combine.wgsl merges the splits. So a
// decode step runs nh · splits workgroups instead of nh. Query head h reads kv head h / (nh / nkv). Inner loops
// read 8 values per iteration so their loads are in flight together. Grid: (nh, t, splits). head_dim ≤ 256.

struct Params {
    t: u32,
    nh: u32,
    nkv: u32,
    hd: u32,
    pos0: u32,
    scale: f32,
    /// Blocks of 64 keys per split, and splits.
    blocks: u32,
    splits: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> keys: array<f32>;
@group(0) @binding(2) var<storage, read> values: array<f32>;
// [t, nh, splits, 2 + hd]: m, l, o.
@group(0) @binding(3) var<storage, read_write> partial: array<f32>;

var<workgroup> qs: array<f32, 256>;
var<workgroup> probs: array<f32, 64>;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let i = wid.y;
    let kvh = h / (p.nh / p.nkv);
    let qo = (i * p.nh + h) * p.hd;
    // Zero past head_dim, so the unrolled dot products can read whole groups of 8.
    for (var d = lid.x; d < 256u; d += 64u) {
        qs[d] = select(0.0, q[min(qo + d, qo + p.hd - 1u)], d < p.hd);
    }
    workgroupBarrier();
    let visible = p.pos0 + i + 1u;
    let first = wid.z * p.blocks * 64u;
    let end = min(first + p.blocks * 64u, visible);
    var m = -1e30;
    var l = 0.0;
    var o: array<f32, 4>;
    for (var j0 = first; j0 < end; j0 += 64u) {
        let j = j0 + lid.x;
        var score = -1e30;
        if (j < end) {
            let ko = (j * p.nkv + kvh) * p.hd;
            let ko_last = ko + p.hd - 1u;
            var acc = 0.0;
            for (var d = 0u; d < p.hd; d += 8u) {
{% for i in range(8) %}
                let k{{ i }} = keys[min(ko + d + {{ i }}u, ko_last)];
{% endfor %}
                acc += ((qs[d] * k0 + qs[d + 1u] * k1) + (qs[d + 2u] * k2 + qs[d + 3u] * k3))
                    + ((qs[d + 4u] * k4 + qs[d + 5u] * k5) + (qs[d + 6u] * k6 + qs[d + 7u] * k7));
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
        probs[lid.x] = select(0.0, exp(score - m_new), j < end);
        workgroupBarrier();
        let n = min(64u, end - j0);
        var block_sum = 0.0;
        for (var jj = 0u; jj < n; jj++) {
            block_sum += probs[jj];
        }
        l = l * correction + block_sum;
        for (var k = 0u; k < 4u; k++) {
            let d = lid.x + k * 64u;
            if (d < p.hd) {
                var acc = o[k] * correction;
                // probs is 0 past the split's keys; their rows are clamped to its last one.
                for (var jj = 0u; jj < n; jj += 8u) {
{% for i in range(8) %}
                    let v{{ i }} = values[(min(j0 + jj + {{ i }}u, end - 1u) * p.nkv + kvh) * p.hd + d];
{% endfor %}
                    acc += ((probs[jj] * v0 + probs[jj + 1u] * v1) + (probs[jj + 2u] * v2 + probs[jj + 3u] * v3))
                        + ((probs[jj + 4u] * v4 + probs[jj + 5u] * v5) + (probs[jj + 6u] * v6 + probs[jj + 7u] * v7));
                }
                o[k] = acc;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    let po = ((i * p.nh + h) * p.splits + wid.z) * (p.hd + 2u);
    if (lid.x == 0u) {
        partial[po] = m;
        partial[po + 1u] = l;
    }
    for (var k = 0u; k < 4u; k++) {
        let d = lid.x + k * 64u;
        if (d < p.hd) {
            partial[po + 2u + d] = o[k];
        }
    }
}
