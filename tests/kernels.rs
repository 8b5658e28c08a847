//! Every GPU operation against its CPU twin (the CPU backend) on fresh random inputs, at several shapes including
//! ones that are not multiples of the tile (16 rows, 32 columns), the group or the subgroup; and every rendered
//! kernel through naga's validation and MSL and HLSL translation. The seed is printed so a failure can be replayed
//! (FLOE_TEST_SEED=...).
//!
//! Tolerances, as max |gpu − cpu| / max |cpu|: 2e-5 for operations that sum (matmul, norms, attention, the delta
//! rule, MoE), where the GPU adds in another order; 1e-6 for the element-wise ones.

mod common;

use floe::backend::Backend;
use floe::config::LinearAttnConfig;
use floe::convert::quantize_matrix;
use floe::cpu::Cpu;
use floe::gpu::Gpu;
use floe::quant::QuantFormat;
use floe::tensor::{DType, Matrix, Tensor};
use floe::model::qwen35::sparse_moe;
use floe::weights::{ExpertWeights, HostExperts, LinearAttnWeights, MoeWeights, SharedExpertWeights, Storage, Transfer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SUMS: f32 = 2e-5;
/// Sums of products on tensor cores, whose inputs are rounded to f16 (2⁻¹¹ relative each).
const TENSOR_CORES: f32 = 3e-3;
const ELEMENTWISE: f32 = 1e-6;

struct Bench {
    gpu: Gpu,
    rng: ChaCha8Rng,
}

fn bench() -> Option<Bench> {
    let gpu = common::gpu()?;
    let seed = std::env::var("FLOE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed {seed} (FLOE_TEST_SEED={seed} replays it)");
    Some(Bench { gpu, rng: ChaCha8Rng::seed_from_u64(seed) })
}

impl Bench {
    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.rng.random_range(-scale..scale)).collect()
    }

    fn matrix(&mut self, rows: usize, cols: usize, format: &str) -> Matrix {
        let dense = Matrix::Dense(Tensor::from_f32(vec![rows, cols], self.values(rows * cols, 0.5)));
        match format {
            "f32" => dense,
            "bf16" => cast(&dense, DType::BF16),
            "f16" => cast(&dense, DType::F16),
            q => {
                // q{bits}g{group}{scale dtype}
                let (bits, rest) = q[1..].split_once('g').unwrap();
                let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap();
                let f = QuantFormat::new(bits.parse().unwrap(), rest[..digits].parse().unwrap()).unwrap();
                let scale_dtype = match &rest[digits..] {
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    _ => DType::F32,
                };
                match quantize_matrix(&dense, f) {
                    Matrix::Affine { words, scales, biases, format, shape } => Matrix::Affine {
                        words,
                        scales: scales.cast(scale_dtype),
                        biases: biases.cast(scale_dtype),
                        format,
                        shape,
                    },
                    Matrix::Dense(_) => unreachable!(),
                }
            }
        }
    }

    fn both(&self, values: &[f32]) -> (Vec<f32>, <Gpu as Backend>::Act) {
        (values.to_vec(), self.gpu.act(values).unwrap())
    }

    /// `n` random values in (−scale, scale), on both backends.
    fn random(&mut self, n: usize, scale: f32) -> (Vec<f32>, <Gpu as Backend>::Act) {
        let values = self.values(n, scale);
        self.both(&values)
    }

    fn upload(&self, m: &Matrix) -> <Gpu as Storage>::Matrix {
        Transfer::<Gpu>::matrix(&mut &self.gpu, "a test matrix", m).unwrap()
    }

    fn vector(&self, v: &[f32]) -> <Gpu as Storage>::Vector {
        Transfer::<Gpu>::vector(&mut &self.gpu, "a test vector", v).unwrap()
    }

    /// `experts` random experts of `format` ("gate_up+down" where the formats differ), hidden size h.
    fn experts(&mut self, format: &str, experts: usize, h: usize, inter: usize) -> HostExperts {
        let (gate_up_format, down_format) = format.split_once('+').unwrap_or((format, format));
        HostExperts::Resident(
            (0..experts)
                .map(|_| ExpertWeights {
                    gate: self.matrix(inter, h, gate_up_format),
                    up: self.matrix(inter, h, gate_up_format),
                    down: self.matrix(h, inter, down_format),
                })
                .collect(),
        )
    }

    fn check(&self, what: &str, cpu: &[f32], gpu: &<Gpu as Backend>::Act, tolerance: f32) {
        self.check_at_scale(what, cpu, gpu, tolerance, 0.0);
    }

    /// As `check`, with errors relative to the largest output or `min_scale`, whichever is larger.
    fn check_at_scale(&self, what: &str, cpu: &[f32], gpu: &<Gpu as Backend>::Act, tolerance: f32, min_scale: f32) {
        let gpu = self.gpu.read(gpu).unwrap();
        let largest = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = common::relative_error(&gpu, cpu) * largest / largest.max(min_scale);
        assert!(err <= tolerance, "{what}: GPU differs from CPU by {err:.2e} (tolerance {tolerance:.0e})");
    }
}

