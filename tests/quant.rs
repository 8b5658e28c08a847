//! floe's quantizer against `mx.quantize` (vectors made by tools/make_fixtures.py with mlx): the same packed words,
//! scales and biases, bit for bit, for every bits × group size, from f32 and bf16 inputs; and the CPU's quantized
//! matvec against the dequantized rows.

mod common;

use floe::quant::{quantize_row, QuantFormat, SUPPORTED_BITS, SUPPORTED_GROUPS};
use half::bf16;
use safetensors::SafeTensors;

fn u32s(st: &SafeTensors, name: &str) -> Vec<u32> {
    st.tensor(name).unwrap().data().chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// A float tensor stored as f32, or as bf16 bit patterns in u16.
fn floats(st: &SafeTensors, name: &str, bf16_bits: bool) -> Vec<f32> {
    let data = st.tensor(name).unwrap().data();
    if bf16_bits {
        data.chunks_exact(2).map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()).collect()
    } else {
        data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }
}

#[test]
fn quantizer_matches_mlx_bit_for_bit() {
    let bytes = std::fs::read(common::fixture("mlx_quant").join("vectors.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut cases = 0;
    for bits in SUPPORTED_BITS {
        for group in SUPPORTED_GROUPS {
            for dtype in ["f32", "bf16"] {
                let key = format!("{bits}_{group}_{dtype}");
                let is_bf16 = dtype == "bf16";
                let input = floats(&st, &format!("input_{key}"), is_bf16);
                let cols = st.tensor(&format!("input_{key}")).unwrap().shape()[1];
                let f = QuantFormat::new(bits, group).unwrap();
                let (wpr, groups) = (f.words_per_row(cols), cols / group);
                let expected_words = u32s(&st, &format!("packed_{key}"));
                let expected_scales = floats(&st, &format!("scales_{key}"), is_bf16);
                let expected_biases = floats(&st, &format!("biases_{key}"), is_bf16);
                for (r, row) in input.chunks(cols).enumerate() {
                    let mut words = vec![0u32; wpr];
                    let (mut scales, mut biases) = (vec![0f32; groups], vec![0f32; groups]);
                    quantize_row(row, f, &mut words, &mut scales, &mut biases);
                    if is_bf16 {
                        // MLX computes in f32 and rounds the results to the weight's type.
                        scales.iter_mut().for_each(|s| *s = bf16::from_f32(*s).to_f32());
                        biases.iter_mut().for_each(|b| *b = bf16::from_f32(*b).to_f32());
                    }
                    assert_eq!(words, expected_words[r * wpr..(r + 1) * wpr], "{key} row {r}: packed words");
                    assert_eq!(scales, expected_scales[r * groups..(r + 1) * groups], "{key} row {r}: scales");
                    assert_eq!(biases, expected_biases[r * groups..(r + 1) * groups], "{key} row {r}: biases");
                }
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 30);
}

/// The CPU's one-token matvec of 2-, 4- and 8-bit matrices (which never dequantizes a row) against the dequantized
/// rows' dot products, on random matrices of the group sizes it takes and random inputs; and a 3-bit one (rows
/// dequantized) too.
#[test]
fn cpu_quantized_matvec_equals_dequantized_rows() {
    use floe::convert::quantize_matrix;
    use floe::tensor::{Matrix, Tensor};
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let cases = [(4, 64, 37, 384), (4, 128, 5, 1024), (4, 64, 130, 64), (8, 32, 9, 192), (8, 128, 70, 256), (2, 128, 3, 384), (3, 64, 9, 192)];
    for (bits, group, rows, cols) in cases {
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        let m = quantize_matrix(&Matrix::Dense(Tensor::from_f32(vec![rows, cols], values)), QuantFormat::new(bits, group).unwrap());
        let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        let y = floe::cpu::matmul(&x, 1, &m);
        let mut row = vec![0f32; cols];
        for (r, &got) in y.iter().enumerate() {
            m.row_f32(r, &mut row);
            let want: f64 = row.iter().zip(&x).map(|(w, x)| *w as f64 * *x as f64).sum();
            let scale: f64 = row.iter().zip(&x).map(|(w, x)| (*w as f64 * *x as f64).abs()).sum();
            assert!((got as f64 - want).abs() <= 1e-5 * scale, "q{bits}g{group} [{rows}x{cols}] row {r}: {got} vs {want}");
        }
    }
}
