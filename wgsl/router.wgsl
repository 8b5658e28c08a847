// MoE routing on the GPU, one workgroup per token: softmax over the experts' router logits, the k largest (ties
// to the lower index), renormalized to sum 1 when `renorm`; written sorted by expert index as ids and weights,
// k per token. With `with_shared`, each token's logits row has one more entry, the shared expert's gate, and the
// token gets expert e (the shared expert's record) as a (k+1)-th choice weighted sigmoid(gate). e ≤ 1024, k < 64.
// Reductions across the workgroup{% if subgroups %} go through subgroup operations, then one value per subgroup in
// workgroup memory (a decode step runs this one workgroup alone, so every barrier counts; no subgroup width is
// assumed: subgroups are runs of consecutive invocations of `sg_size`){% else %} are trees in workgroup memory{% endif %}.

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

// (v, i) beats (w, j): the larger value, or the lower index on a tie.
fn beats(v: f32, i: u32, w: f32, j: u32) -> bool {
    return v > w || (v == w && i < j);
}

{% if subgroups %}
// The workgroup's best (v, i) over every thread's candidate: reached by every thread, returned to every thread.
fn reduce_best(lid: u32, sg_size: u32, v: f32, i: u32) -> vec2<u32> {
    let m = subgroupMax(v);
    let at = subgroupMin(select(0xffffffffu, i, v == m));
    if (lid % sg_size == 0u) {
        best_v[lid / sg_size] = m;
        best_i[lid / sg_size] = at;
    }
    workgroupBarrier();
    var bv = best_v[0];
    var bi = best_i[0];
    for (var s = 1u; s < 64u / sg_size; s++) {
        if (beats(best_v[s], best_i[s], bv, bi)) {
            bv = best_v[s];
            bi = best_i[s];
        }
    }
    workgroupBarrier();
    return vec2<u32>(bitcast<u32>(bv), bi);
}

// The workgroup's sum of `v`, returned to every thread.
fn reduce_sum(lid: u32, sg_size: u32, v: f32) -> f32 {
    let s = subgroupAdd(v);
    if (lid % sg_size == 0u) {
        best_v[lid / sg_size] = s;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var j = 0u; j < 64u / sg_size; j++) {
        total += best_v[j];
    }
    workgroupBarrier();
    return total;
}
{% else %}
fn reduce_best(lid: u32, sg_size: u32, v: f32, i: u32) -> vec2<u32> {
    best_v[lid] = v;
    best_i[lid] = i;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s && beats(best_v[lid + s], best_i[lid + s], best_v[lid], best_i[lid])) {
            best_v[lid] = best_v[lid + s];
            best_i[lid] = best_i[lid + s];
        }
        workgroupBarrier();
    }
    let best = vec2<u32>(bitcast<u32>(best_v[0]), best_i[0]);
    workgroupBarrier();
    return best;
}

fn reduce_sum(lid: u32, sg_size: u32, v: f32) -> f32 {
    best_v[lid] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            best_v[lid] += best_v[lid + s];
        }
        workgroupBarrier();
    }
    let total = best_v[0];
    workgroupBarrier();
    return total;
}
{% endif %}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>{% if subgroups %}, @builtin(subgroup_size) sg_size: u32{% endif %}) {
{% if not subgroups %}
    let sg_size = 1u;
{% endif %}
    let lid = lid3.x;
    let base = wid.x * (p.e + p.with_shared);
    let out = wid.x * (p.k + p.with_shared);
    // Softmax: max, exp, sum.
    var m = -3.4e38;
    for (var c = lid; c < p.e; c += 64u) {
        m = max(m, logits[base + c]);
    }
    m = bitcast<f32>(reduce_best(lid, sg_size, m, 0u).x);
    var sum = 0.0;
    for (var c = lid; c < p.e; c += 64u) {
        let v = exp(logits[base + c] - m);
        probs[c] = v;
        sum += v;
    }
    let total = reduce_sum(lid, sg_size, sum);
    for (var c = lid; c < p.e; c += 64u) {
        probs[c] /= total;
    }
    // Top k: k rounds of a parallel arg-max; a chosen expert is marked taken with -1 (by the thread that owns it).
    for (var r = 0u; r < p.k; r++) {
        var v = -2.0;
        var i = 0xffffffffu;
        for (var c = lid; c < p.e; c += 64u) {
            if (probs[c] > v) {
                v = probs[c];
                i = c;
            }
        }
        let best = reduce_best(lid, sg_size, v, i);
        if (best.y % 64u == lid) {
            probs[best.y] = -1.0;
        }
        if (lid == 0u) {
            chosen_v[r] = bitcast<f32>(best.x);
            chosen_i[r] = best.y;
        }
    }
    workgroupBarrier();
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