fn cast(m: &Matrix, dtype: DType) -> Matrix {
    match m {
        Matrix::Dense(t) => Matrix::Dense(t.cast(dtype)),
        _ => unreachable!(),
    }
}

const DENSE: [&str; 3] = ["f32", "bf16", "f16"];

fn quantized() -> Vec<String> {
    let mut all = Vec::new();
    for bits in [2, 3, 4, 6, 8] {
        for group in [32, 64, 128] {
            for scale in ["bf16", "f16", "f32"] {
                all.push(format!("q{bits}g{group}{scale}"));
            }
        }
    }
    all
}

#[test]
fn matmul_every_format_and_odd_shapes() {
    let Some(mut b) = bench() else { return };
    // (rows, cols, tokens): rows not a multiple of 4, cols not of 32, tokens around the 8 per pass; one token over
    // at most and over 2,048 rows (the decode kernel's two layouts); quantized decode over more than one x tile of
    // 4,096 columns, the last one partly filled.
    let dense_shapes = [(1, 1, 1), (5, 45, 1), (37, 100, 3), (64, 256, 9), (130, 33, 17), (2051, 40, 1)];
    let quant_shapes = [(3, 128, 1), (37, 384, 1), (66, 256, 9), (9, 640, 17), (2053, 128, 1), (2085, 4480, 1)];
    let formats: Vec<String> = DENSE.iter().map(|s| s.to_string()).chain(quantized()).collect();
    // Both reductions: with subgroup operations (where the adapter has them) and the workgroup-memory fallback.
    for subgroups in [true, false] {
        let used = b.gpu.set_subgroups(subgroups);
        for format in &formats {
            let shapes: &[(usize, usize, usize)] = if format.starts_with('q') { &quant_shapes } else { &dense_shapes };
            for &(rows, cols, t) in shapes {
                let m = b.matrix(rows, cols, format);
                let (x, gx) = b.random(t * cols, 1.0);
                let cpu = Cpu.matmul(&x, &m);
                let gpu = b.gpu.matmul(&gx, &b.upload(&m));
                b.check(&format!("matmul {format} [{rows}x{cols}] x {t} tokens, subgroups {used}"), &cpu, &gpu, SUMS);
            }
        }
    }
}

/// Prefill matmuls large enough to fill the GPU with tiles of 64 rows × 64 tokens run so (2, 4 and 8 bits), alone
/// and split; rows and tokens not multiples of 64, and the last tile's rows in the split's last matrix. Both on
/// tensor cores, where the adapter has them, and without.
#[test]
fn large_prefill_matmuls_run_in_tiles() {
    let Some(mut b) = bench() else { return };
    for tensor_cores in [true, false] {
        if b.gpu.set_tensor_cores(tensor_cores) != tensor_cores {
            eprintln!("this adapter has no tensor cores that floe's kernels take: the tiles run without them only");
            continue;
        }
        let tolerance = if tensor_cores { TENSOR_CORES } else { SUMS };
        for (format, rows, cols, t) in [("q4g64bf16", 2100, 128, 520), ("q8g32f16", 4100, 96, 260), ("q2g128f32", 2050, 256, 580)] {
            let m = b.matrix(rows, cols, format);
            let (x, gx) = b.random(t * cols, 1.0);
            let what = format!("matmul {format} [{rows}x{cols}] x {t} tokens, tensor cores {tensor_cores}");
            b.check(&what, &Cpu.matmul(&x, &m), &b.gpu.matmul(&gx, &b.upload(&m)), tolerance);
            let host = [b.matrix(rows - 70, cols, format), b.matrix(3, cols, format), b.matrix(67, cols, format)];
            let up = Transfer::<Gpu>::matrices(&mut &b.gpu, [("a", &host[0]), ("b", &host[1]), ("c", &host[2])]).unwrap();
            let outputs = b.gpu.matmuls(&gx, [&up[0], &up[1], &up[2]]);
            for (i, (m, out)) in host.iter().zip(&outputs).enumerate() {
                b.check(&format!("{what}, split: matrix {i}"), &Cpu.matmul(&x, m), out, tolerance);
            }
        }
    }
}

