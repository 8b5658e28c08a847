//! The forward pass on each backend against the reference logits of every fixture (transformers, or mlx-lm for
//! quantized checkpoints): full prefill and prefill-then-decode.

mod common;

use common::*;
use floe::backend::Backend;
use floe::model::{Logits, Model};

/// Logits of every position: the first `prefill` tokens as one batch, then one decode step per token.
fn run<B: Backend>(model: &Model<B>, tokens: &[u32], prefill: usize) -> Vec<f32> {
    let mut state = model.new_state().unwrap();
    let mut out = model.forward(&tokens[..prefill], &mut state, Logits::All).unwrap();
    for &t in &tokens[prefill..] {
        out.extend(model.forward(&[t], &mut state, Logits::All).unwrap());
    }
    out
}

#[test]
fn every_fixture_matches_its_reference() {
    for (name, tolerance) in FIXTURES {
        check_fixture(&Model::load(&fixture(name)).unwrap(), name, tolerance);
    }
}

/// On the GPU: within 1e-3 of the reference (the mlx fixtures at their own 1e-3), and the quantized ones
/// within 1e-4 of the CPU backend. Where the adapter has tensor cores that floe uses (f16 inputs to the prefill's
/// products), also with them, within TENSOR_CORES of the reference.
#[test]
fn every_fixture_matches_its_reference_on_the_gpu() {
    for (name, tolerance) in FIXTURES {
        let Some(gpu) = gpu() else { return };
        gpu.set_tensor_cores(false);
        let host = Model::load(&fixture(name)).unwrap();
        let model = host.to_backend(gpu).unwrap();
        check_fixture(&model, name, tolerance.max(1e-3));
        if name.contains("mlx") {
            let (tokens, prefill) = tokens(&fixture(name));
            let err = relative_error(&run(&model, &tokens, prefill), &run(&host, &tokens, prefill));
            println!("{name}: GPU vs CPU backend, relative error {err:.2e}");
            assert!(err <= 1e-4, "{name}: the GPU differs from the CPU backend by {err:.2e}");
        }
        if model.backend.set_tensor_cores(true) {
            println!("{name}: on tensor cores");
            check_fixture(&model, name, tolerance.max(TENSOR_CORES));
        }
    }
}

/// Logits with the prefill's products on tensor cores (f16 inputs, f32 sums) against the reference.
const TENSOR_CORES: f32 = 1e-2;

fn check_fixture<B: Backend>(model: &Model<B>, name: &str, tolerance: f32) {
    let dir = fixture(name);
    let (tokens, prefill) = tokens(&dir);
    let (shape, full) = reference(&dir, "full");
    assert_eq!(shape, [tokens.len(), model.config.vocab_size]);
    let err = relative_error(&run(model, &tokens, tokens.len()), &full);
    println!("{name}: full prefill, relative error {err:.2e}");
    assert!(err <= tolerance, "{name}: full prefill differs from the reference by {err:.2e}");
    let (_, decode) = reference(&dir, "prefill_decode");
    let err = relative_error(&run(model, &tokens, prefill), &decode);
    println!("{name}: prefill {prefill} then decode, relative error {err:.2e}");
    assert!(err <= tolerance, "{name}: prefill-then-decode differs from the reference by {err:.2e}");
}

#[test]
fn last_position_logits_equal_all_positions_last_row() {
    let dir = fixture("qwen35_moe");
    let model = Model::load(&dir).unwrap();
    let (tokens, _) = tokens(&dir);
    let all = model.forward(&tokens[..9], &mut model.new_state().unwrap(), Logits::All).unwrap();
    let last = model.forward(&tokens[..9], &mut model.new_state().unwrap(), Logits::Last).unwrap();
    assert_eq!(last, all[8 * model.config.vocab_size..]);
}

/// The check can fail: one weight changed by a small amount moves the logits past the tolerance.
#[test]
fn a_perturbed_weight_fails_the_check() {
    let tmp = copy_fixture("qwen35_moe");
    let path = tmp.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let offset = {
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let view = st.tensor("model.layers.3.self_attn.o_proj.weight").unwrap();
        view.data().as_ptr() as usize - bytes.as_ptr() as usize
    };
    let old = f32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap());
    bytes[offset..offset + 4].copy_from_slice(&(old + 0.05).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();

    let model = Model::load(tmp.path()).unwrap();
    let (tokens, _) = tokens(tmp.path());
    let (_, full) = reference(tmp.path(), "full");
    let err = relative_error(&run(&model, &tokens, tokens.len()), &full);
    println!("perturbed o_proj[0,0] by 0.05: relative error {err:.2e}");
    assert!(err > 1e-4, "a perturbed weight went unnoticed (error {err:.2e})");
}

/// The GPU's bind-group cache holds one entry per distinct set of buffers: decoding more tokens, or starting a new
/// sequence after dropping the old one, must not grow it (per-call inputs and dropped states leave it, and the
/// buffer pool hands out the same buffers in the same order each call).
#[test]
fn gpu_caches_do_not_grow_with_tokens_or_sequences() {
    let Some(gpu) = gpu() else { return };
    let model = Model::load(&fixture("qwen35_moe_mlx_4bit")).unwrap().to_backend(gpu).unwrap();
    let decode = |steps: usize| {
        let mut state = model.new_state().unwrap();
        let mut next = model.forward_greedy(&[1, 2, 3], &mut state).unwrap();
        for _ in 0..steps {
            next = model.forward_greedy(&[next], &mut state).unwrap();
        }
        model.backend.cached_bind_groups()
    };
    // The first sequences fill the buffer pool; after them, a sequence 50 times longer, or yet another one, may
    // only differ by a few entries (the pool's order varies), where a leak would add ~20 entries per token.
    let warm = [decode(4), decode(4), decode(4)][2];
    let later = [decode(200), decode(4)];
    println!("bind groups cached: {warm} after three sequences, then {later:?}");
    assert!(later.iter().all(|&n| n <= warm + warm / 10), "the cache grew: {warm} then {later:?}");
}
