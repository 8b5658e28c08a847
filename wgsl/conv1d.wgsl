// Gated DeltaNet's causal depthwise conv over time, then SiLU, for t tokens x [t, channels] at positions pos …
// pos + t − 1. The conv state is a ring of `kernel` rows of past inputs, the input at position P in row P mod kernel
// (as wgsl/delta_step.wgsl, the decode step, reads and writes it); before the first position, inputs are zero.
// Tap kernel − 1 multiplies the current token. A thread per channel and chunk of 16 tokens (chunks gid.y, gid.y +
// grid.y, ..), a tap's 16 loads in flight together: a 512-token prefill took 280 µs per layer on the H200 with a
// thread per channel, a token at a time. Only the first chunk reads the ring (kernel ≤ 17; longer kernels run with
// grid.y = 1), and its thread also writes it, after its reads. Grid: (ceil(channels / 64), chunks).

struct Params {
    t: u32,
    channels: u32,
    kernel: u32,
    pos: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

{% include "common.wgsl" %}

// The input at position pos − (kernel − 1) + u (u shifted to stay unsigned) for this channel.
fn input(u: u32, ch: u32) -> f32 {
    if (u >= p.kernel - 1u) {
        return x[(u - (p.kernel - 1u)) * p.channels + ch];
    }
    if (p.pos + u < p.kernel - 1u) {
        return 0.0;
    }
    return state[((p.pos + u - (p.kernel - 1u)) % p.kernel) * p.channels + ch];
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let ch = gid.x;
    if (ch >= p.channels) {
        return;
    }
    for (var i0 = gid.y * 16u; i0 < p.t; i0 += nwg.y * 16u) {
{% for r in range(16) %}
        var sum{{ r }} = 0.0;
{% endfor %}
        for (var j = 0u; j < p.kernel; j++) {
            let w = weight[ch * p.kernel + j];
{% for r in range(16) %}
            sum{{ r }} += w * input(min(i0 + {{ r }}u, p.t - 1u) + j, ch);
{% endfor %}
        }
{% for r in range(16) %}
        if (i0 + {{ r }}u < p.t) {
            y[(i0 + {{ r }}u) * p.channels + ch] = silu(sum{{ r }});
        }
{% endfor %}
    }
    if (gid.y != 0u) {
        return;
    }
    // The last inputs into the ring, after every read of it.
    for (var i = max(p.t, p.kernel) - p.kernel; i < p.t; i++) {
        state[((p.pos + i) % p.kernel) * p.channels + ch] = x[i * p.channels + ch];
    }
}
