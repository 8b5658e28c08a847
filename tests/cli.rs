//! The `floe` binary as users and scripts meet it: `floe logits` parity, generation, and one clear error line
//! (no panic, non-zero exit) for each kind of bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn floe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_floe")).args(args).output().unwrap()
}

/// Asserts the command failed with exactly one `error: …` line containing `expected`.
fn assert_clean_error(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(expected), "expected `{expected}` in: {stderr}");
}

fn logits_cmd(model: &Path, tokens: &str, out: &Path) -> Output {
    floe(&["logits", "--model", model.to_str().unwrap(), "--tokens", tokens, "--out", out.to_str().unwrap()])
}

#[test]
fn logits_command_matches_transformers() {
    let dir = fixture("qwen35_moe_official");
    let (tokens, prefill) = tokens(&dir);
    let list: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("logits.npy");
    let run = floe(&[
        "logits", "--model", dir.to_str().unwrap(), "--tokens", &list.join(","), "--prefill", &prefill.to_string(),
        "--backend", "cpu", "--out", out.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let (shape, ours) = floe::npy::read_f32(&out).unwrap();
    let (ref_shape, reference) = reference(&dir, "prefill_decode");
    assert_eq!(shape, ref_shape);
    let err = relative_error(&ours, &reference);
    assert!(err <= 1e-4, "floe logits differs from transformers by {err:.2e}");
}

#[test]
fn default_model_generates_text() {
    let out = floe(&["--prompt", "Hello, world", "--tokens", "12"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("random weights"), "the default model must say its text is meaningless: {stderr}");
    assert!(stderr.contains("12 tokens generated"), "{stderr}");
    assert!(!out.stdout.is_empty());
}

/// The built-in default model takes --k like any other and refuses the flags that stream experts from disk.
#[test]
fn default_model_takes_k_and_refuses_streaming_flags() {
    assert_clean_error(&floe(&["--prompt", "Hi", "--k", "0"]), "--k 0 must be between 1 and the model's");
    assert_clean_error(&floe(&["--prompt", "Hi", "--gpu-mem", "1G"]), "the built-in default model has none there");
    let out = floe(&["--prompt", "Hi", "--tokens", "2", "--k", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("--k 1 is below the model's"), "{stderr}");
}

/// Sampled generation: the same seed gives the same text, another seed other text (on the CPU, where the
/// logits are the reference's).
#[test]
fn sampling_is_repeatable_with_a_seed() {
    let run = |seed: &str| {
        let out = floe(&["--prompt", "Hello", "--tokens", "24", "--temperature", "1.2", "--top-p", "0.95", "--seed", seed, "--backend", "cpu"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    assert_eq!(run("5"), run("5"));
    assert_ne!(run("5"), run("6"));
    assert_clean_error(&floe(&["--prompt", "Hi", "--top-p", "0"]), "--top-p must be in (0, 1]");
}

/// `floe bench --json` prints one JSON object with the speeds; `--timing` reports the work per forward call.
#[test]
fn bench_json_and_timing_report_their_figures() {
    let dir = fixture("qwen35_moe_mlx_4bit");
    let bench = ["bench", "--model", dir.to_str().unwrap(), "--prompt-tokens", "7", "--gen-tokens", "3", "--backend", "cpu"];
    let out = floe(&[&bench[..], &["--json", "--prefill-runs", "2"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    for key in ["prefill_tok_s", "decode_tok_s", "ttft_ms", "ttft_again_ms", "expert_bytes_read", "dispatches_per_token"] {
        assert!(report[key].is_number(), "{key} missing from {report}");
    }
    assert_eq!(report["prompt_tokens"], 7);
    let out = floe(&[&bench[..], &["--prefill-runs", "0"]].concat());
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--prefill-runs"));
    let out = floe(&["--prompt", "Hi", "--tokens", "4", "--backend", "cpu", "--timing"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("per forward call: 0 GPU dispatches"), "{stderr}");
}

#[test]
fn wrong_path_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = logits_cmd(&tmp.path().join("no-such-model"), "1,2", &tmp.path().join("x.npy"));
    assert_clean_error(&out, "does not exist");
}

#[test]
fn unsupported_model_type_is_one_clear_error() {
    error_with_config(|c| c["model_type"] = "llama".into(), "unsupported model_type `llama`");
}

/// The error `floe logits` gives on a copy of the Qwen3-MoE fixture whose config.json `edit` changed.
fn error_with_config(edit: impl FnOnce(&mut serde_json::Value), expected: &str) {
    let tmp = copy_fixture("qwen3_moe");
    let path = tmp.path().join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
    assert_clean_error(&logits_cmd(tmp.path(), "1,2", &tmp.path().join("x.npy")), expected);
}

#[test]
fn missing_config_field_is_named() {
    error_with_config(
        |c| {
            c.as_object_mut().unwrap().remove("num_experts_per_tok");
        },
        "missing field `num_experts_per_tok`",
    );
}

#[test]
fn truncated_safetensors_is_one_clear_error() {
    let tmp = copy_fixture("qwen3_moe");
    let path = tmp.path().join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();
    let out = logits_cmd(tmp.path(), "1,2", &tmp.path().join("x.npy"));
    assert_clean_error(&out, "not a valid safetensors file");
}

#[test]
fn missing_tensor_is_one_clear_error() {
    let tmp = copy_fixture("qwen3_moe");
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = st.tensors().into_iter().filter(|(n, _)| n != "model.layers.1.self_attn.k_norm.weight").collect();
    safetensors::serialize_to_file(kept, None, &path).unwrap();
    let out = logits_cmd(tmp.path(), "1,2", &tmp.path().join("x.npy"));
    assert_clean_error(&out, "missing tensor model.layers.1.self_attn.k_norm.weight");
}

#[test]
fn wrong_shape_names_tensor_and_shapes() {
    error_with_config(
        |c| c["moe_intermediate_size"] = 16.into(),
        "tensor model.layers.0.mlp.experts.0.gate_proj.weight: expected shape [16, 64], found [32, 64]",
    );
}

#[test]
fn token_outside_vocabulary_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = logits_cmd(&fixture("qwen3_moe"), "1,5000", &tmp.path().join("x.npy"));
    assert_clean_error(&out, "token id 5000 is outside the vocabulary");
    assert!(!tmp.path().join("x.npy").exists());
}
