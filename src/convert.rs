//! Writing floe models (docs/FORMAT.md): `floe convert` from any checkpoint floe reads, and `floe synth`.
//!
//! The writer takes the layers one at a time, so memory stays bounded by one layer (mapped sources are not read
//! before they are written). Output goes to `DST.partial` and is renamed to DST only after every checksum has
//! been verified, so an interrupted run never leaves something that looks like a complete model.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use half::bf16;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::format::{self, ExpertTable, Manifest, Part, TensorEntry, ALIGN, DENSE_FILE, MANIFEST};
use crate::quant::{quantize_row, QuantFormat};
use crate::tensor::{Matrix, Tensor};
use crate::weights::{ExpertWeights, HostExperts, LayerWeights, Storage, Transfer, Weights};

/// Target quantization per kind of matrix; `None` keeps a matrix as its source stores it.
#[derive(Clone, Copy, Debug)]
pub struct QuantPlan {
    pub dense: Option<QuantFormat>,
    pub experts: Option<QuantFormat>,
    /// The router and the shared-expert gate (mlx-lm keeps them at 8 bits: routing is sensitive).
    pub gates: Option<QuantFormat>,
}

impl QuantPlan {
    pub const KEEP: QuantPlan = QuantPlan { dense: None, experts: None, gates: None };

    /// `bits` for dense matrices, `expert_bits` for routed experts, 8 bits for the gates, all in groups of `group`.
    pub fn new(bits: u32, expert_bits: u32, group: usize) -> Result<QuantPlan> {
        Ok(QuantPlan {
            dense: Some(QuantFormat::new(bits, group)?),
            experts: Some(QuantFormat::new(expert_bits, group)?),
            gates: Some(QuantFormat::new(8, group)?),
        })
    }
}

/// Copies these files from a source checkpoint when present (tokenizer, chat template, generation defaults).
const SIDE_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "special_tokens_map.json",
    "config.json",
];

pub struct Output<'a> {
    pub dst: &'a Path,
    pub force: bool,
    /// Where to copy tokenizer and chat files from.
    pub side_files_from: Option<&'a Path>,
    /// Files to write into the model (name, contents): `floe synth` gives its models the default tokenizer.
    pub extra_files: &'a [(&'a str, &'a str)],
}

/// Writes a floe model: `embed`, `lm_head`, `final_norm`, and `layer(i)` for each layer, quantized by `plan`.
pub fn write_model(
    out: &Output,
    config: &ModelConfig,
    plan: QuantPlan,
    top: (&Matrix, &Matrix, &[f32]),
    mut layer: impl FnMut(usize) -> Result<LayerWeights>,
    total_bytes_hint: u64,
) -> Result<()> {
    if out.dst.exists() && !out.force {
        bail!("{} already exists (use --force to replace it)", out.dst.display());
    }
    let partial = partial_path(out.dst);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).with_context(|| format!("cannot remove {}", partial.display()))?;
    }
    std::fs::create_dir_all(partial.join("experts")).with_context(|| format!("cannot create {}", partial.display()))?;
    let bar = ProgressBar::new(total_bytes_hint).with_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_message("writing");
    if std::env::var_os("FLOE_NO_PROGRESS").is_some() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }

    let mut dense = DenseWriter { file: BufWriter::new(File::create(partial.join(DENSE_FILE))?), tensors: BTreeMap::new() };
    let (embed, lm_head, final_norm) = top;
    dense.matrix("embed", &transform(embed, plan.dense))?;
    dense.matrix("lm_head", &transform(lm_head, plan.dense))?;
    dense.vector("final_norm", final_norm)?;
    let mut experts = ExpertTable { files: vec![], record_bytes: 0, stride: 0, components: BTreeMap::new(), xxh3: vec![] };
    for i in 0..config.num_layers() {
        let l = layer(i)?;
        let before = dense.file.stream_position()?;
        write_layer_dense(&mut dense, i, &l, plan)?;
        bar.inc(dense.file.stream_position()? - before);
        let name = format!("experts/layer_{i:03}.bin");
        let sums = write_experts(&partial.join(&name), l.moe.experts.resident()?, plan.experts, &mut experts, &bar)
            .with_context(|| format!("layer {i} experts"))?;
        experts.files.push(name);
        experts.xxh3.push(sums);
    }
    dense.file.flush()?;
    dense.file.get_ref().sync_all()?;
    let manifest = Manifest {
        format: "floe".into(),
        version: format::VERSION,
        config: config.clone(),
        tensors: dense.tensors,
        experts,
    };
    std::fs::write(partial.join(MANIFEST), serde_json::to_string_pretty(&manifest)?)?;
    if let Some(src) = out.side_files_from {
        for f in SIDE_FILES.iter().filter(|f| **f != "config.json" && src.join(f).exists()) {
            std::fs::copy(src.join(f), partial.join(f)).with_context(|| format!("cannot copy {f}"))?;
        }
    }
    for (name, contents) in out.extra_files {
        std::fs::write(partial.join(name), contents).with_context(|| format!("cannot write {name}"))?;
    }
    bar.finish_and_clear();

    // Read everything back before the model gets its name.
    let written = format::FloeModel::open(&partial)?;
    written.verify(|_| ()).context("verifying the written model")?;
    if out.dst.exists() {
        std::fs::remove_dir_all(out.dst).with_context(|| format!("cannot remove the old {}", out.dst.display()))?;
    }
    std::fs::rename(&partial, out.dst).with_context(|| format!("cannot rename to {}", out.dst.display()))?;
    Ok(())
}

