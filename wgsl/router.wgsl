// MoE routing on the GPU, one workgroup per token: softmax over the experts' router logits, the k largest (ties
// to the lower index), renormalized to sum 1 when `renorm`; written sorted by expert index as ids and weights,
// k per token. With `with_shared`, each token's logits row has one more entry, the shared expert's gate, and the
// token gets expert e (the shared expert's record) as a (k+1)-th choice weighted sigmoid(gate). e ≤ 1024, k < 64.

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
var<workgroup> best_v: array<f32, 64>;
var<workgroup> best_i: array<u32, 64>;
var<workgroup> chosen_v: array<f32, 64>;
var<workgroup> chosen_i: array<u32, 64>;

// Reduces best_v/best_i to slot 0: the larger value, or the lower index on a tie.
fn reduce_best(lid: u32) {
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let v = best_v[lid + s];
            let i = best_i[lid + s];
            if (v > best_v[lid] || (v == best_v[lid] && i < best_i[lid])) {
                best_v[lid] = v;
                best_i[lid] = i;
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let lid = lid3.x;
    let base = wid.x * (p.e + p.with_shared);
    let out = wid.x * (p.k + p.with_shared);
    // Softmax: max, exp, sum.
    var m = -3.4e38;
    for (var c = lid; c < p.e; c += 64u) {
        m = max(m, logits[base + c]);
    }
    best_v[lid] = m;
    best_i[lid] = 0u;
    reduce_best(lid);
    m = best_v[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var c = lid; c < p.e; c += 64u) {
        let v = exp(logits[base + c] - m);
        probs[c] = v;
        sum += v;
    }
    best_v[lid] = sum;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            best_v[lid] += best_v[lid + s];
        }
        workgroupBarrier();
    }
    let total = best_v[0];
    workgroupBarrier();
    for (var c = lid; c < p.e; c += 64u) {
        probs[c] /= total;
    }
    // Top k: k rounds of a parallel arg-max; a chosen expert is marked taken with -1.
    for (var r = 0u; r < p.k; r++) {
        var v = -2.0;
        var i = 0u;
        for (var c = lid; c < p.e; c += 64u) {
            if (probs[c] > v) {
                v = probs[c];
                i = c;
            }
        }
        best_v[lid] = v;
        best_i[lid] = i;
        reduce_best(lid);
        if (lid == 0u) {
            chosen_v[r] = best_v[0];
            chosen_i[r] = best_i[0];
            probs[best_i[0]] = -1.0;
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var total_k = 0.0;
        for (var r = 0u; r < p.k; r++) {
            total_k += chosen_v[r];
        }
        // Insertion sort by expert index (k is small).
        for (var r = 1u; r < p.k; r++) {
            let ci = chosen_i[r];
            let cv = chosen_v[r];
            var j = r;
            while (j > 0u && chosen_i[j - 1u] > ci) {
                chosen_i[j] = chosen_i[j - 1u];
                chosen_v[j] = chosen_v[j - 1u];
                j--;
            }
            chosen_i[j] = ci;
            chosen_v[j] = cv;
        }
        for (var r = 0u; r < p.k; r++) {
            ids[out + r] = chosen_i[r];
            weights[out + r] = select(chosen_v[r], chosen_v[r] / total_k, p.renorm != 0u);
        }
        if (p.with_shared != 0u) {
            ids[out + p.k] = p.e;
            weights[out + p.k] = 1.0 / (1.0 + exp(-logits[base + p.e]));
        }
    }
}
