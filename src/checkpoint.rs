//! Reading Hugging Face safetensors checkpoints: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Files are memory-mapped; tensors are views into the maps.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::tensor::{DType, Tensor};

struct Entry {
    file: usize,
    dtype: Option<DType>,
    stored_dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
}

pub struct Checkpoint {
    dir: PathBuf,
    maps: Vec<Arc<Mmap>>,
    tensors: HashMap<String, Entry>,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let files = shard_files(dir)?;
        let mut maps = Vec::new();
        let mut tensors = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: the file is mapped read-only; like every mmap-based loader we assume nobody truncates it
            // while we run (the streaming store, which must survive that, reads experts with pread instead).
            let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
            for (name, view) in st.tensors() {
                let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
                let dtype = match view.dtype() {
                    Dtype::F32 => Some(DType::F32),
                    Dtype::BF16 => Some(DType::BF16),
                    Dtype::F16 => Some(DType::F16),
                    Dtype::U32 => Some(DType::U32),
                    _ => None,
                };
                let shape = view.shape().to_vec();
                tensors.insert(name, Entry { file: i, dtype, stored_dtype: view.dtype(), shape, start });
            }
            maps.push(Arc::new(map));
        }
        Ok(Checkpoint { dir: dir.to_path_buf(), maps, tensors })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The stored shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        match self.tensors.get(name) {
            Some(e) => Ok(&e.shape),
            None => bail!("missing tensor {name} in {}", self.dir.display()),
        }
    }

    /// The tensor `name`, which must have shape `expected`.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let Some(e) = self.tensors.get(name) else {
            bail!("missing tensor {name} (expected shape {expected:?}) in {}", self.dir.display())
        };
        if e.shape != expected {
            bail!("tensor {name}: expected shape {expected:?}, found {:?}", e.shape);
        }
        let Some(dtype) = e.dtype else {
            bail!("tensor {name}: unsupported dtype {:?} (floe reads f32, bf16, f16 and packed u32)", e.stored_dtype)
        };
        Ok(Tensor::mapped(e.shape.clone(), dtype, self.maps[e.file].clone(), e.start))
    }

    /// A small float tensor (norm weights, biases, …) as f32 values.
    pub fn get_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let t = self.get(name, expected)?;
        if t.dtype() == DType::U32 {
            bail!("tensor {name}: expected floats, found packed u32");
        }
        Ok(t.to_f32())
    }
}

/// The safetensors files of a checkpoint directory, from its index when it has one.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", index.display()))?;
        let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
            bail!("{}: no \"weight_map\" object", index.display())
        };
        let names: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        return Ok(names.into_iter().map(|n| dir.join(n)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    bail!("{}: no model.safetensors or model.safetensors.index.json", dir.display())
}
