// Orders the (token, slot) pairs first .. first + n of a layer by expert, for the grouped expert kernels
// (expert_gate_up and expert_down with `grouped` or `rows`): `order` lists the pairs expert by expert, and
// chunks[c] = (start in `order`, count ≤ size) covers `size` of one expert's pairs; chunks past the last are
// (0, 0). Which of an expert's pairs share a chunk varies from run to run, but every pair's result is computed
// alone, so outputs do not. `work` is scratch for 2 · experts values (expert ids are < experts). Grid: one
// workgroup.

struct Params {
    n: u32,
    first: u32,
    experts: u32,
    max_chunks: u32,
    size: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read_write> order: array<u32>;
@group(0) @binding(2) var<storage, read_write> chunks: array<vec2<u32>>;
// work[e]: pairs of expert e (then a cursor); work[experts + e]: where its pairs start in `order`.
@group(0) @binding(3) var<storage, read_write> work: array<atomic<u32>>;

const THREADS: u32 = 256u;
var<workgroup> sums: array<vec2<u32>, THREADS>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    // Each thread owns a run of experts for the prefix sums.
    let per = (p.experts + THREADS - 1u) / THREADS;
    let e0 = min(lid * per, p.experts);
    let e1 = min(e0 + per, p.experts);
    for (var e = e0; e < e1; e++) {
        atomicStore(&work[e], 0u);
    }
    storageBarrier();
    for (var i = lid; i < p.n; i += THREADS) {
        let e = ids[p.first + i];
        if (e < p.experts) {
            atomicAdd(&work[e], 1u);
        }
    }
    storageBarrier();
    // (pairs, chunks) of this thread's experts, then an inclusive scan over the threads.
    var own = vec2<u32>(0u);
    for (var e = e0; e < e1; e++) {
        let c = atomicLoad(&work[e]);
        own += vec2<u32>(c, (c + p.size - 1u) / p.size);
    }
    sums[lid] = own;
    workgroupBarrier();
    for (var offset = 1u; offset < THREADS; offset <<= 1u) {
        let before = select(vec2<u32>(0u), sums[max(lid, offset) - offset], lid >= offset);
        workgroupBarrier();
        sums[lid] += before;
        workgroupBarrier();
    }
    var at = sums[lid] - own;
    let total = sums[THREADS - 1u].y;
    for (var e = e0; e < e1; e++) {
        let c = atomicLoad(&work[e]);
        atomicStore(&work[p.experts + e], at.x);
        for (var j = 0u; j * p.size < c; j++) {
            chunks[at.y + j] = vec2<u32>(at.x + j * p.size, min(p.size, c - j * p.size));
        }
        at += vec2<u32>(c, (c + p.size - 1u) / p.size);
        atomicStore(&work[e], 0u);
    }
    for (var c = total + lid; c < p.max_chunks; c += THREADS) {
        chunks[c] = vec2<u32>(0u);
    }
    storageBarrier();
    for (var i = lid; i < p.n; i += THREADS) {
        let e = ids[p.first + i];
        if (e < p.experts) {
            order[atomicLoad(&work[p.experts + e]) + atomicAdd(&work[e], 1u)] = p.first + i;
        }
    }
}
