// Full attention's query and key heads made ready in one pass, a workgroup per (head, token) over the nh query
// heads then the nkv key heads: each head RMS-normed with its weight (q_norm or k_norm), then rotated on its first
// 2·half dims (NeoX half rotation: pairs (j, j + half)) by the cos/sin table [t, half, 2] (computed on the CPU,
// as rope.rs's twin does). With `gated`, q_proj's rows hold per head [query | output gate] and the gate is copied
// out apart. Grid: (nh + nkv, t).

struct Params {
    t: u32,
    nh: u32,
    nkv: u32,
    hd: u32,
    half: u32,
    eps: f32,
    gated: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> projected: array<f32>;
@group(0) @binding(1) var<storage, read> k_in: array<f32>;
@group(0) @binding(2) var<storage, read> q_norm: array<f32>;
@group(0) @binding(3) var<storage, read> k_norm: array<f32>;
@group(0) @binding(4) var<storage, read> table: array<f32>;
@group(0) @binding(5) var<storage, read_write> q: array<f32>;
@group(0) @binding(6) var<storage, read_write> gate: array<f32>;
@group(0) @binding(7) var<storage, read_write> k: array<f32>;

// A head's values (hd ≤ 256, two per thread), normed.
var<workgroup> head: array<f32, 256>;
var<workgroup> sums: array<f32, 128>;

@compute @workgroup_size(128)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = wid.y;
    let is_q = wid.x < p.nh;
    let h = select(wid.x - p.nh, wid.x, is_q);
    let heads = select(p.nkv, p.nh, is_q);
    // Where the head's values start in its input, and where its output goes.
    let row = select(p.hd, 2u * p.hd, p.gated == 1u);
    let src = select((i * p.nkv + h) * p.hd, (i * p.nh + h) * row, is_q);
    let dst = (i * heads + h) * p.hd;
    var ss = 0.0;
    for (var d = lid.x; d < p.hd; d += 128u) {
        var v: f32;
        if (is_q) {
            v = projected[src + d];
            if (p.gated == 1u) {
                gate[dst + d] = projected[src + p.hd + d];
            }
        } else {
            v = k_in[src + d];
        }
        head[d] = v;
        ss += v * v;
    }
    sums[lid.x] = ss;
    workgroupBarrier();
    for (var s = 64u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            sums[lid.x] += sums[lid.x + s];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(sums[0] / f32(p.hd) + p.eps);
    for (var d = lid.x; d < p.hd; d += 128u) {
        head[d] = head[d] * inv * select(k_norm[d], q_norm[d], is_q);
    }
    workgroupBarrier();
    for (var d = lid.x; d < p.hd; d += 128u) {
        var v = head[d];
        if (d < 2u * p.half) {
            let j = select(d - p.half, d, d < p.half);
            let c = table[(i * p.half + j) * 2u];
            let s = table[(i * p.half + j) * 2u + 1u];
            // (a, b) = (head[j], head[j + half]) → (a·c − b·s, b·c + a·s)
            v = select(head[j + p.half] * c + head[j] * s, head[j] * c - head[j + p.half] * s, d < p.half);
        }
        if (is_q) {
            q[dst + d] = v;
        } else {
            k[dst + d] = v;
        }
    }
}
