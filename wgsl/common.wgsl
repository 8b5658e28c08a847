// Small helpers shared by several kernels.

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

fn silu(v: f32) -> f32 {
    return v * sigmoid(v);
}

fn softplus(v: f32) -> f32 {
    if (v > 20.0) {
        return v;
    }
    return log(1.0 + exp(v));
}

// Index of this thread in a 1-D launch of `wg`-thread workgroups folded into a 2-D grid (a dimension of a grid
// holds at most 65535 workgroups).
fn flat_index(gid: vec3<u32>, nwg: vec3<u32>, wg: u32) -> u32 {
    return gid.y * nwg.x * wg + gid.x;
}