/// Matrices uploaded together (a layer's input projections) run as one split dispatch, each matrix's rows to
/// its own output; odd row counts put the splits inside workgroups.
#[test]
fn matrices_uploaded_together_run_in_one_dispatch() {
    let Some(mut b) = bench() else { return };
    let formats = ["f32", "bf16", "q4g64bf16", "q8g32f16", "q3g32bf16", "q6g128f32"];
    // (rows of each of 2, 3 or 4 matrices, cols, tokens); the last one, a quantized decode over more than one x tile
    // of 4,096 columns.
    let cases: [(&[usize], usize, usize); 6] = [
        (&[5, 3, 7], 128, 1),
        (&[37, 16, 4, 4], 256, 1),
        (&[64, 33, 1, 9], 128, 9),
        (&[1, 2, 3], 384, 17),
        (&[19, 30], 128, 2),
        (&[5, 30, 7], 4352, 1),
    ];
    for (format, (rows, cols, t)) in formats.iter().zip(cases.iter().cycle()) {
        for subgroups in [true, false] {
            b.gpu.set_subgroups(subgroups);
            let host: Vec<Matrix> = rows.iter().map(|&r| b.matrix(r, *cols, format)).collect();
            let (x, gx) = b.random(t * cols, 1.0);
            let what = format!("{format} rows {rows:?} x {cols}, {t} tokens, subgroups {subgroups}");
            let before = b.gpu.counters().dispatches;
            let outputs: Vec<<Gpu as Backend>::Act> = match host.as_slice() {
                [a, b2] => {
                    let up = Transfer::<Gpu>::matrices(&mut &b.gpu, [("a", a), ("b", b2)]).unwrap();
                    b.gpu.matmuls(&gx, [&up[0], &up[1]]).into()
                }
                [q, k, v] => {
                    let up = Transfer::<Gpu>::matrices(&mut &b.gpu, [("q", q), ("k", k), ("v", v)]).unwrap();
                    b.gpu.matmuls(&gx, [&up[0], &up[1], &up[2]]).into()
                }
                [m0, m1, m2, m3] => {
                    let up = Transfer::<Gpu>::matrices(&mut &b.gpu, [("0", m0), ("1", m1), ("2", m2), ("3", m3)]).unwrap();
                    b.gpu.matmuls(&gx, [&up[0], &up[1], &up[2], &up[3]]).into()
                }
                _ => unreachable!(),
            };
            assert_eq!(b.gpu.counters().dispatches - before, 1, "{what}: one dispatch");
            for (i, (m, out)) in host.iter().zip(&outputs).enumerate() {
                b.check(&format!("{what}: matrix {i}"), &Cpu.matmul(&x, m), out, SUMS);
            }
        }
    }
}

