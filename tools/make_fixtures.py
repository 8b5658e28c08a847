"""Builds floe's test fixtures: tiny random checkpoints of each supported architecture, saved the way real ones
are, with transformers' logits for a fixed token sequence (full prefill, and prefill-then-decode with the cache).
Also builds the tokenizer of the built-in default model.

    python3 -m venv .venv && .venv/bin/pip install -r tools/requirements.txt
    .venv/bin/python tools/make_fixtures.py            # writes tests/fixtures/ and assets/default-model/

Everything is seeded: running it twice gives the same files. Tests never run this; they read its committed output.
"""
import json
import os
import shutil

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import (Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig, Qwen3MoeConfig, Qwen3MoeForCausalLM,
                          Qwen3NextConfig, Qwen3NextForCausalLM)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
T, PREFILL = 70, 61   # 70 tokens crosses HF's 64-token delta-rule chunk; 61 + 9 single-token decode steps

COMMON = dict(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
              num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, rms_norm_eps=1e-6,
              max_position_embeddings=256, initializer_range=0.08, tie_word_embeddings=False)
LINEAR = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
              linear_conv_kernel_dim=4, shared_expert_intermediate_size=48)


def qwen35_config(layers=4):
    return Qwen3_5MoeTextConfig(**COMMON, **LINEAR, num_hidden_layers=layers, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
        "mrope_section": [2, 1, 1], "mrope_interleaved": True})


def build(model_cls, cfg, seed):
    torch.manual_seed(seed)
    m = model_cls._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    m.set_experts_implementation("eager")
    with torch.no_grad():  # their initial values (0, 1, log U) would hide convention bugs
        for n, p in m.named_parameters():
            if n.endswith("norm.weight") or "A_log" in n or "dt_bias" in n:
                p.copy_(torch.randn_like(p) * 0.3)
    return m.eval()


def reference_logits(m, ids):
    """[T, V] logits of one full forward, and of PREFILL tokens then single-token steps through the cache."""
    with torch.no_grad():
        full = m(ids).logits[0]
        out = m(ids[:, :PREFILL], use_cache=True)
        rows, cache = [out.logits[0]], out.past_key_values
        for t in range(PREFILL, T):
            out = m(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            rows.append(out.logits[0])
            cache = out.past_key_values
    return full.float().numpy(), torch.cat(rows).float().numpy()


def quantized_8bit_logits(m, ids):
    """Logits of `m` after every matrix floe's `convert --bits 8 --group-size 64` quantizes went through
    mx.quantize/dequantize (bf16 scales and biases, as floe stores them). floe's converted model must match these
    closely: tiny random models are far too sensitive (routing flips) to compare with the unquantized logits."""
    import copy
    import mlx.core as mx
    q = copy.deepcopy(m)

    def qdq(w):
        qw, sc, bi = mx.quantize(mx.array(w.numpy()), group_size=64, bits=8)
        sc, bi = sc.astype(mx.bfloat16).astype(mx.float32), bi.astype(mx.bfloat16).astype(mx.float32)
        return torch.tensor(np.array(mx.dequantize(qw, sc, bi, group_size=64, bits=8)))

    with torch.no_grad():
        for n, p in q.named_parameters():
            if p.ndim >= 2 and p.shape[-1] % 64 == 0 and "conv1d" not in n:
                p.copy_(torch.stack([qdq(x) for x in p]) if p.ndim == 3 else qdq(p))
        return q(ids).logits[0].float().numpy()


def write_fixture(name, m, ids, config, tensors_by_file, index=None):
    d = os.path.join(FIXTURES, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    full, decode = reference_logits(m, ids)
    np.save(os.path.join(d, "logits_full.npy"), full)
    np.save(os.path.join(d, "logits_prefill_decode.npy"), decode)
    np.save(os.path.join(d, "logits_q8.npy"), quantized_8bit_logits(m, ids))
    with open(os.path.join(d, "tokens.json"), "w") as f:
        json.dump({"tokens": ids[0].tolist(), "prefill": PREFILL}, f)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for file, tensors in tensors_by_file.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, file), metadata={"format": "pt"})
    if index is not None:
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
    print(f"{name}: |logits| max {np.abs(full).max():.3f}, full vs decode path {np.abs(full - decode).max():.2e}")


