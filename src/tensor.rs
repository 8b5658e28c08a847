//! Weight tensors: a shape plus elements that live either in a memory-mapped checkpoint file (no copy) or in memory.
//!
//! Kernels read a tensor through [`Tensor::elems`], which gives the raw element slice in its stored dtype; they
//! convert to f32 as they go, so a bf16 checkpoint costs its own size in memory, not twice it.

use std::ops::Range;
use std::sync::Arc;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::quant::{dequantize_row, QuantFormat};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    BF16,
    F16,
    /// Packed quantized values (see [`crate::quant`]).
    U32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
}

/// The elements of a tensor in their stored type.
pub enum Elems<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
    U32(&'a [u32]),
}

/// Bytes a tensor can view in place: a mapped file (`Arc<Mmap>`) or a buffer read from one.
pub type Bytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

#[derive(Clone)]
enum Data {
    F32(Arc<[f32]>),
    BF16(Arc<[bf16]>),
    F16(Arc<[f16]>),
    U32(Arc<[u32]>),
    /// Elements at byte `start` of shared bytes (a mapped file, an expert record read from disk); `start` is
    /// aligned for `dtype` (checked on creation).
    Mapped { map: Bytes, start: usize, dtype: DType },
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

    /// This tensor's values converted (rounded) to `dtype`, as a new owned tensor.
    pub fn cast(&self, dtype: DType) -> Tensor {
        let values = self.to_f32();
        let data = match dtype {
            DType::F32 => Data::F32(values.into()),
            DType::BF16 => Data::BF16(values.iter().map(|&v| bf16::from_f32(v)).collect()),
            DType::F16 => Data::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
            DType::U32 => panic!("cannot cast values to u32"),
        };
        Tensor { shape: self.shape.clone(), data, offset: 0 }
    }

    pub fn from_u32(shape: Vec<usize>, values: Vec<u32>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "shape {shape:?} does not match the data");
        Tensor { shape, data: Data::U32(values.into()), offset: 0 }
    }

    /// A tensor over `map[start..]`; copies the bytes instead when they are not aligned for `dtype`.
    pub fn mapped(shape: Vec<usize>, dtype: DType, map: Bytes, start: usize) -> Tensor {
        let len: usize = shape.iter().product();
        if (map.as_ref().as_ref().as_ptr() as usize + start) % dtype.size() == 0 {
            return Tensor { shape, data: Data::Mapped { map, start, dtype }, offset: 0 };
        }
        // Misaligned (some writers do not pad the safetensors header): copy, keeping the dtype.
        let bytes = &map.as_ref().as_ref()[start..start + len * dtype.size()];
        let data = match dtype {
            DType::F32 => Data::F32(bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()),
            DType::BF16 => Data::BF16(bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]])).collect()),
            DType::F16 => Data::F16(bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect()),
            DType::U32 => Data::U32(bytes.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect()),
        };
        Tensor { shape, data, offset: 0 }
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
            Data::F16(_) => DType::F16,
            Data::U32(_) => DType::U32,
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

    /// A new tensor made of rows `order` of this one (a copy).
    pub fn gather_rows(&self, order: &[usize]) -> Tensor {
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = order.len();
        let data = match self.elems() {
            Elems::U32(v) => Data::U32(order.iter().flat_map(|&r| v[r * row..(r + 1) * row].iter().copied()).collect()),
            Elems::BF16(v) => Data::BF16(order.iter().flat_map(|&r| v[r * row..(r + 1) * row].iter().copied()).collect()),
            Elems::F16(v) => Data::F16(order.iter().flat_map(|&r| v[r * row..(r + 1) * row].iter().copied()).collect()),
            Elems::F32(v) => Data::F32(order.iter().flat_map(|&r| v[r * row..(r + 1) * row].iter().copied()).collect()),
        };
        Tensor { shape, data, offset: 0 }
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
            Data::F16(v) => Elems::F16(&v[r]),
            Data::U32(v) => Elems::U32(&v[r]),
            Data::Mapped { map, start, dtype } => {
                let bytes = &map.as_ref().as_ref()[*start + r.start * dtype.size()..*start + r.end * dtype.size()];
                match dtype {
                    DType::F32 => Elems::F32(bytemuck::cast_slice(bytes)),
                    DType::BF16 => Elems::BF16(bytemuck::cast_slice(bytes)),
                    DType::F16 => Elems::F16(bytemuck::cast_slice(bytes)),
                    DType::U32 => Elems::U32(bytemuck::cast_slice(bytes)),
                }
            }
        }
    }

    /// All elements as f32 (a copy; for small tensors such as norms and biases).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.len()];
        self.elems().to_f32(0..self.len(), &mut out);
        out
    }

    /// The stored bytes (little-endian), for writing the tensor out unchanged.
    pub fn bytes(&self) -> &[u8] {
        match self.elems() {
            Elems::F32(v) => bytemuck::cast_slice(v),
            Elems::BF16(v) => bytemuck::cast_slice(v),
            Elems::F16(v) => bytemuck::cast_slice(v),
            Elems::U32(v) => bytemuck::cast_slice(v),
        }
    }
}

