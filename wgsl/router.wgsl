// MoE routing on the GPU, one workgroup per token: softmax over the experts' router logits, the k largest (ties
// to the lower index), renormalized to sum 1 when `renorm`; written sorted by expert index as ids and weights,
// k per token. With `with_shared`, each token's logits row has one more entry, the shared expert's gate, and the
// token gets expert e (the shared expert's record) as a (k+1)-th choice weighted sigmoid(gate). e ≤ 1024, k < 64.
//
// The top k without k sequential rounds: each expert's rank is the number of experts that beat it, counted by its
// own thread over the probabilities in workgroup memory; the k of rank < k are chosen, and each finds its output
// slot by counting the chosen experts of lower index.

struct Params {
    t: u32,
    e: u32,
    k: u32,
    renorm: u32,
    with_shared: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> weights: array<f32>;

var<workgroup> probs: array<f32, 1024>;
var<workgroup> chosen: array<u32, 1024>;
var<workgroup> red: array<f32, 256>;

// The tree reduction of red[0..256] into red[0], by max or by sum. Reached by every thread.
fn reduce(lid: u32, use_max: bool) -> f32 {
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = select(red[lid] + red[lid + s], max(red[lid], red[lid + s]), use_max);
        }
        workgroupBarrier();
    }
    let v = red[0];
    workgroupBarrier();
    return v;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let lid = lid3.x;
    let base = wid.x * (p.e + p.with_shared);
    let out = wid.x * (p.k + p.with_shared);
    // Softmax: max, exp, sum.
    var m = -3.4e38;
    for (var c = lid; c < p.e; c += 256u) {
        m = max(m, logits[base + c]);
    }
    red[lid] = m;
    m = reduce(lid, true);
    var sum = 0.0;
    for (var c = lid; c < p.e; c += 256u) {
        let v = exp(logits[base + c] - m);
        probs[c] = v;
        sum += v;
    }
    red[lid] = sum;
    let total = reduce(lid, false);
    for (var c = lid; c < p.e; c += 256u) {
        probs[c] /= total;
    }
    workgroupBarrier();
    // Ranks: chosen when fewer than k experts beat this one.
    var chosen_sum = 0.0;
    for (var c = lid; c < p.e; c += 256u) {
        let v = probs[c];
        var rank = 0u;
        for (var j = 0u; j < p.e; j++) {
            let o = probs[j];
            rank += select(0u, 1u, o > v || (o == v && j < c));
        }
        chosen[c] = select(0u, 1u, rank < p.k);
        chosen_sum += select(0.0, v, rank < p.k);
    }
    red[lid] = chosen_sum;
    let total_k = reduce(lid, false);
    for (var c = lid; c < p.e; c += 256u) {
        if (chosen[c] == 1u) {
            var slot = 0u;
            for (var j = 0u; j < c; j++) {
                slot += chosen[j];
            }
            ids[out + slot] = c;
            weights[out + slot] = select(probs[c], probs[c] / total_k, p.renorm != 0u);
        }
    }
    if (lid == 0u && p.with_shared != 0u) {
        ids[out + p.k] = p.e;
        weights[out + p.k] = 1.0 / (1.0 + exp(-logits[base + p.e]));
    }
}
