// Causal attention of t new queries q [t, nh, hd] over the KV cache [len, nkv, hd] (the new tokens' keys and values
// already stored at positions pos0..pos0 + t), split over the keys (flash decoding): the workgroup for (head h,
// query i, split s) runs an online softmax over keys [s·B·64, (s+1)·B·64) in blocks of 64 and writes its partial
// result (running max m, sum l, unnormalized output o) to `partial`; attention_combine.wgsl merges the splits. So a
// decode step runs nh · splits workgroups instead of nh. Query head h reads kv head h / (nh / nkv). Grid: (nh, t,
// splits). head_dim ≤ 256 and a multiple of 4.
//
// A decode step's time here is rounds of memory latency, so a block costs one: its keys and values are loaded
// together, as vec4s, before any is used. 256 threads: for the scores, 4 per key (thread 4·s + c reads vec4s c,
// c + 4, .. of key s: 4 threads read 64 contiguous bytes), summed through workgroup memory; for the output, 4
// groups of 64, group g summing keys g, g + 4, .. into dims 4·(lid mod 64).. (thread lid mod 64 < head_dim / 4),
// merged at the end. The softmax's running max is the workgroup's, so every thread rescales by the same factor.

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
// Per thread: a quarter of a score, then (first 64) the block's scores, maxima and sums.
var<workgroup> part: array<f32, 256>;
var<workgroup> red: array<f32, 64>;
var<workgroup> probs: array<f32, 64>;
var<workgroup> outs: array<vec4<f32>, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let i = wid.y;
    let kvh = h / (p.nh / p.nkv);
    let qo = (i * p.nh + h) * p.hd;
    let hd4 = p.hd / 4u;
    // Zero past head_dim, so the unrolled dot products can read whole groups of 16 vectors.
    if (lid.x < 64u) {
        let d = lid.x * 4u;
        let at = min(qo + d, qo + p.hd - 4u);
        qs[lid.x] = select(vec4<f32>(0.0), vec4<f32>(q[at], q[at + 1u], q[at + 2u], q[at + 3u]), d < p.hd);
    }
    workgroupBarrier();
    let visible = p.pos0 + i + 1u;
    let first = wid.z * p.blocks * 64u;
    let end = min(first + p.blocks * 64u, visible);
    // Scores: key `slot` of the block, vec4s quarter + 4·u. Output: keys group + 4·u, dims 4·dim4...
    let slot = lid.x / 4u;
    let quarter = lid.x % 4u;
    let group = lid.x / 64u;
    let dim4 = lid.x % 64u;
    let dim_last = min(dim4, hd4 - 1u);
    var m = -1e30;
    // This thread's key's share of the softmax's sum (threads < 64), and its group's share of the output.
    var l = 0.0;
    var o = vec4<f32>(0.0);
    for (var j0 = first; j0 < end; j0 += 64u) {
        let last = end - 1u;
        let ko = (min(j0 + slot, last) * p.nkv + kvh) * hd4;
{% for u in range(16) %}
        let k{{ u }} = keys[ko + min(quarter + {{ 4 * u }}u, hd4 - 1u)];
{% endfor %}
{% for u in range(16) %}
        let v{{ u }} = values[(min(j0 + group + {{ 4 * u }}u, last) * p.nkv + kvh) * hd4 + dim_last];
{% endfor %}
        var acc = vec4<f32>(0.0);
{% for u in range(16) %}
        acc = fma(qs[min(quarter + {{ 4 * u }}u, 63u)], select(vec4<f32>(0.0), k{{ u }}, quarter + {{ 4 * u }}u < hd4), acc);
{% endfor %}
        part[lid.x] = (acc.x + acc.y) + (acc.z + acc.w);
        workgroupBarrier();
        var score = -1e30;
        if (lid.x < 64u) {
            let b = lid.x * 4u;
            if (j0 + lid.x < end) {
                score = ((part[b] + part[b + 1u]) + (part[b + 2u] + part[b + 3u])) * p.scale;
            }
            red[lid.x] = score;
        }
        workgroupBarrier();
        for (var s = 32u; s > 0u; s >>= 1u) {
            if (lid.x < s) {
                red[lid.x] = max(red[lid.x], red[lid.x + s]);
            }
            workgroupBarrier();
        }
        let m_new = max(m, red[0]);
        let correction = exp(m - m_new);
        if (lid.x < 64u) {
            let e = select(0.0, exp(score - m_new), j0 + lid.x < end);
            probs[lid.x] = e;
            l = l * correction + e;
        }
        workgroupBarrier();
        // probs is 0 past the block's keys; their rows are clamped to its last one.
        var acc_o = o * correction;
{% for u in range(16) %}
        acc_o = fma(vec4<f32>(probs[group + {{ 4 * u }}u]), v{{ u }}, acc_o);
{% endfor %}
        o = acc_o;
        m = m_new;
        workgroupBarrier();
    }
    // Merge: the sum over the first 64 threads' keys, the output over the 4 groups.
    outs[lid.x] = o;
    if (lid.x < 64u) {
        red[lid.x] = l;
    }
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            red[lid.x] += red[lid.x + s];
        }
        workgroupBarrier();
    }
    let po = ((i * p.nh + h) * p.splits + wid.z) * (p.hd + 2u);
    if (lid.x == 0u) {
        partial[po] = m;
        partial[po + 1u] = red[0];
    }
    if (lid.x < hd4) {
        let sum = (outs[lid.x] + outs[lid.x + 64u]) + (outs[lid.x + 128u] + outs[lid.x + 192u]);
        let d = po + 2u + lid.x * 4u;
        partial[d] = sum.x;
        partial[d + 1u] = sum.y;
        partial[d + 2u] = sum.z;
        partial[d + 3u] = sum.w;
    }
}
