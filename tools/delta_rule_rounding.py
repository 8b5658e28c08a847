"""How far f32 rounding alone moves the Gated DeltaNet's output on the random inputs of tests/kernels.rs's
`gated_delta_net_carries_its_states` (same shapes, ranges and token counts): the layer in float32 against float64,
with the error measured relative to the largest output (as `check` does) and relative to max(largest output, 1)
(as that test does: the output is RMS-normalized per value head, so its natural scale is about 1, and a head whose
Sᵀq is tiny keeps only rounding). Needs NumPy.

    python3 tools/delta_rule_rounding.py [SEEDS]       # 1,000 seeds per shape unless given
"""
import sys

import numpy as np

SHAPES = [(1, 1, 8, 8, 2), (2, 4, 16, 24, 4), (1, 1, 40, 9, 3), (1, 2, 16, 300, 4)]
STEPS = [1, 2, 1, 7, 1, 1, 1, 1, 3, 1, 37, 1]


def inputs(seed, hk, hv, dk, dv, kernel):
    r = np.random.default_rng(seed)
    channels = 2 * hk * dk + hv * dv
    weights = (r.uniform(-0.5, 0.5, (channels, kernel)), r.uniform(-1, 1, hv), r.uniform(-1, 1, hv), r.uniform(-1.5, 1.5, dv))
    steps = [(r.uniform(-1, 1, (t, channels)), r.uniform(-2, 2, (t, hv * dv)), r.uniform(-2, 2, (t, hv)), r.uniform(-2, 2, (t, hv))) for t in STEPS]
    return weights, steps


def layer(weights, steps, dtype, hk, hv, dk, dv, kernel):
    """conv1d + SiLU, the delta rule token by token, the gated RMSNorm: src/cpu.rs's gated_delta_net."""
    conv_w, a_log, dt_bias, norm = (np.asarray(w, dtype) for w in weights)
    kd, channels = hk * dk, 2 * hk * dk + hv * dv
    s = np.zeros((hv, dk, dv), dtype)
    conv_state = np.zeros((kernel - 1, channels), dtype)
    outputs = []
    for x, z, b, a in steps:
        x, z, b, a = (np.asarray(v, dtype) for v in (x, z, b, a))
        t = len(x)
        padded = np.concatenate([conv_state, x])
        conv_state = padded[t:]
        conv = np.stack([(padded[i:i + kernel] * conv_w.T).sum(0) for i in range(t)])
        conv = conv / (1 + np.exp(-conv))
        o = np.zeros((t, hv, dv), dtype)
        for i in range(t):
            q, k, v = conv[i, :kd].reshape(hk, dk), conv[i, kd:2 * kd].reshape(hk, dk), conv[i, 2 * kd:].reshape(hv, dv)
            q = q / np.sqrt((q * q).sum(1, keepdims=True) + dtype(1e-6)) / np.sqrt(dtype(dk))
            k = k / np.sqrt((k * k).sum(1, keepdims=True) + dtype(1e-6))
            for h in range(hv):
                kh = h // (hv // hk)
                beta = 1 / (1 + np.exp(-b[i, h]))
                s[h] *= np.exp(-np.exp(a_log[h]) * np.log1p(np.exp(a[i, h] + dt_bias[h])))
                s[h] += np.outer(k[kh], (v[h] - k[kh] @ s[h]) * beta)
                o[i, h] = q[kh] @ s[h]
        o = o / np.sqrt((o * o).mean(-1, keepdims=True) + dtype(1e-6)) * norm
        outputs.append(o.reshape(t, hv * dv) * (z / (1 + np.exp(-z))))
    return outputs


def main():
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    for shape in SHAPES:
        own, floored = [], []
        for seed in range(seeds):
            weights, steps = inputs(seed, *shape)
            for ours, exact in zip(layer(weights, steps, np.float32, *shape), layer(weights, steps, np.float64, *shape)):
                err, largest = np.abs(ours - exact).max(), np.abs(exact).max()
                own.append(err / largest)
                floored.append(err / max(largest, 1.0))
        print(f"hk,hv,dk,dv,kernel={shape}: {len(own)} checks; relative to the largest output max {max(own):.2e}, "
              f"relative to max(largest, 1) max {max(floored):.2e}")


if __name__ == "__main__":
    main()
