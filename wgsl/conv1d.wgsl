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
    if (p.t == 1u && p.kernel == 4u) {
        // A decode step with Qwen3.5's 4 taps: every load issued before any is used (the loop below waits for
        // each in turn, and one workgroup's time is those rounds of latency).
        let s0 = state[ch];
        let s1 = state[p.channels + ch];
        let s2 = state[2u * p.channels + ch];
        let x0 = x[ch];
        let w0 = weight[ch * 4u];
        let w1 = weight[ch * 4u + 1u];
        let w2 = weight[ch * 4u + 2u];
        let w3 = weight[ch * 4u + 3u];
        y[ch] = silu(((w0 * s0 + w1 * s1) + w2 * s2) + w3 * x0);
        state[ch] = s1;
        state[p.channels + ch] = s2;
        state[2u * p.channels + ch] = x0;
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
