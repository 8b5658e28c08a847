//! Helpers shared by the integration tests: the committed fixtures (tools/make_fixtures.py) and comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Every model fixture and how close floe must come to its reference logits (max |ours − ref| / max |ref|):
/// tiny random checkpoints with transformers' logits (f32 and bf16), and mlx-lm quantized conversions with
/// mlx-lm's logits (computed in f32).
pub const FIXTURES: [(&str, f32); 6] = [
    ("qwen35_moe", 1e-4),
    ("qwen35_moe_official", 1e-4),
    ("qwen3_next", 1e-4),
    ("qwen3_moe", 1e-4),
    ("qwen35_moe_mlx_4bit", 1e-3),
    ("qwen35_moe_mlx_2bit", 1e-3),
];

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The fixture's token sequence and how many of them its prefill-then-decode reference prefilled.
pub fn tokens(dir: &Path) -> (Vec<u32>, usize) {
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokens.json")).unwrap()).unwrap();
    let tokens = json["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    (tokens, json["prefill"].as_u64().unwrap() as usize)
}

pub fn reference(dir: &Path, which: &str) -> (Vec<usize>, Vec<f32>) {
    floe::npy::read_f32(&dir.join(format!("logits_{which}.npy"))).unwrap()
}

/// max |ours − ref| / max |ref|
pub fn relative_error(ours: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(ours.len(), reference.len(), "different sizes");
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "reference logits are all zero");
    let err = ours.iter().zip(reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    if err.is_nan() || ours.iter().any(|v| !v.is_finite()) {
        return f32::INFINITY;
    }
    err / scale
}

/// A copy of fixture `name` in a fresh temporary directory, for tests that damage it.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

/// The GPU for GPU tests: any adapter, software ones included (lavapipe in CI). None when there is none, which
/// fails the test when FLOE_REQUIRE_GPU=1 (CI sets it) and skips it otherwise, saying so.
pub fn gpu() -> Option<floe::gpu::Gpu> {
    let gpu = floe::gpu::Gpu::open(floe::gpu::AdapterChoice::Any).expect("opening the GPU");
    match &gpu {
        Some(g) => eprintln!("GPU: {}", g.describe()),
        None if std::env::var("FLOE_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("FLOE_REQUIRE_GPU=1 but there is no GPU adapter (install mesa-vulkan-drivers for lavapipe)")
        }
        None => eprintln!("skipped: no GPU adapter (FLOE_REQUIRE_GPU=1 makes this a failure)"),
    }
    gpu
}
