//! floe's format: `floe convert` from every checkpoint kind, `floe synth` at real shapes, `floe inspect --verify`,
//! and clear errors for damaged or incomplete models.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use floe::model::{Logits, Model};

fn floe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_floe")).env("FLOE_NO_PROGRESS", "1").args(args).output().unwrap()
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "floe failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn convert(src: &Path, dst: &Path, extra: &[&str]) {
    let mut args = vec!["convert", src.to_str().unwrap(), dst.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(floe(&args));
}

/// Full-prefill logits of the fixture's tokens through a model loaded from `dir`.
fn logits(dir: &Path, tokens: &[u32]) -> Vec<f32> {
    let model = Model::load(dir).unwrap();
    model.forward(tokens, &mut model.new_state().unwrap(), Logits::All).unwrap()
}

fn stderr_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!text.contains("panicked"), "{text}");
    assert_eq!(text.lines().count(), 1, "expected one line: {text}");
    text
}

#[test]
fn mlx_checkpoints_convert_without_requantizing() {
    for name in ["qwen35_moe_mlx_4bit", "qwen35_moe_mlx_2bit"] {
        let src = fixture(name);
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("model");
        convert(&src, &dst, &[]);
        let (tokens, _) = tokens(&src);
        let converted = logits(&dst, &tokens);
        assert_eq!(converted, logits(&src, &tokens), "{name}: converting changed the logits");
        let err = relative_error(&converted, &reference(&src, "full").1);
        assert!(err <= 1e-3, "{name}: {err:.2e} from mlx-lm after conversion");
        // And the prefill-then-decode path through the converted model.
        let model = Model::load(&dst).unwrap();
        let (tokens, prefill) = common::tokens(&src);
        let mut state = model.new_state().unwrap();
        let mut out = model.forward(&tokens[..prefill], &mut state, Logits::All).unwrap();
        for &t in &tokens[prefill..] {
            out.extend(model.forward(&[t], &mut state, Logits::All).unwrap());
        }
        let err = relative_error(&out, &reference(&src, "prefill_decode").1);
        assert!(err <= 1e-3, "{name}: prefill-then-decode {err:.2e} from mlx-lm after conversion");
    }
}

/// HF checkpoints converted at 8 bits against transformers running the same weights quantized and dequantized by
/// MLX. (Against the unquantized logits the tiny random fixtures move by 2–60%: their routing flips. That is the
/// models' sensitivity, not the conversion's error; see docs/FORMAT.md.)
#[test]
fn hf_checkpoints_at_8_bits_match_transformers_on_mlx_quantized_weights() {
    for (name, _) in FIXTURES.iter().filter(|(n, _)| !n.contains("mlx")) {
        let src = fixture(name);
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("model");
        convert(&src, &dst, &["--bits", "8", "--group-size", "64"]);
        let (tokens, _) = tokens(&src);
        let err = relative_error(&logits(&dst, &tokens), &reference(&src, "q8").1);
        println!("{name} at 8 bits: {err:.2e}");
        assert!(err <= 1e-4, "{name} at 8 bits: {err:.2e} from transformers on the same quantized weights");
    }
}

#[test]
fn floe_models_requantize_experts() {
    let tmp = tempfile::tempdir().unwrap();
    let (four, two) = (tmp.path().join("four"), tmp.path().join("two"));
    convert(&fixture("qwen35_moe"), &four, &["--bits", "4", "--group-size", "32"]);
    convert(&four, &two, &["--expert-bits", "2", "--group-size", "32"]);
    let m = floe::format::FloeModel::open(&two).unwrap();
    assert_eq!(m.manifest.experts.components["gate"].quant.unwrap().bits, 2);
    assert_eq!(m.manifest.tensors["layers.0.linear.in_proj_qkv"].quant.unwrap().bits, 4, "dense matrices stay");
    let (tokens, _) = tokens(&fixture("qwen35_moe"));
    assert!(logits(&two, &tokens).iter().all(|v| v.is_finite()));
}

/// Qwen3.5-35B-A3B and 397B-A17B expert records at 4 bits carry exactly Flash-MoE's payloads.
#[test]
fn synth_writes_real_expert_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("synth");
    ok(floe(&["synth", "--preset", "qwen3.5-35b-a3b", "--layers", "1", "--bits", "4", dst.to_str().unwrap()]));
    let m = floe::format::FloeModel::open(&dst).unwrap();
    assert_eq!(m.manifest.experts.record_bytes, 1_769_472);
    assert_eq!(m.manifest.experts.stride, 1_769_472);
    ok(floe(&["inspect", "--verify", dst.to_str().unwrap()]));
    let model = Model::load(&dst).unwrap();
    let out = model.forward(&[1, 2, 3], &mut model.new_state().unwrap(), Logits::Last).unwrap();
    assert!(out.iter().all(|v| v.is_finite()), "activations must stay finite");

    let config = floe::synthetic::preset("qwen3.5-397b-a17b", Some(1)).unwrap();
    let format = floe::quant::QuantFormat::new(4, 64).unwrap();
    let mut random = floe::synthetic::RandomWeights::new(&config, 0, floe::tensor::DType::BF16, Some(format));
    let (_, record) = floe::convert::expert_record(&random.expert(), None).unwrap();
    assert_eq!(record.len(), 7_077_888);
}

#[test]
fn inspect_verify_finds_a_flipped_byte_in_an_expert() {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("model");
    convert(&fixture("qwen35_moe_mlx_4bit"), &dst, &[]);
    ok(floe(&["inspect", "--verify", dst.to_str().unwrap()]));
    let m = floe::format::FloeModel::open(&dst).unwrap();
    let offset = 5 * m.manifest.experts.stride + 100;
    drop(m);
    let path = dst.join("experts/layer_002.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    let line = stderr_line(&floe(&["inspect", "--verify", dst.to_str().unwrap()]));
    assert!(line.contains("checksum mismatch in expert 5 of layer 2"), "{line}");
}

#[test]
fn damaged_or_incomplete_models_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("model");
    convert(&fixture("qwen3_moe"), &dst, &[]);
    let tokens_arg = ["logits", "--model", dst.to_str().unwrap(), "--tokens", "1,2", "--out"];
    let out_file = tmp.path().join("x.npy");
    let run = || floe(&[&tokens_arg[..], &[out_file.to_str().unwrap()]].concat());

    // Converting onto an existing model needs --force.
    let line = stderr_line(&floe(&["convert", fixture("qwen3_moe").to_str().unwrap(), dst.to_str().unwrap()]));
    assert!(line.contains("already exists"), "{line}");

    // An unknown format version.
    let manifest = dst.join("floe.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"version\": 1", "\"version\": 99")).unwrap();
    assert!(stderr_line(&run()).contains("floe format version 99"));
    std::fs::write(&manifest, text).unwrap();
    ok(run());

    // A truncated expert file.
    let layer = dst.join("experts/layer_001.bin");
    let len = std::fs::metadata(&layer).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&layer).unwrap().set_len(len - 1).unwrap();
    assert!(stderr_line(&run()).contains("layer_001.bin is truncated"));

    // What an interrupted conversion leaves is not a model, even once its manifest is written.
    let partial = floe::convert::partial_path(&tmp.path().join("other"));
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::copy(dst.join("floe.json"), partial.join("floe.json")).unwrap();
    let line = stderr_line(&floe(&["logits", "--model", partial.to_str().unwrap(), "--tokens", "1", "--out", "y.npy"]));
    assert!(line.contains("interrupted conversion"), "{line}");
}
