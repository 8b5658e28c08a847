// MoE routing on the GPU, one workgroup of 64 per token: the k experts of largest softmax probability (ties to the
// lower index), renormalized to sum 1 when `renorm`; written sorted by expert index as ids and weights, k per
// token. With `with_shared`, each token's logits row has one more entry, the shared expert's gate, and the token
// gets expert e (the shared expert's record) as a (k+1)-th choice weighted sigmoid(gate). e ≤ 1024, k < 64.
//
// A decode step runs this one workgroup alone, so its time is rounds of latency: every thread loads its logits
// (expert lid + 64·s) into registers at once, and the top k are k rounds of a workgroup arg-max over the logits
// themselves (softmax keeps their order). The largest logit is the softmax's shift m; a choice's weight is
// exp(l - m) over the sum of exp(l - m), over the k chosen when renormalizing (the full sum cancels), else over
// all experts. Each round's arg-max goes{% if subgroups %} through subgroup operations, then one value per subgroup
// in workgroup memory (subgroups are runs of `sg_size` consecutive invocations; no width is assumed){% else %}
// through a tree in workgroup memory{% endif %}; rounds alternate between two halves of that memory, so a round
// needs no barrier after its reads.

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

// Two halves of 64: round r uses half r % 2.
var<workgroup> best_v: array<f32, 128>;
var<workgroup> best_i: array<u32, 128>;
var<workgroup> chosen_v: array<f32, 64>;
var<workgroup> chosen_i: array<u32, 64>;

{% include "common.wgsl" %}

const NONE: f32 = -3.4028235e38;

// (v, i) beats (w, j): the larger value, or the lower index on a tie.
fn beats(v: f32, i: u32, w: f32, j: u32) -> bool {
    return v > w || (v == w && i < j);
}

{% if subgroups %}
// The workgroup's best (v, i) over every thread's candidate, in half `h` (0 or 64): reached by every thread,
// returned to every thread.
fn reduce_best(lid: u32, sg_size: u32, v: f32, i: u32, h: u32) -> vec2<u32> {
    let m = subgroupMax(v);
    let at = subgroupMin(select(0xffffffffu, i, v == m));
    if (lid % sg_size == 0u) {
        best_v[h + lid / sg_size] = m;
        best_i[h + lid / sg_size] = at;
    }
    workgroupBarrier();
    var bv = best_v[h];
    var bi = best_i[h];
    for (var s = 1u; s < 64u / sg_size; s++) {
        if (beats(best_v[h + s], best_i[h + s], bv, bi)) {
            bv = best_v[h + s];
            bi = best_i[h + s];
        }
    }
    return vec2<u32>(bitcast<u32>(bv), bi);
}

// The workgroup's sum of `v` (in half `h`), returned to every thread.
fn reduce_sum(lid: u32, sg_size: u32, v: f32, h: u32) -> f32 {
    let s = subgroupAdd(v);
    if (lid % sg_size == 0u) {
        best_v[h + lid / sg_size] = s;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var j = 0u; j < 64u / sg_size; j++) {
        total += best_v[h + j];
    }
    return total;
}
{% else %}
fn reduce_best(lid: u32, sg_size: u32, v: f32, i: u32, h: u32) -> vec2<u32> {
    best_v[h + lid] = v;
    best_i[h + lid] = i;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s && beats(best_v[h + lid + s], best_i[h + lid + s], best_v[h + lid], best_i[h + lid])) {
            best_v[h + lid] = best_v[h + lid + s];
            best_i[h + lid] = best_i[h + lid + s];
        }
        workgroupBarrier();
    }
    return vec2<u32>(bitcast<u32>(best_v[h]), best_i[h]);
}

fn reduce_sum(lid: u32, sg_size: u32, v: f32, h: u32) -> f32 {
    best_v[h + lid] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) {
            best_v[h + lid] += best_v[h + lid + s];
        }
        workgroupBarrier();
    }
    return best_v[h];
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
    let gate = logits[base + p.e * p.with_shared];
{% for s in range(16) %}
    var l{{ s }} = select(NONE, logits[base + min(lid + {{ 64 * s }}u, p.e - 1u)], lid + {{ 64 * s }}u < p.e);
{% endfor %}
    var m = 0.0;
    var sum = 0.0;
    for (var r = 0u; r < p.k; r++) {
        // This thread's best: slots in order of expert index, so a tie keeps the lower one.
        var v = l0;
        var i = lid;
{% for s in range(1, 16) %}
        if (l{{ s }} > v) {
            v = l{{ s }};
            i = lid + {{ 64 * s }}u;
        }
{% endfor %}
        let best = reduce_best(lid, sg_size, v, select(0xffffffffu, i, v > NONE), (r % 2u) * 64u);
        let bv = bitcast<f32>(best.x);
        if (r == 0u) {
            m = bv;
        }
        // Its owner takes it out of the running.
        if (best.y % 64u == lid) {
{% for s in range(16) %}
            l{{ s }} = select(l{{ s }}, NONE, best.y == lid + {{ 64 * s }}u);
{% endfor %}
        }
        let w = exp(bv - m);
        sum += w;
        if (lid == 0u) {
            chosen_v[r] = w;
            chosen_i[r] = best.y;
        }
    }
    if (p.renorm == 0u) {
        // The softmax's own sum, over every expert (taken ones were chosen: their terms are in `sum`).
        var all = 0.0;
{% for s in range(16) %}
        all += select(exp(l{{ s }} - m), 0.0, l{{ s }} == NONE);
{% endfor %}
        sum = reduce_sum(lid, sg_size, all, (p.k % 2u) * 64u) + sum;
    }
    workgroupBarrier();
    // Thread r writes the r-th choice at its rank by expert index.
    if (lid < p.k) {
        let i = chosen_i[lid];
        var rank = 0u;
        for (var j = 0u; j < p.k; j++) {
            rank += select(0u, 1u, chosen_i[j] < i);
        }
        ids[out + rank] = i;
        weights[out + rank] = chosen_v[lid] / sum;
    }
    if (p.with_shared != 0u && lid == p.k) {
        ids[out + p.k] = p.e;
        weights[out + p.k] = sigmoid(gate);
    }
}
