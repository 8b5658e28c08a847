"""How far MLX 8-bit quantization alone moves the logits of tiny random models (docs/FORMAT.md, accuracy note).

Builds Qwen3.5-MoE, Qwen3-Next and Qwen3-MoE models at the fixtures' sizes but well conditioned (initializer 0.02,
norms at their defaults, router weights ×64 so top-k routing is decisive), quantizes every matrix as
`floe convert --bits 8` does (mx.quantize, bf16 scales) and also with f32 scales and biases (the 8-bit rounding
alone), then the committed fixtures the same way, and prints max |Δ logits| / max |logits| against the
unquantized model, for group sizes 32 and 64. Run: .venv/bin/python tools/q8_sensitivity.py
"""
import sys, numpy as np, torch, mlx.core as mx
sys.path.insert(0, "tools")
import make_fixtures as mf
from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig, Qwen3NextForCausalLM, Qwen3NextConfig, Qwen3MoeForCausalLM, Qwen3MoeConfig
def qlogits(m, ids, g, scales):
    import copy
    q = copy.deepcopy(m)
    def qdq(w):
        qw, sc, bi = mx.quantize(mx.array(w.numpy()), group_size=g, bits=8)
        sc, bi = sc.astype(scales).astype(mx.float32), bi.astype(scales).astype(mx.float32)
        return torch.tensor(np.array(mx.dequantize(qw, sc, bi, group_size=g, bits=8)))
    with torch.no_grad():
        for n, p in q.named_parameters():
            if p.ndim >= 2 and p.shape[-1] % g == 0 and "conv1d" not in n:
                p.copy_(torch.stack([qdq(x) for x in p]) if p.ndim == 3 else qdq(p))
        return q(ids).logits[0].float().numpy()
common = {**mf.COMMON, "initializer_range": 0.02}
rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25, "mrope_section": [2, 1, 1], "mrope_interleaved": True}
archs = {
  "q35": (Qwen3_5MoeForCausalLM, lambda: Qwen3_5MoeTextConfig(**common, **mf.LINEAR, num_hidden_layers=4, rope_parameters=rope)),
  "next": (Qwen3NextForCausalLM, lambda: Qwen3NextConfig(**common, **mf.LINEAR, num_hidden_layers=4, partial_rotary_factor=0.25)),
  "q3": (Qwen3MoeForCausalLM, lambda: Qwen3MoeConfig(**common, num_hidden_layers=4)),
}
for name, (cls, cfg) in archs.items():
    for scale in (64,):
        for seed in (1, 2):
            torch.manual_seed(seed)
            m = cls._from_config(cfg(), attn_implementation="eager", dtype=torch.float32); m.set_experts_implementation("eager"); m.eval()
            with torch.no_grad():
                for n, p in m.named_parameters():
                    if n.endswith("mlp.gate.weight"): p.mul_(scale)
            ids = torch.randint(0, 128, (1, mf.T), generator=torch.Generator().manual_seed(seed))
            with torch.no_grad(): a = m(ids).logits[0].numpy()
            for g in (32, 64):
                for scales in (mx.bfloat16, mx.float32):
                    b = qlogits(m, ids, g, scales)
                    print(name, "router x", scale, "seed", seed, "g", g, "scales", scales,
                          f"{np.abs(a-b).max()/np.abs(a).max():.2e}", flush=True)
# The committed fixtures themselves (tools/make_fixtures.py's models, same seeds), without any reconditioning.
fixtures = {
  "qwen35_moe": (Qwen3_5MoeForCausalLM, mf.qwen35_config(), 1),
  "qwen3_next": (Qwen3NextForCausalLM, Qwen3NextConfig(**mf.COMMON, **mf.LINEAR, num_hidden_layers=4, norm_topk_prob=True,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}), 2),
  "qwen3_moe": (Qwen3MoeForCausalLM, Qwen3MoeConfig(**mf.COMMON, num_hidden_layers=2, norm_topk_prob=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), 3),
}
for name, (cls, cfg, seed) in fixtures.items():
    m = mf.build(cls, cfg, seed)
    ids = torch.randint(0, cfg.vocab_size, (1, mf.T), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad(): a = m(ids).logits[0].numpy()
    for g in (32, 64):
        for scales in (mx.bfloat16, mx.float32):
            b = qlogits(m, ids, g, scales)
            print("fixture", name, "g", g, "scales", scales, f"{np.abs(a-b).max()/np.abs(a).max():.2e}", flush=True)
