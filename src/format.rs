//! floe's model format (docs/FORMAT.md): a manifest, one file of dense tensors, one file of fixed-stride expert
//! records per layer. This module defines the manifest, reads a floe directory into [`Weights`] and verifies
//! checksums; `convert` writes it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::config::{LayerType, ModelConfig};
use crate::quant::QuantFormat;
use crate::store::{ExpertStore, StreamedLayer};
use crate::tensor::{Bytes, DType, Matrix, Tensor};
use crate::weights::*;

pub const MANIFEST: &str = "floe.json";
pub const VERSION: u32 = 1;
pub const DENSE_FILE: &str = "dense.bin";
/// Every tensor in dense.bin and every expert record starts on this boundary (O_DIRECT-friendly).
pub const ALIGN: u64 = 4096;

#[derive(Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub config: ModelConfig,
    /// Dense (non-expert) tensors by canonical name, in dense.bin.
    pub tensors: BTreeMap<String, TensorEntry>,
    pub experts: ExpertTable,
}

/// One tensor: a dense array (one part) or an affine-quantized matrix (parts: packed words, scales, biases).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TensorEntry {
    /// Logical shape ([out, in] for a matrix, [n] for a vector).
    pub shape: Vec<usize>,
    /// Element type of the values (dense) or of the scales and biases (quantized).
    pub dtype: String,
    pub quant: Option<QuantFormat>,
    pub parts: Vec<Part>,
}

/// A byte range: in dense.bin for dense tensors, within the record for expert components.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Part {
    pub offset: u64,
    pub bytes: u64,
    /// xxh3-64 of the bytes, hex (dense tensors only; experts are checked per record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExpertTable {
    /// One file per layer, relative to the model directory.
    pub files: Vec<String>,
    /// Bytes of one expert's gate, up and down matrices, back to back.
    pub record_bytes: u64,
    /// Distance between records: record_bytes rounded up to ALIGN. Expert e of layer l is at e × stride.
    pub stride: u64,
    /// gate, up, down: offsets relative to the start of a record.
    pub components: BTreeMap<String, TensorEntry>,
    /// xxh3-64 (hex) of each record's `record_bytes`, per layer, per expert.
    pub xxh3: Vec<Vec<String>>,
}

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::U32 => "u32",
    }
}

fn parse_dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => bail!("unknown dtype `{other}` in the manifest"),
    })
}