/// A matrix larger than one binding is split by rows into pieces that each fit one: matmul and embedding rows
/// give what they give unsplit (here with the limit lowered so that small matrices split, at odd row counts).
#[test]
fn matrices_larger_than_a_binding_run_in_pieces() {
    let Some(mut b) = bench() else { return };
    for (format, rows, cols, limit) in [("f32", 301, 64, 16384), ("q4g64bf16", 301, 256, 16384), ("bf16", 130, 96, 10000), ("q8g32f16", 650, 128, 20000)] {
        let m = b.matrix(rows, cols, format);
        b.gpu.limit_bindings(limit);
        let pieces = b.upload(&m);
        for t in [1, 9] {
            let (x, gx) = b.random(t * cols, 1.0);
            let before = b.gpu.counters().dispatches;
            let split = b.gpu.matmul(&gx, &pieces);
            assert!(b.gpu.counters().dispatches - before > 1, "{format}: {rows} rows in one piece under {limit} bytes");
            b.check(&format!("matmul {format} [{rows}x{cols}] x {t} in pieces of ≤ {limit} bytes"), &Cpu.matmul(&x, &m), &split, SUMS);
        }
        let tokens: Vec<u32> = (0..7).map(|_| b.rng.random_range(0..rows as u32)).chain([0, rows as u32 - 1]).collect();
        let cpu = Cpu.embed(&m, &tokens).unwrap();
        b.check(&format!("embed {format} in pieces"), &cpu, &b.gpu.embed(&pieces, &tokens).unwrap(), ELEMENTWISE);
        // Matrices uploaded together that no longer fit one binding are kept apart, each split as it needs.
        let (q, k) = (b.matrix(rows, cols, format), b.matrix(3, cols, format));
        let [gq, gk] = Transfer::<Gpu>::matrices(&mut &b.gpu, [("q", &q), ("k", &k)]).unwrap();
        let (x, gx) = b.random(cols, 1.0);
        let [oq, ok] = b.gpu.matmuls(&gx, [&gq, &gk]);
        b.check(&format!("{format} uploaded together, over the limit: q"), &Cpu.matmul(&x, &q), &oq, SUMS);
        b.check(&format!("{format} uploaded together, over the limit: k"), &Cpu.matmul(&x, &k), &ok, SUMS);
        b.gpu.limit_bindings(u64::MAX);
    }
}

#[test]
fn embedding_rows_every_format() {
    let Some(mut b) = bench() else { return };
    let formats: Vec<String> = DENSE.iter().map(|s| s.to_string()).chain(quantized()).collect();
    for format in &formats {
        let cols = if format.starts_with('q') { 384 } else { 70 };
        let m = b.matrix(50, cols, format);
        let tokens: Vec<u32> = (0..7).map(|_| b.rng.random_range(0..50)).collect();
        let cpu = Cpu.embed(&m, &tokens).unwrap();
        let gpu = b.gpu.embed(&b.upload(&m), &tokens).unwrap();
        b.check(&format!("embed {format}"), &cpu, &gpu, ELEMENTWISE);
    }
}

#[test]
fn norms_and_element_wise_ops() {
    let Some(mut b) = bench() else { return };
    // A norm keeps a row's first 2,048 columns in registers and reads longer rows' later columns again; its sum of
    // squares is reduced through subgroups or through workgroup memory.
    let shapes = [(1, 1), (5, 7), (3, 64), (2, 300), (1, 2048), (2, 2500), (1, 4100)];
    for ((rows, dim), subgroups) in shapes.into_iter().zip([true, false].into_iter().cycle()) {
        b.gpu.set_subgroups(subgroups);
        let (x, gx) = b.random(rows * dim, 2.0);
        let (z, gz) = b.random(rows * dim, 2.0);
        let w = b.values(dim, 1.5);
        let gw = b.vector(&w);
        b.check("rms_norm", &Cpu.rms_norm(&x, &w, dim, 1e-6), &b.gpu.rms_norm(&gx, &gw, dim, 1e-6), SUMS);
        let (mut hidden, mut ghidden) = b.both(&x);
        let cpu = Cpu.add_rms_norm(&mut hidden, &z, &w, dim, 1e-6);
        let gpu = b.gpu.add_rms_norm(&mut ghidden, &gz, &gw, dim, 1e-6);
        b.check("add_rms_norm", &cpu, &gpu, SUMS);
        b.check("add_rms_norm (the sum)", &hidden, &ghidden, ELEMENTWISE);
        b.check("swiglu", &Cpu.swiglu(&x, &z), &b.gpu.swiglu(&gx, &gz), ELEMENTWISE);
        b.check("last_row", &Cpu.last_row(&x, dim), &b.gpu.last_row(&gx, dim), 0.0);
    }
    // Argmax over several 4096-value blocks, with the maximum repeated (the lower index wins).
    for n in [1, 37, 4096, 10_000, 250_000] {
        let mut x = b.values(n, 1.0);
        let top = b.rng.random_range(0..n);
        x[top] = 2.0;
        x[n - 1] = 2.0;
        let gx = b.gpu.act(&x).unwrap();
        assert_eq!(b.gpu.argmax(&gx).unwrap(), Cpu.argmax(&x).unwrap(), "argmax of {n} values");
    }
}

