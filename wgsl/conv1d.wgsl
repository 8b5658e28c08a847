// Gated DeltaNet's causal depthwise conv over time, then SiLU, for t tokens x [t, channels] with the conv state
// [kernel - 1, channels] (the previous inputs); the state is updated to the last kernel - 1 inputs. Tap
// kernel - 1 multiplies the current token. One thread per channel.

struct Params {
    t: u32,
    channels: u32,
    kernel: u32,
}
var<immediate> p: Params;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

{% include "common.wgsl" %}

// Row r of [state; x] for this channel.
fn padded(r: u32, ch: u32) -> f32 {
    if (r < p.kernel - 1u) {
        return state[r * p.channels + ch];
    }
    return x[(r - (p.kernel - 1u)) * p.channels + ch];
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let ch = flat_index(gid, nwg, 64u);
    if (ch >= p.channels) {
        return;
    }
    for (var i = 0u; i < p.t; i++) {
        var sum = 0.0;
        for (var j = 0u; j < p.kernel; j++) {
            sum += weight[ch * p.kernel + j] * padded(i + j, ch);
        }
        y[i * p.channels + ch] = silu(sum);
    }
    // Ascending r reads row t + r > r before it is overwritten.
    for (var r = 0u; r + 1u < p.kernel; r++) {
        state[r * p.channels + ch] = padded(p.t + r, ch);
    }
}