pub fn hash_hex(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

pub fn is_floe_dir(dir: &Path) -> bool {
    dir.join(MANIFEST).exists()
}

/// A floe directory, opened: its manifest and the mapped files.
pub struct FloeModel {
    pub dir: PathBuf,
    pub manifest: Manifest,
    dense: Bytes,
    expert_files: Vec<Bytes>,
}

impl FloeModel {
    pub fn open(dir: &Path) -> Result<FloeModel> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let probe: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
        if probe.get("format").and_then(|v| v.as_str()) != Some("floe") {
            bail!("{}: not a floe manifest", path.display());
        }
        let version = probe.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != VERSION as u64 {
            bail!("{}: floe format version {version}, but this floe reads version {VERSION}", path.display());
        }
        let manifest: Manifest =
            serde_json::from_value(probe).with_context(|| format!("{}: malformed manifest", path.display()))?;
        let dense_end = manifest.tensors.values().flat_map(|t| &t.parts).map(|p| p.offset + p.bytes).max().unwrap_or(0);
        let dense = map_file(&dir.join(DENSE_FILE), dense_end)?;
        let ex = &manifest.experts;
        let layer_bytes = manifest.config.num_experts as u64 * ex.stride;
        let expert_files = ex.files.iter().map(|f| map_file(&dir.join(f), layer_bytes)).collect::<Result<_>>()?;
        if ex.files.len() != manifest.config.num_layers() || ex.xxh3.len() != ex.files.len() {
            bail!("{}: the expert table does not list one file per layer", path.display());
        }
        Ok(FloeModel { dir: dir.to_path_buf(), manifest, dense, expert_files })
    }

    fn dense_matrix(&self, name: &str) -> Result<Matrix> {
        let e = self.manifest.tensors.get(name).with_context(|| format!("missing tensor {name} in the manifest"))?;
        entry_matrix(e, &self.dense, 0)
    }

    fn vector(&self, name: &str) -> Result<Vec<f32>> {
        match self.dense_matrix(name)? {
            Matrix::Dense(t) => Ok(t.to_f32()),
            Matrix::Affine { .. } => bail!("tensor {name}: expected a plain vector"),
        }
    }

    /// Expert `e` of layer `layer`, as views into the mapped layer file.
    pub fn expert(&self, layer: usize, e: usize) -> Result<ExpertWeights> {
        let base = e as u64 * self.manifest.experts.stride;
        let map = &self.expert_files[layer];
        let part = |name: &str| -> Result<Matrix> {
            let entry = self.manifest.experts.components.get(name).with_context(|| format!("no expert component {name}"))?;
            entry_matrix(entry, map, base)
        };
        Ok(ExpertWeights { gate: part("gate")?, up: part("up")?, down: part("down")? })
    }

    /// The bytes of one expert record (what one pread reads).
    pub fn expert_record(&self, layer: usize, e: usize) -> &[u8] {
        let start = (e as u64 * self.manifest.experts.stride) as usize;
        &self.expert_files[layer].as_ref().as_ref()[start..start + self.manifest.experts.record_bytes as usize]
    }

    pub fn dense_part(&self, p: &Part) -> &[u8] {
        &self.dense.as_ref().as_ref()[p.offset as usize..(p.offset + p.bytes) as usize]
    }

    /// The weights with every expert mapped in place (the OS pages them in as they are used).
    pub fn weights(&self) -> Result<Weights> {
        self.weights_with(|layer| {
            let experts = (0..self.manifest.config.num_experts).map(|e| self.expert(layer, e)).collect::<Result<_>>()?;
            Ok(HostExperts::Resident(experts))
        })
    }

    /// The weights with the routed experts left on disk, read through `store` as tokens route to them.
    pub fn streamed_weights(&self, store: Arc<ExpertStore>) -> Result<Weights> {
        self.weights_with(|layer| Ok(HostExperts::Streamed(StreamedLayer { store: store.clone(), layer })))
    }

    fn weights_with(&self, experts_of: impl Fn(usize) -> Result<HostExperts>) -> Result<Weights> {
        let c = &self.manifest.config;
        let mut layers = Vec::with_capacity(c.num_layers());
        for (i, lt) in c.layer_types.iter().enumerate() {
            let m = |n: &str| self.dense_matrix(&format!("layers.{i}.{n}"));
            let v = |n: &str| self.vector(&format!("layers.{i}.{n}"));
            let mixer = match lt {
                LayerType::FullAttention => Mixer::Attention(AttentionWeights {
                    q_proj: m("attn.q_proj")?,
                    k_proj: m("attn.k_proj")?,
                    v_proj: m("attn.v_proj")?,
                    o_proj: m("attn.o_proj")?,
                    q_norm: v("attn.q_norm")?,
                    k_norm: v("attn.k_norm")?,
                }),
                LayerType::LinearAttention => Mixer::Linear(LinearAttnWeights {
                    in_proj_qkv: m("linear.in_proj_qkv")?,
                    in_proj_z: m("linear.in_proj_z")?,
                    in_proj_b: m("linear.in_proj_b")?,
                    in_proj_a: m("linear.in_proj_a")?,
                    conv1d: v("linear.conv1d")?,
                    a_log: v("linear.a_log")?,
                    dt_bias: v("linear.dt_bias")?,
                    norm: v("linear.norm")?,
                    out_proj: m("linear.out_proj")?,
                }),
            };
            let shared = match c.shared_expert_intermediate_size {
                Some(_) => Some(SharedExpertWeights {
                    mlp: ExpertWeights { gate: m("moe.shared.gate")?, up: m("moe.shared.up")?, down: m("moe.shared.down")? },
                    gate: m("moe.shared_gate")?,
                }),
                None => None,
            };
            let experts = experts_of(i)?;
            layers.push(LayerWeights {
                input_norm: v("input_norm")?,
                post_attn_norm: v("post_attn_norm")?,
                mixer,
                moe: MoeWeights { router: m("moe.router")?, experts, shared },
            });
        }
        Ok(Weights {
            embed: self.dense_matrix("embed")?,
            layers,
            final_norm: self.vector("final_norm")?,
            lm_head: self.dense_matrix("lm_head")?,
        })
    }

    /// Checks every checksum; the error names the first tensor or expert record that does not match.
    pub fn verify(&self, mut progress: impl FnMut(u64)) -> Result<()> {
        for (name, t) in &self.manifest.tensors {
            for p in &t.parts {
                if p.xxh3.as_deref() != Some(hash_hex(self.dense_part(p)).as_str()) {
                    bail!("checksum mismatch in tensor {name} ({} bytes at offset {} of {DENSE_FILE})", p.bytes, p.offset);
                }
                progress(p.bytes);
            }
        }
        for (layer, sums) in self.manifest.experts.xxh3.iter().enumerate() {
            for (e, sum) in sums.iter().enumerate() {
                if hash_hex(self.expert_record(layer, e)) != *sum {
                    bail!("checksum mismatch in expert {e} of layer {layer} ({})", self.manifest.experts.files[layer]);
                }
                progress(self.manifest.experts.record_bytes);
            }
        }
        Ok(())
    }
}

fn map_file(path: &Path, needed: u64) -> Result<Bytes> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata()?.len();
    if len < needed {
        bail!("{} is truncated: {len} bytes, the manifest needs {needed}", path.display());
    }
    // SAFETY: read-only map of a file floe wrote; see Checkpoint::open on concurrent truncation.
    Ok(Arc::new(unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?))
}

/// The matrix an entry describes, its parts `base` bytes into `map`.
pub fn entry_matrix(e: &TensorEntry, map: &Bytes, base: u64) -> Result<Matrix> {
    let dtype = parse_dtype(&e.dtype)?;
    let at = |i: usize, shape: Vec<usize>, dtype: DType| -> Result<Tensor> {
        let p = e.parts.get(i).context("manifest entry lacks a part")?;
        let n: usize = shape.iter().product();
        if (n * dtype.size()) as u64 != p.bytes {
            bail!("manifest entry of shape {:?}: part {i} has {} bytes, expected {}", e.shape, p.bytes, n * dtype.size());
        }
        Ok(Tensor::mapped(shape, dtype, map.clone(), (base + p.offset) as usize))
    };
    Ok(match e.quant {
        None => Matrix::Dense(at(0, e.shape.clone(), dtype)?),
        Some(f) => {
            let (rows, cols) = (e.shape[0], e.shape[1]);
            Matrix::Affine {
                words: at(0, vec![rows, f.words_per_row(cols)], DType::U32)?,
                scales: at(1, vec![rows, cols / f.group], dtype)?,
                biases: at(2, vec![rows, cols / f.group], dtype)?,
                format: f,
                shape: e.shape.clone(),
            }
        }
    })
}