/// Query and key heads made ready in one pass (split off the output gate, per-head norms, RoPE), at positions
/// far from 0 too: the angle table comes from the CPU, so large angles stay exact.
#[test]
fn attention_heads_norm_and_rotate() {
    let Some(mut b) = bench() else { return };
    // (tokens, query heads, key heads, head dim, rotary dims, first position, output gate)
    let cases = [
        (1, 2, 1, 32, 8, 0, true),
        (5, 3, 3, 64, 64, 17, false),
        (2, 4, 2, 256, 64, 250_000, true),
        (3, 6, 2, 40, 10, 3, true),
        (9, 1, 1, 200, 200, 70, false),
    ];
    for (t, nh, nkv, hd, rot, pos0, gated) in cases {
        let mut c = floe::synthetic::default_config(512, vec![]);
        (c.num_heads, c.num_kv_heads, c.head_dim, c.rotary_dim) = (nh, nkv, hd, rot);
        if !gated {
            c.arch = floe::config::Arch::Qwen3Moe;
        }
        let (projected, gprojected) = b.random(t * nh * hd * if gated { 2 } else { 1 }, 2.0);
        let (k, gk) = b.random(t * nkv * hd, 2.0);
        let (q_norm, k_norm) = (b.values(hd, 1.5), b.values(hd, 1.5));
        let (gq_norm, gk_norm) = (b.vector(&q_norm), b.vector(&k_norm));
        let (q, gate, k) = Cpu.attention_heads(&c, &projected, &k, &q_norm, &k_norm, pos0);
        let (gq, ggate, gk) = b.gpu.attention_heads(&c, &gprojected, &gk, &gq_norm, &gk_norm, pos0);
        let what = format!("attention heads t={t} nh={nh} nkv={nkv} hd={hd} rot={rot} pos0={pos0}");
        b.check(&format!("{what}: q"), &q, &gq, SUMS);
        b.check(&format!("{what}: k"), &k, &gk, SUMS);
        assert_eq!(gate.is_some(), ggate.is_some(), "{what}: gate");
        if let (Some(gate), Some(ggate)) = (gate, ggate) {
            b.check(&format!("{what}: gate"), &gate, &ggate, 0.0);
        }
    }
}

/// Attention over a cache filled by earlier calls (prefill, then decode steps), past the 64-key block, split
/// over the keys (one block per split, and several).
#[test]
fn attention_prefill_then_decode() {
    let Some(mut b) = bench() else { return };
    // The last case passes 32 blocks of 64 keys: several blocks per split.
    let cases = [(4, 2, 32, [70, 1, 1]), (2, 2, 256, [5, 64, 1]), (6, 1, 40, [1, 130, 2]), (2, 1, 32, [2100, 1, 3])];
    for (nh, nkv, hd, steps) in cases {
        let width = nkv * hd;
        let mut cpu_cache = Cpu.new_kv_cache(width).unwrap();
        let mut gpu_cache = b.gpu.new_kv_cache(width).unwrap();
        let mut pos = 0;
        for t in steps {
            let (q, gq) = b.random(t * nh * hd, 1.0);
            let (k, gk) = b.random(t * width, 1.0);
            let (v, gv) = b.random(t * width, 1.0);
            // With Qwen3.5's output gate on every other step.
            let (gate, ggate) = b.random(t * nh * hd, 3.0);
            let gated = pos % 2 == 0;
            let cpu = Cpu.attention(&q, &k, &v, &mut cpu_cache, pos, (nh, nkv), hd, gated.then_some(&gate)).unwrap();
            let gpu = b.gpu.attention(&gq, &gk, &gv, &mut gpu_cache, pos, (nh, nkv), hd, gated.then_some(&ggate)).unwrap();
            b.check(&format!("attention nh={nh} nkv={nkv} hd={hd} pos={pos} t={t}"), &cpu, &gpu, SUMS);
            pos += t;
        }
    }
}

