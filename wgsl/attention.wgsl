// Causal attention of t new queries q [t, nh, hd] over the KV cache [len, nkv, hd] (the new tokens' keys and values
// already stored at positions pos0..pos0 + t), split over the keys (flash decoding): the workgroup for (head h,
// query i, split s) runs an online softmax over keys [s·B·64, (s+1)·B·64) in blocks of 64 and writes its partial
// result (running max m, sum l, unnormalized output o) to `partial`; attention_combine.wgsl merges the splits. So a
// decode step runs nh · splits workgroups instead of nh. Query head h reads kv head h / (nh / nkv). Keys and values
// are read as vec4s, 16 per loop iteration, so their loads are in flight together (a decode step's time here is
// rounds of memory latency). Grid: (nh, t, splits). head_dim ≤ 256 and a multiple of 4.

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
@group(0) @binding(1) var<storage, read> keys: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> values: array<vec4<f32>>;
// [t, nh, splits, 2 + hd]: m, l, o.
@group(0) @binding(3) var<storage, read_write> partial: array<f32>;

var<workgroup> qs: array<vec4<f32>, 64>;
var<workgroup> probs: array<f32, 64>;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let i = wid.y;
    let kvh = h / (p.nh / p.nkv);
    let qo = (i * p.nh + h) * p.hd;
    let hd4 = p.hd / 4u;
    // Zero past head_dim, so the unrolled dot products can read whole groups of 16 vectors.
    {
        let d = lid.x * 4u;
        let at = min(qo + d, qo + p.hd - 4u);
        qs[lid.x] = select(vec4<f32>(0.0), vec4<f32>(q[at], q[at + 1u], q[at + 2u], q[at + 3u]), d < p.hd);
    }
    workgroupBarrier();
    let visible = p.pos0 + i + 1u;
    let first = wid.z * p.blocks * 64u;
    let end = min(first + p.blocks * 64u, visible);
    var m = -1e30;
    var l = 0.0;
    // This thread's 4 dims of the output (dims 4·lid.x..), when lid.x < hd / 4.
    var o = vec4<f32>(0.0);
    for (var j0 = first; j0 < end; j0 += 64u) {
        let j = j0 + lid.x;
        var score = -1e30;
        if (j < end) {
            let ko = (j * p.nkv + kvh) * hd4;
            let ko_last = ko + hd4 - 1u;
            var acc = vec4<f32>(0.0);
            for (var d = 0u; d < hd4; d += 16u) {
{% for i in range(16) %}
                let k{{ i }} = keys[min(ko + d + {{ i }}u, ko_last)];
{% endfor %}
{% for i in range(16) %}
                acc = fma(qs[d + {{ i }}u], k{{ i }}, acc);
{% endfor %}
            }
            score = (acc.x + acc.y + acc.z + acc.w) * p.scale;
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
        if (lid.x < hd4) {
            var acc = o * correction;
            // probs is 0 past the split's keys; their rows are clamped to its last one.
            for (var jj = 0u; jj < n; jj += 16u) {
{% for i in range(16) %}
                let v{{ i }} = values[(min(j0 + jj + {{ i }}u, end - 1u) * p.nkv + kvh) * hd4 + lid.x];
{% endfor %}
{% for i in range(16) %}
                acc = fma(vec4<f32>(probs[min(jj + {{ i }}u, 63u)]), v{{ i }}, acc);
{% endfor %}
            }
            o = acc;
        }
        m = m_new;
        workgroupBarrier();
    }
    let po = ((i * p.nh + h) * p.splits + wid.z) * (p.hd + 2u);
    if (lid.x == 0u) {
        partial[po] = m;
        partial[po + 1u] = l;
    }
    if (lid.x < hd4) {
        let d = po + 2u + lid.x * 4u;
        partial[d] = o.x;
        partial[d + 1u] = o.y;
        partial[d + 2u] = o.z;
        partial[d + 3u] = o.w;
    }
}