/// Where a model being written to `dst` lives until it is complete.
pub fn partial_path(dst: &Path) -> PathBuf {
    let mut name = dst.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    dst.with_file_name(name)
}

fn write_layer_dense(w: &mut DenseWriter, i: usize, l: &LayerWeights, plan: QuantPlan) -> Result<()> {
    l.transfer(i, &mut LayerWriter { dense: w, plan })?;
    Ok(())
}

/// Writes a layer's dense tensors as `LayerWeights::transfer` names them, quantized by the plan (the router and
/// the shared-expert gate as gates); its experts go to their own file (`write_experts`).
struct LayerWriter<'a> {
    dense: &'a mut DenseWriter,
    plan: QuantPlan,
}

/// The storage of a written layer: nothing is kept.
struct Written;

impl Storage for Written {
    type Matrix = ();
    type Vector = ();
    type Experts = ();
}

impl Transfer<Written> for LayerWriter<'_> {
    fn matrix(&mut self, name: &str, m: &Matrix) -> Result<()> {
        let gate = name.ends_with(".moe.router") || name.ends_with(".moe.shared_gate");
        self.dense.matrix(name, &transform(m, if gate { self.plan.gates } else { self.plan.dense }))
    }

    fn vector(&mut self, name: &str, v: &[f32]) -> Result<()> {
        self.dense.vector(name, v)
    }

    fn experts(&mut self, _layer: usize, _experts: &HostExperts) -> Result<()> {
        Ok(())
    }
}

/// Writes one layer's expert records; returns their checksums. Fills in the table's layout from the first layer
/// and checks every later record has the same.
fn write_experts(
    path: &Path,
    experts: &[ExpertWeights],
    target: Option<QuantFormat>,
    table: &mut ExpertTable,
    bar: &ProgressBar,
) -> Result<Vec<String>> {
    let mut file = BufWriter::new(File::create(path).with_context(|| format!("cannot create {}", path.display()))?);
    let mut sums = Vec::with_capacity(experts.len());
    // Quantize a batch of experts in parallel, then write them in order: bounded memory, all cores busy.
    for batch in experts.chunks(32) {
        let records: Vec<Result<(BTreeMap<String, TensorEntry>, Vec<u8>)>> =
            batch.par_iter().map(|e| expert_record(e, target)).collect();
        for record in records {
            let (components, bytes) = record?;
            if table.record_bytes == 0 {
                table.record_bytes = bytes.len() as u64;
                table.stride = bytes.len().next_multiple_of(ALIGN as usize) as u64;
                table.components = components;
            } else if components != table.components {
                bail!("expert layouts differ between experts (all must share shapes and quantization)");
            }
            sums.push(format::hash_hex(&bytes));
            file.write_all(&bytes)?;
            file.write_all(&vec![0u8; (table.stride - table.record_bytes) as usize])?;
            bar.inc(table.stride);
        }
    }
    file.flush()?;
    file.get_ref().sync_all()?;
    Ok(sums)
}