/// Gated DeltaNet's conv, recurrence and gated norm, the states carried across calls: prefills of several tokens
/// and decode steps (one dispatch where a workgroup holds a value head: not for dv = 70, 9 or 300), from the first
/// position on, with prompts shorter and longer than the conv, and one of several 16-token chunks of the conv (the
/// first reads the conv state, the others only the prompt).
#[test]
fn gated_delta_net_carries_its_states() {
    let Some(mut b) = bench() else { return };
    let shapes = [(1, 1, 8, 8, 2), (2, 4, 16, 24, 4), (2, 6, 128, 70, 4), (2, 4, 128, 128, 4), (1, 2, 256, 40, 4), (1, 1, 40, 9, 3), (1, 2, 16, 300, 4)];
    // The shapes delta_step does not take run the gated norm, with and without subgroup sums.
    for ((hk, hv, dk, dv, kernel), subgroups) in shapes.into_iter().zip([true, false].into_iter().cycle()) {
        b.gpu.set_subgroups(subgroups);
        let l = LinearAttnConfig { num_key_heads: hk, num_value_heads: hv, key_head_dim: dk, value_head_dim: dv, conv_kernel: kernel };
        let channels = l.conv_channels();
        let (conv1d, a_log, dt_bias) = (b.values(channels * kernel, 0.5), b.values(hv, 1.0), b.values(hv, 1.0));
        let norm = b.values(dv, 1.5);
        let empty = Matrix::Dense(Tensor::from_f32(vec![1, 1], vec![0.0]));
        let host: LinearAttnWeights = LinearAttnWeights {
            in_proj_qkv: empty.clone(),
            in_proj_z: empty.clone(),
            in_proj_b: empty.clone(),
            in_proj_a: empty.clone(),
            conv1d,
            a_log,
            dt_bias,
            norm,
            out_proj: empty,
        };
        let up = |v: &[f32]| b.vector(v);
        let mat = |m: &Matrix| b.upload(m);
        let device = LinearAttnWeights {
            in_proj_qkv: mat(&host.in_proj_qkv),
            in_proj_z: mat(&host.in_proj_z),
            in_proj_b: mat(&host.in_proj_b),
            in_proj_a: mat(&host.in_proj_a),
            conv1d: up(&host.conv1d),
            a_log: up(&host.a_log),
            dt_bias: up(&host.dt_bias),
            norm: up(&host.norm),
            out_proj: mat(&host.out_proj),
        };
        let mut cpu_state = Cpu.new_linear_state(&l).unwrap();
        let mut gpu_state = b.gpu.new_linear_state(&l).unwrap();
        for t in [1, 2, 1, 7, 1, 1, 1, 1, 3, 1, 37, 1] {
            let (x, gx) = b.random(t * channels, 1.0);
            let (z, gz) = b.random(t * hv * dv, 2.0);
            let (beta, gbeta) = b.random(t * hv, 2.0);
            let (a, ga) = b.random(t * hv, 2.0);
            let cpu = Cpu.gated_delta_net(&l, &host, &x, &z, &beta, &a, 1e-6, &mut cpu_state);
            let gpu = b.gpu.gated_delta_net(&l, &device, &gx, &gz, &gbeta, &ga, 1e-6, &mut gpu_state);
            // The output is RMS-normalized per value head, so its natural scale is about 1 (the norm's weight times
            // the gate). Where a head's Sᵀq is tiny (rms below the norm's √eps), the norm leaves it tiny and what
            // remains of it is rounding: errors relative to such a head's own largest value reached 5e-3 between
            // f32 and f64 over 5,000 random seeds of these shapes, but at most 1.4e-5 measured against 1
            // (tools/delta_rule_rounding.py).
            let what = format!("gated delta net hk={hk} hv={hv} dk={dk} dv={dv} t={t}");
            b.check_at_scale(&what, &cpu, &gpu, SUMS, 1.0);
        }
    }
}