def save_pretrained_fixture(name, model_cls, cfg, seed):
    """The layout transformers' save_pretrained writes: prefix `model.`, per-expert tensors, float32."""
    m = build(model_cls, cfg, seed)
    tmp = os.path.join(FIXTURES, f".{name}.tmp")
    m.save_pretrained(tmp)
    from safetensors.torch import load_file
    tensors = load_file(os.path.join(tmp, "model.safetensors"))
    with open(os.path.join(tmp, "config.json")) as f:
        config = json.load(f)
    shutil.rmtree(tmp)
    ids = torch.randint(0, cfg.vocab_size, (1, T), generator=torch.Generator().manual_seed(seed))
    write_fixture(name, m, ids, config, {"model.safetensors": tensors})


def official_fixture():
    """The layout of Qwen's own releases: nested text_config, prefix `model.language_model.`, fused 3-D experts,
    bf16 weights in two shards with an index, `lm_head.weight` at the top level, plus `mtp.*` and `model.visual.*`
    tensors that must be ignored. The reference runs the bf16-rounded weights in float32."""
    cfg = qwen35_config()
    m = build(Qwen3_5MoeForCausalLM, cfg, seed=4)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    sd = {k: v.to(torch.bfloat16) for k, v in m.state_dict().items()}
    # In memory transformers already holds the experts fused as released: gate_up_proj [E, 2I, H] (gate rows
    # first) and down_proj [E, H, I]; only the prefix differs.
    out = {k if k == "lm_head.weight" else "model.language_model." + k[len("model."):]: v for k, v in sd.items()}
    g = torch.Generator().manual_seed(5)
    out["mtp.fc.weight"] = torch.randn(64, 128, generator=g).to(torch.bfloat16)
    out["model.visual.patch_embed.proj.weight"] = torch.randn(16, 3, 2, 2, generator=g).to(torch.bfloat16)
    names = sorted(out)
    shards = {"model-00001-of-00002.safetensors": {k: out[k] for k in names[:len(names) // 2]},
              "model-00002-of-00002.safetensors": {k: out[k] for k in names[len(names) // 2:]}}
    index = {"metadata": {"total_size": sum(v.numel() * 2 for v in out.values())},
             "weight_map": {k: f for f, ts in shards.items() for k in ts}}
    text = cfg.to_dict()
    text["dtype"] = "bfloat16"
    config = {"architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
              "text_config": text, "vision_config": {"depth": 1, "hidden_size": 16}, "image_token_id": 125,
              "tie_word_embeddings": False, "transformers_version": transformers.__version__}
    ids = torch.randint(0, cfg.vocab_size, (1, T), generator=torch.Generator().manual_seed(4))
    write_fixture("qwen35_moe_official", m, ids, config, shards, index)


def default_tokenizer():
    """A small byte-level BPE with Qwen3.5's pre-tokenizer regex and chat special tokens, for the built-in model."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<think>", "</think>"]
    trainer = trainers.BpeTrainer(vocab_size=512 - len(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenizer_corpus.txt")).read()
    tok.train_from_iterator(corpus.split("\n\n"), trainer)
    tok.add_special_tokens(specials)
    d = os.path.join(ROOT, "assets", "default-model")
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    print(f"default tokenizer: {tok.get_vocab_size()} tokens")


def mlx_fixture(name, bits, group_size):
    """An mlx-community style quantized checkpoint, converted by mlx-lm from the official-layout fixture, with
    mlx-lm's logits computed after casting every float parameter to float32 (mlx would otherwise run in bf16)."""
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm import convert
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.utils import load_model
    src = os.path.join(FIXTURES, f".{name}.src")
    d = os.path.join(FIXTURES, name)
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(os.path.join(FIXTURES, "qwen35_moe_official"), src)
    shutil.copy(os.path.join(ROOT, "assets", "default-model", "tokenizer.json"), src)
    with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>"}, f)
    convert(src, mlx_path=d, quantize=True, q_group_size=group_size, q_bits=bits)
    shutil.copy(os.path.join(src, "tokens.json"), d)
    shutil.rmtree(src)
    for extra in ["README.md", "tokenizer.json", "tokenizer_config.json"]:
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))
    model, _ = load_model(__import__("pathlib").Path(d))
    model.update(tree_map(lambda p: p.astype(mx.float32) if mx.issubdtype(p.dtype, mx.floating) else p,
                          model.parameters()))
    ids = json.load(open(os.path.join(d, "tokens.json")))["tokens"]
    full = np.array(model(mx.array(ids)[None])[0].astype(mx.float32))
    cache = make_prompt_cache(model)
    rows = [np.array(model(mx.array(ids[:PREFILL])[None], cache=cache)[0].astype(mx.float32))]
    for t in ids[PREFILL:]:
        rows.append(np.array(model(mx.array([t])[None], cache=cache)[0].astype(mx.float32)))
    np.save(os.path.join(d, "logits_full.npy"), full)
    np.save(os.path.join(d, "logits_prefill_decode.npy"), np.concatenate(rows))
    print(f"{name}: |logits| max {np.abs(full).max():.3f}")


def quant_vectors():
    """mx.quantize outputs for every supported bits × group size, from float32 and bfloat16 inputs. Rows include
    the edge cases: a constant row (max = min), zeros, and a row whose largest magnitude is negative."""
    import mlx.core as mx
    from safetensors.numpy import save_file as save_np
    rng = np.random.default_rng(7)
    out = {}
    for bits in [2, 3, 4, 6, 8]:
        for group in [32, 64, 128]:
            w = (rng.standard_normal((6, 384)) * rng.uniform(0.01, 2.0, (6, 1))).astype(np.float32)
            w[1] = 0.37
            w[2] = 0.0
            w[3] -= 4.0
            for dtype, name in [(mx.float32, "f32"), (mx.bfloat16, "bf16")]:
                x = mx.array(w).astype(dtype)
                q, sc, bi = mx.quantize(x, group_size=group, bits=bits)
                key = f"{bits}_{group}_{name}"
                # bf16 values travel as their uint16 bit patterns (numpy has no bfloat16)
                as_bits = (lambda a: np.array(a.astype(mx.float32)).view(np.uint32).__rshift__(16).astype(np.uint16)) \
                    if name == "bf16" else (lambda a: np.array(a))
                out[f"input_{key}"] = as_bits(x)
                out[f"packed_{key}"] = np.array(q)
                out[f"scales_{key}"] = as_bits(sc)
                out[f"biases_{key}"] = as_bits(bi)
    d = os.path.join(FIXTURES, "mlx_quant")
    os.makedirs(d, exist_ok=True)
    save_np(out, os.path.join(d, "vectors.safetensors"))
    print(f"mlx_quant: {len(out) // 4} cases")


def main():
    print("transformers", transformers.__version__, "torch", torch.__version__)
    torch.set_num_threads(2)
    save_pretrained_fixture("qwen35_moe", Qwen3_5MoeForCausalLM, qwen35_config(), seed=1)
    next_cfg = Qwen3NextConfig(**COMMON, **LINEAR, num_hidden_layers=4, norm_topk_prob=True, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25})
    save_pretrained_fixture("qwen3_next", Qwen3NextForCausalLM, next_cfg, seed=2)
    moe_cfg = Qwen3MoeConfig(**COMMON, num_hidden_layers=2, norm_topk_prob=False,
                             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    save_pretrained_fixture("qwen3_moe", Qwen3MoeForCausalLM, moe_cfg, seed=3)
    official_fixture()
    default_tokenizer()
    mlx_fixture("qwen35_moe_mlx_4bit", bits=4, group_size=64)
    mlx_fixture("qwen35_moe_mlx_2bit", bits=2, group_size=32)
    quant_vectors()


if __name__ == "__main__":
    main()