/// One expert's gate, up and down matrices back to back, and where each part sits in the record.
pub fn expert_record(e: &ExpertWeights, target: Option<QuantFormat>) -> Result<(BTreeMap<String, TensorEntry>, Vec<u8>)> {
    let mut bytes = Vec::new();
    let mut components = BTreeMap::new();
    for (name, m) in [("gate", &e.gate), ("up", &e.up), ("down", &e.down)] {
        let m = transform(m, target);
        let (dtype, quant, parts) = encode(&m);
        let mut entry = TensorEntry { shape: m.shape().to_vec(), dtype, quant, parts: vec![] };
        for p in parts {
            entry.parts.push(Part { offset: bytes.len() as u64, bytes: p.len() as u64, xxh3: None });
            bytes.extend_from_slice(p);
        }
        components.insert(name.to_string(), entry);
    }
    Ok((components, bytes))
}

struct DenseWriter {
    file: BufWriter<File>,
    tensors: BTreeMap<String, TensorEntry>,
}

impl DenseWriter {
    fn matrix(&mut self, name: &str, m: &Matrix) -> Result<()> {
        let (dtype, quant, parts) = encode(m);
        let mut entry = TensorEntry { shape: m.shape().to_vec(), dtype, quant, parts: vec![] };
        for p in parts {
            let pos = self.file.stream_position()?;
            let offset = pos.next_multiple_of(ALIGN);
            self.file.write_all(&vec![0u8; (offset - pos) as usize])?;
            self.file.write_all(p)?;
            entry.parts.push(Part { offset, bytes: p.len() as u64, xxh3: Some(format::hash_hex(p)) });
        }
        self.tensors.insert(name.to_string(), entry);
        Ok(())
    }

    fn vector(&mut self, name: &str, v: &[f32]) -> Result<()> {
        self.matrix(name, &Matrix::Dense(Tensor::from_f32(vec![v.len()], v.to_vec())))
    }
}

/// The element type and the byte parts of a matrix as stored.
fn encode(m: &Matrix) -> (String, Option<QuantFormat>, Vec<&[u8]>) {
    match m {
        Matrix::Dense(t) => (format::dtype_name(t.dtype()).into(), None, vec![t.bytes()]),
        Matrix::Affine { words, scales, biases, format, .. } => (
            format::dtype_name(scales.dtype()).into(),
            Some(*format),
            vec![words.bytes(), scales.bytes(), biases.bytes()],
        ),
    }
}

/// `m` in the target quantization: unchanged when it already is, or when there is no target, or when its rows do
/// not fit the target's groups (then it stays as stored, as mlx-lm does).
fn transform(m: &Matrix, target: Option<QuantFormat>) -> Cow<'_, Matrix> {
    let Some(f) = target else { return Cow::Borrowed(m) };
    let cols = *m.shape().last().unwrap();
    match m {
        Matrix::Affine { format, .. } if *format == f => Cow::Borrowed(m),
        _ if !f.fits(cols) || m.shape().len() != 2 => Cow::Borrowed(m),
        _ => Cow::Owned(quantize_matrix(m, f)),
    }
}

/// Affine-quantizes a 2-D matrix row by row (bf16 scales and biases, as MLX stores them for bf16 weights).
pub fn quantize_matrix(m: &Matrix, f: QuantFormat) -> Matrix {
    let (rows, cols) = (m.shape()[0], m.shape()[1]);
    let (wpr, groups) = (f.words_per_row(cols), cols / f.group);
    let mut words = vec![0u32; rows * wpr];
    let mut scales = vec![bf16::ZERO; rows * groups];
    let mut biases = vec![bf16::ZERO; rows * groups];
    words
        .par_chunks_mut(wpr)
        .zip(scales.par_chunks_mut(groups).zip(biases.par_chunks_mut(groups)))
        .enumerate()
        .for_each_init(
            || (vec![0f32; cols], vec![0f32; groups], vec![0f32; groups]),
            |(row, s, b), (r, (w, (so, bo)))| {
                m.row_f32(r, row);
                quantize_row(row, f, w, s, b);
                so.iter_mut().zip(s.iter()).for_each(|(o, v)| *o = bf16::from_f32(*v));
                bo.iter_mut().zip(b.iter()).for_each(|(o, v)| *o = bf16::from_f32(*v));
            },
        );
    Matrix::Affine {
        words: Tensor::from_u32(vec![rows, wpr], words),
        scales: Tensor::from_bf16(vec![rows, groups], scales),
        biases: Tensor::from_bf16(vec![rows, groups], biases),
        format: f,
        shape: vec![rows, cols],
    }
}

/// Bytes a model's weights occupy as stored (for progress bars).
pub fn weights_bytes(w: &Weights) -> u64 {
    let mut total = (w.embed.size_bytes() + w.lm_head.size_bytes()) as u64;
    for l in &w.layers {
        total += l.moe.experts.bytes();
    }
    total
}
