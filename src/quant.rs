//! MLX's affine group quantization, bit for bit (the format of mlx-community checkpoints and of floe's experts).
//!
//! Each row is cut into groups of `group` consecutive values; a group stores `w ≈ scale·q + bias` with
//! q ∈ [0, 2^bits), scale and bias in bf16 (or the weight's float type). The q of a row form one LSB-first bit
//! stream over u32 words: value i occupies bits [i·bits, (i+1)·bits) of the row's stream, so for 2, 4 and 8 bits
//! value j of each word sits at bits [j·bits, (j+1)·bits) and for 3 and 6 bits values may straddle two words.

use anyhow::{bail, Result};

pub const SUPPORTED_BITS: [u32; 5] = [2, 3, 4, 6, 8];
pub const SUPPORTED_GROUPS: [usize; 3] = [32, 64, 128];

/// Bits and group size of an affine-quantized matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuantFormat {
    pub bits: u32,
    pub group: usize,
}

impl QuantFormat {
    pub fn new(bits: u32, group: usize) -> Result<QuantFormat> {
        if !SUPPORTED_BITS.contains(&bits) {
            bail!("unsupported quantization: {bits} bits (floe supports {SUPPORTED_BITS:?})");
        }
        if !SUPPORTED_GROUPS.contains(&group) {
            bail!("unsupported quantization group size {group} (floe supports {SUPPORTED_GROUPS:?})");
        }
        Ok(QuantFormat { bits, group })
    }

    /// u32 words holding one row of `cols` values.
    pub fn words_per_row(self, cols: usize) -> usize {
        cols * self.bits as usize / 32
    }

    /// Whether rows of `cols` values can be quantized: whole groups and whole words.
    pub fn fits(self, cols: usize) -> bool {
        cols % self.group == 0 && (cols * self.bits as usize) % 32 == 0
    }
}

/// Quantizes one row as `mx.quantize` does: per group, scale and bias in f32 (returned unrounded: the caller
/// stores them in bf16/f16, exactly as MLX rounds its f32 results), q from the unrounded ones.
pub fn quantize_row(w: &[f32], f: QuantFormat, words: &mut [u32], scales: &mut [f32], biases: &mut [f32]) {
    let levels = ((1u32 << f.bits) - 1) as f32;
    words.fill(0);
    for (g, group) in w.chunks(f.group).enumerate() {
        let (min, max) = group.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let mut scale = ((max - min) / levels).max(1e-7);
        // The edge of larger magnitude is represented exactly: q = 0 at the negative edge, q = levels at the
        // positive one (negative scale).
        let edge = if min.abs() > max.abs() {
            min
        } else {
            scale = -scale;
            max
        };
        let q0 = (edge / scale).round_ties_even();
        let bias = if q0 == 0.0 {
            0.0
        } else {
            scale = edge / q0;
            edge
        };
        scales[g] = scale;
        biases[g] = bias;
        for (i, &v) in group.iter().enumerate() {
            let q = ((v - bias) / scale).round_ties_even().clamp(0.0, levels) as u32;
            put(words, g * f.group + i, f.bits, q);
        }
    }
}

/// Dequantizes one row: `out[i] = scale·q + bias` of i's group.
pub fn dequantize_row(
    words: &[u32],
    f: QuantFormat,
    scale: impl Fn(usize) -> f32,
    bias: impl Fn(usize) -> f32,
    out: &mut [f32],
) {
    match f.bits {
        2 => dequantize_whole_words::<2>(words, f.group, scale, bias, out),
        4 => dequantize_whole_words::<4>(words, f.group, scale, bias, out),
        8 => dequantize_whole_words::<8>(words, f.group, scale, bias, out),
        _ => {
            for (g, chunk) in out.chunks_mut(f.group).enumerate() {
                let (s, b) = (scale(g), bias(g));
                for (i, o) in chunk.iter_mut().enumerate() {
                    *o = s * get(words, g * f.group + i, f.bits) as f32 + b;
                }
            }
        }
    }
}

/// dequantize_row for widths whose values never straddle words (2, 4, 8 bits): a word's 32 / BITS values at
/// constant shifts, which the compiler unrolls and vectorizes (the same values as `get`, bit for bit; the CPU
/// decode of a 4-bit model spends most of its time here: docs/PERF.md, "CPU decode of 4-bit models").
fn dequantize_whole_words<const BITS: usize>(
    words: &[u32],
    group: usize,
    scale: impl Fn(usize) -> f32,
    bias: impl Fn(usize) -> f32,
    out: &mut [f32],
) {
    let per_word = 32 / BITS;
    let mask = (1u32 << BITS) - 1;
    for (g, (chunk, group_words)) in out.chunks_mut(group).zip(words.chunks(group / per_word)).enumerate() {
        let (s, b) = (scale(g), bias(g));
        for (values, &word) in chunk.chunks_exact_mut(per_word).zip(group_words) {
            for (i, o) in values.iter_mut().enumerate() {
                *o = s * ((word >> (i * BITS)) & mask) as f32 + b;
            }
        }
    }
}

fn put(words: &mut [u32], index: usize, bits: u32, q: u32) {
    let bit = index * bits as usize;
    let (w, shift) = (bit / 32, (bit % 32) as u32);
    words[w] |= q << shift;
    if shift + bits > 32 {
        words[w + 1] |= q >> (32 - shift);
    }
}

fn get(words: &[u32], index: usize, bits: u32) -> u32 {
    let bit = index * bits as usize;
    let (w, shift) = (bit / 32, (bit % 32) as u32);
    let mut q = words[w] >> shift;
    if shift + bits > 32 {
        q |= words[w + 1] << (32 - shift);
    }
    q & ((1u32 << bits) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every q value round-trips through the bit stream, including those straddling two words (3 and 6 bits).
    #[test]
    fn packed_values_dequantize_to_scale_times_q_plus_bias() {
        for bits in SUPPORTED_BITS {
            let f = QuantFormat::new(bits, 32).unwrap();
            let qs: Vec<u32> = (0..96).map(|i| (i * 7 + 3) % (1 << bits)).collect();
            let mut words = vec![0; f.words_per_row(96)];
            for (i, &q) in qs.iter().enumerate() {
                put(&mut words, i, bits, q);
            }
            let mut out = vec![0.0; 96];
            dequantize_row(&words, f, |g| 0.5 + g as f32, |g| -(g as f32), &mut out);
            for (i, (&q, &v)) in qs.iter().zip(&out).enumerate() {
                let g = (i / 32) as f32;
                assert_eq!(v, (0.5 + g) * q as f32 - g, "{bits} bits, value {i}");
            }
        }
    }
}