/// Routing, the routed experts (records in the floe layout, every expert format) and the combine with the shared
/// expert, as one MoE block.
#[test]
fn moe_routing_experts_and_combine() {
    let Some(mut b) = bench() else { return };
    let cases = [
        ("f32", 8, 2, 1, 64, 48, true),
        ("bf16", 33, 4, 5, 96, 40, false),
        ("q4g64bf16", 16, 8, 3, 128, 64, true),
        ("q2g32bf16", 9, 3, 9, 64, 96, true),
        ("q3g32f16", 512, 10, 2, 64, 64, false),
        // The router holds up to 16 logits per thread: 1,000 experts fill the last slot partly.
        ("q4g64bf16", 1000, 8, 2, 64, 64, true),
        ("q4g64bf16", 1000, 8, 1, 64, 64, false),
        ("q8g128f32", 40, 4, 1, 256, 128, true),
        ("q6g64bf16", 10, 2, 4, 128, 64, true),
        // Decode reads x through a tile of 2,048 columns: hidden and intermediate sizes over two tiles.
        ("q4g64bf16", 3, 2, 1, 2176, 2112, true),
        // From 32 tokens on the pairs are grouped by expert, 8 per pass (more experts than the grouping's 256
        // threads, chunks cut short), where a format has no rows kernel (3 bits, dense, read by units; 4-bit
        // gate and up with 3-bit down, read by words); the other cases here run in rows.
        ("q4g64bf16+q3g32f16", 16, 8, 37, 128, 64, true),
        ("q4g64bf16", 16, 8, 37, 128, 64, true),
        ("q2g32bf16", 9, 3, 45, 64, 96, false),
        ("q8g128f32", 300, 4, 33, 256, 128, true),
        ("bf16", 5, 2, 40, 96, 40, true),
        ("q3g32f16", 40, 10, 50, 64, 64, false),
        // 2-, 4- and 8-bit formats run 16 pairs of an expert at a time, a thread per row (each expert's last
        // chunk cut short: passes of fewer than 16 tokens; rows not a multiple of a workgroup's 256 or 512,
        // columns not a multiple of the 256 staged at a time; the grouped cases above in 2, 4 and 8 bits run so
        // too).
        ("q4g64bf16", 4, 2, 150, 128, 192, true),
        ("q4g64bf16", 5, 2, 190, 576, 320, true),
        ("q2g128f32", 3, 1, 200, 128, 128, false),
        ("q8g32f16", 6, 3, 70, 96, 96, true),
        ("q8g32f16", 6, 3, 40, 96, 96, false),
    ];
    for ((format, experts, k, t, h, inter, renormalize), subgroups) in cases.into_iter().zip([true, false].into_iter().cycle()) {
        b.gpu.set_subgroups(subgroups);
        // "gate_up+down" where the formats differ.
        let host = b.experts(format, experts, h, inter);
        let device = Transfer::<Gpu>::experts(&mut &b.gpu, 0, &host).unwrap();
        let what = format!("MoE {format} E={experts} k={k} t={t} h={h} i={inter}");
        let (x, gx) = b.random(t * h, 1.0);
        let (logits, glogits) = b.random(t * experts, 3.0);
        let (shared, gshared) = b.random(t * h, 1.0);
        let (gate, ggate) = b.random(t, 2.0);
        let (mut hidden, mut ghidden) = b.random(t * h, 1.0);
        let routing = Cpu.route(&logits, &host, k, renormalize);
        let groute = b.gpu.route(&glogits, &device, k, renormalize);
        let out = Cpu.experts(&x, &routing, &host, None).unwrap();
        let gout = b.gpu.experts(&gx, &groute, &device, None).unwrap();
        b.check(&format!("{what}: experts"), &out, &gout, SUMS);
        let norm = b.values(h, 1.5);
        let gnorm = b.vector(&norm);
        let normed = Cpu.moe_combine_rms_norm(&mut hidden, &out, &routing, Some((&shared, &gate)), &norm, h, 1e-6);
        let gnormed = b.gpu.moe_combine_rms_norm(&mut ghidden, &gout, &groute, Some((&gshared, &ggate)), &gnorm, h, 1e-6);
        b.check(&format!("{what}: combine"), &hidden, &ghidden, SUMS);
        b.check(&format!("{what}: combine, then the norm"), &normed, &gnormed, SUMS);
        let normed = Cpu.moe_combine_rms_norm(&mut hidden, &out, &routing, None, &norm, h, 1e-6);
        let gnormed = b.gpu.moe_combine_rms_norm(&mut ghidden, &gout, &groute, None, &gnorm, h, 1e-6);
        b.check(&format!("{what}: combine without shared expert"), &hidden, &ghidden, SUMS);
        b.check(&format!("{what}: combine without shared expert, then the norm"), &normed, &gnormed, SUMS);
    }
}

