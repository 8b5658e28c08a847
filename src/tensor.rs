//! Weight tensors: a shape plus elements that live either in a memory-mapped checkpoint file (no copy) or in memory.
//!
//! Kernels read a tensor through [`Tensor::elems`], which gives the raw element slice in its stored dtype; they
//! convert to f32 as they go, so a bf16 checkpoint costs its own size in memory, not twice it.

use std::ops::Range;
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
}

/// The elements of a tensor in their stored type.
pub enum Elems<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

#[derive(Clone)]
enum Data {
    F32(Arc<[f32]>),
    BF16(Arc<[bf16]>),
    /// `len` bytes at `start` of a mapped file; `start` is aligned for `dtype` (checked on creation).
    Mapped { map: Arc<Mmap>, start: usize, dtype: DType },
}

#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Data,
    /// First element of this view (views share `data`: an expert of a fused [E, 2I, H] tensor is a view).
    offset: usize,
}

impl Tensor {
    pub fn from_f32(shape: Vec<usize>, values: Vec<f32>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape {shape:?} does not match the data");
        Tensor { shape, data: Data::F32(values.into()), offset: 0 }
    }

    pub fn from_bf16(shape: Vec<usize>, values: Vec<bf16>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape {shape:?} does not match the data");
        Tensor { shape, data: Data::BF16(values.into()), offset: 0 }
    }

    /// A tensor over `map[start..]`; copies the bytes instead when they are not aligned for `dtype`.
    pub fn mapped(shape: Vec<usize>, dtype: DType, map: Arc<Mmap>, start: usize) -> Tensor {
        let len: usize = shape.iter().product();
        if (map.as_ptr() as usize + start) % dtype.size() == 0 {
            return Tensor { shape, data: Data::Mapped { map, start, dtype }, offset: 0 };
        }
        let bytes = &map[start..start + len * dtype.size()];
        let values = match dtype {
            DType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            DType::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            DType::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        };
        Tensor::from_f32(shape, values)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match &self.data {
            Data::F32(_) => DType::F32,
            Data::BF16(_) => DType::BF16,
            Data::Mapped { dtype, .. } => *dtype,
        }
    }

    /// Rows (first-axis entries) `range` of this tensor, sharing its data.
    pub fn rows(&self, range: Range<usize>) -> Tensor {
        assert!(range.start <= range.end && range.end <= self.shape[0], "rows {range:?} of {:?}", self.shape);
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = range.len();
        Tensor { shape, data: self.data.clone(), offset: self.offset + range.start * row }
    }

    /// Entry `i` of the first axis, with that axis dropped (expert `i` of a stacked [E, out, in] tensor).
    pub fn index(&self, i: usize) -> Tensor {
        let mut t = self.rows(i..i + 1);
        t.shape.remove(0);
        t
    }

    pub fn elems(&self) -> Elems<'_> {
        let r = self.offset..self.offset + self.len();
        match &self.data {
            Data::F32(v) => Elems::F32(&v[r]),
            Data::BF16(v) => Elems::BF16(&v[r]),
            Data::Mapped { map, start, dtype } => {
                let bytes = &map[*start + r.start * dtype.size()..*start + r.end * dtype.size()];
                match dtype {
                    DType::F32 => Elems::F32(bytemuck::cast_slice(bytes)),
                    DType::BF16 => Elems::BF16(bytemuck::cast_slice(bytes)),
                    DType::F16 => Elems::F16(bytemuck::cast_slice(bytes)),
                }
            }
        }
    }

    /// All elements as f32 (a copy; for small tensors such as norms and biases).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.elems() {
            Elems::F32(v) => v.to_vec(),
            Elems::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Elems::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }
}
