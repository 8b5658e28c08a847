//! NumPy `.npy` files: how `floe logits` hands logits to other tools, and how tests read reference logits.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use npyz::WriterBuilder;

/// Writes `values` as a float32 array of `shape`, to a temporary name first, then renamed into place.
pub fn write_f32(path: &Path, shape: &[usize], values: &[f32]) -> Result<()> {
    assert_eq!(shape.iter().product::<usize>(), values.len());
    let tmp = path.with_extension("npy.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = BufWriter::new(std::fs::File::create(&tmp)?);
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let mut w = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut file).begin_nd()?;
        w.extend(values.iter().copied())?;
        w.finish()?;
        file.flush()
    };
    if let Err(e) = write().and_then(|_| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}

/// Reads a float32 `.npy` file: its shape and values.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..]).with_context(|| format!("{}: not a .npy file", path.display()))?;
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    let values = npy.into_vec::<f32>().with_context(|| format!("{}: not float32", path.display()))?;
    Ok((shape, values))
}