impl Elems<'_> {
    /// Element `i` as f32.
    pub fn get_f32(&self, i: usize) -> f32 {
        match self {
            Elems::F32(v) => v[i],
            Elems::BF16(v) => v[i].to_f32(),
            Elems::F16(v) => v[i].to_f32(),
            Elems::U32(_) => panic!("packed quantized words are not float values"),
        }
    }

    /// Elements `range` converted to f32 into `out`. Panics on packed words, which are not values.
    pub fn to_f32(&self, range: Range<usize>, out: &mut [f32]) {
        match self {
            Elems::F32(v) => out.copy_from_slice(&v[range]),
            Elems::BF16(v) => v[range].convert_to_f32_slice(out),
            Elems::F16(v) => v[range].convert_to_f32_slice(out),
            Elems::U32(_) => panic!("packed quantized words are not float values"),
        }
    }
}

/// A weight matrix `[.., out, in]` (a stack of them for experts), dense or affine-quantized.
#[derive(Clone)]
pub enum Matrix {
    Dense(Tensor),
    /// MLX affine quantization: `words [.., out, in·bits/32]` u32, `scales` and `biases` `[.., out, in/group]`.
    Affine { words: Tensor, scales: Tensor, biases: Tensor, format: QuantFormat, shape: Vec<usize> },
}

impl Matrix {
    pub fn shape(&self) -> &[usize] {
        match self {
            Matrix::Dense(t) => t.shape(),
            Matrix::Affine { shape, .. } => shape,
        }
    }

    pub fn rows(&self, range: Range<usize>) -> Matrix {
        self.map(|t| t.rows(range.clone()), |shape| shape[0] = range.len())
    }

    /// A new matrix made of rows `order` of this one (a copy).
    pub fn gather_rows(&self, order: &[usize]) -> Matrix {
        self.map(|t| t.gather_rows(order), |shape| shape[0] = order.len())
    }

    /// Entry `i` of the first axis (expert `i` of a stacked `[E, out, in]` matrix).
    pub fn index(&self, i: usize) -> Matrix {
        self.map(|t| t.index(i), |shape| {
            shape.remove(0);
        })
    }

    fn map(&self, f: impl Fn(&Tensor) -> Tensor, reshape: impl FnOnce(&mut Vec<usize>)) -> Matrix {
        match self {
            Matrix::Dense(t) => Matrix::Dense(f(t)),
            Matrix::Affine { words, scales, biases, format, shape } => {
                let mut shape = shape.clone();
                reshape(&mut shape);
                Matrix::Affine { words: f(words), scales: f(scales), biases: f(biases), format: *format, shape }
            }
        }
    }

    /// The rows of `self` then those of `other` (2-D, same width and format), as a new matrix.
    pub fn concat_rows(&self, other: &Matrix) -> Option<Matrix> {
        let cat = |a: &Tensor, b: &Tensor| -> Option<Tensor> {
            if a.dtype() != b.dtype() || a.shape()[1..] != b.shape()[1..] {
                return None;
            }
            let mut shape = a.shape().to_vec();
            shape[0] += b.shape()[0];
            if let (Elems::U32(x), Elems::U32(y)) = (a.elems(), b.elems()) {
                return Some(Tensor::from_u32(shape, [x, y].concat()));
            }
            // Through f32 and back: exact for values that came from the dtype.
            Some(Tensor::from_f32(shape, [a.to_f32(), b.to_f32()].concat()).cast(a.dtype()))
        };
        match (self, other) {
            (Matrix::Dense(a), Matrix::Dense(b)) => Some(Matrix::Dense(cat(a, b)?)),
            (
                Matrix::Affine { words, scales, biases, format, shape },
                Matrix::Affine { words: w2, scales: s2, biases: b2, format: f2, shape: shape2 },
            ) if format == f2 && shape[1] == shape2[1] => Some(Matrix::Affine {
                words: cat(words, w2)?,
                scales: cat(scales, s2)?,
                biases: cat(biases, b2)?,
                format: *format,
                shape: vec![shape[0] + shape2[0], shape[1]],
            }),
            _ => None,
        }
    }

    /// Row `r` of a 2-D matrix as f32 values, into `out` (dequantized for an affine matrix).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let cols = *self.shape().last().unwrap();
        match self {
            Matrix::Dense(t) => t.elems().to_f32(r * cols..(r + 1) * cols, out),
            Matrix::Affine { words, scales, biases, format, .. } => {
                let Elems::U32(words) = words.elems() else { panic!("quantized words are not u32") };
                let wpr = format.words_per_row(cols);
                let groups = cols / format.group;
                let (scales, biases) = (scales.elems(), biases.elems());
                let scale = |g: usize| scales.get_f32(r * groups + g);
                let bias = |g: usize| biases.get_f32(r * groups + g);
                dequantize_row(&words[r * wpr..(r + 1) * wpr], *format, scale, bias, out);
            }
        }
    }

    /// Bytes it occupies (weights, scales and biases).
    pub fn size_bytes(&self) -> usize {
        let size = |t: &Tensor| t.len() * t.dtype().size();
        match self {
            Matrix::Dense(t) => size(t),
            Matrix::Affine { words, scales, biases, .. } => size(words) + size(scales) + size(biases),
        }
    }
}