/// The whole MoE block of the forward pass, shared expert included: the GPU keeps the shared expert as one more
/// routed expert (its gate as one more router row) where its shape agrees with the routed ones, and apart where not.
#[test]
fn sparse_moe_block_with_a_shared_expert() {
    let Some(mut b) = bench() else { return };
    // (format, router format, experts, k, tokens, hidden, intermediate, shared intermediate)
    let cases = [
        ("q4g64bf16", "q8g64bf16", 16, 4, 3, 128, 64, 64),
        ("bf16", "bf16", 8, 2, 5, 64, 48, 40),
        ("q2g32bf16", "q8g32bf16", 9, 3, 1, 64, 64, 64),
        ("q4g64bf16", "q8g64bf16", 16, 4, 35, 128, 64, 64),
        ("q4g64bf16", "q8g64bf16", 4, 2, 100, 128, 64, 64),
    ];
    for (format, router_format, experts, k, t, h, inter, shared_inter) in cases {
        let mut mlp = |i: usize| ExpertWeights { gate: b.matrix(i, h, format), up: b.matrix(i, h, format), down: b.matrix(h, i, format) };
        let routed: Vec<ExpertWeights> = (0..experts).map(|_| mlp(inter)).collect();
        let shared = SharedExpertWeights { mlp: mlp(shared_inter), gate: b.matrix(1, h, router_format) };
        let routed = HostExperts::Resident(routed);
        let host = MoeWeights { router: b.matrix(experts, h, router_format), experts: routed, shared: Some(shared) };
        let device = Transfer::<Gpu>::moe(&mut &b.gpu, 0, &host).unwrap();
        assert_eq!(device.shared.is_none(), inter == shared_inter, "the shared expert is fused exactly when shapes agree");
        let mut c = floe::synthetic::default_config(512, vec![]);
        (c.hidden_size, c.num_experts, c.experts_per_token, c.norm_topk_prob) = (h, experts, k, true);
        let (x, gx) = b.random(t * h, 1.0);
        let (mut hidden, mut ghidden) = b.random(t * h, 1.0);
        let norm = b.values(h, 1.5);
        let normed = sparse_moe(&Cpu, &c, &host, &x, &mut hidden, &norm, None).unwrap();
        let gnormed = sparse_moe(&b.gpu, &c, &device, &gx, &mut ghidden, &b.vector(&norm), None).unwrap();
        let what = format!("MoE block {format} E={experts} k={k} t={t} shared intermediate {shared_inter}");
        b.check(&what, &hidden, &ghidden, SUMS);
        b.check(&format!("{what}, then the norm"), &normed, &gnormed, SUMS);
    }
}

/// The kernels the binary embeds all pass naga's validation and MSL and HLSL translation (build.rs checked them when it
/// rendered them; this proves it on what was embedded), and every template produced at least one.
#[test]
fn every_rendered_kernel_validates_and_translates_to_msl_and_hlsl() {
    mod check {
        include!("../src/gpu/shader_check.rs");
    }
    let kernels = floe::gpu::kernels::KERNELS;
    for k in kernels {
        let bindings = check::check_kernel(k.source).unwrap_or_else(|e| panic!("{}: {e}", k.name));
        let listed: Vec<(u32, bool)> = bindings.iter().map(|b| (b.binding, b.read_only)).collect();
        assert_eq!(listed, k.bindings, "{}: bindings differ from the embedded table", k.name);
    }
    for template in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/wgsl")).unwrap() {
        let name = template.unwrap().file_name().into_string().unwrap();
        let included = ["weights.wgsl", "matvec.wgsl", "common.wgsl"].contains(&name.as_str());
        assert!(included || kernels.iter().any(|k| k.template == name), "no kernel rendered from wgsl/{name}");
    }
    println!("{} kernels checked", kernels.len());
}
