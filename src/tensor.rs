//! A tensor: a GPU buffer with a shape and a dtype. Always contiguous, row-major. Reshaping
//! is free (same buffer), and so is a view of a range of rows ([`Tensor::narrow_rows`]): it
//! binds the same buffer at a byte offset, which must respect the adapter's storage offset
//! alignment when a kernel binds it (checked at dispatch).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::pool::{Allocation, Reuse};
use crate::gpu::{BufferRange, Gpu};

/// Element type. Quantized block types (Q8_0, Q4_1) will join as byte-addressed dtypes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    U32,
    I32,
}

impl DType {
    pub fn size(self) -> usize {
        4
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::U32 => "u32",
            DType::I32 => "i32",
        }
    }
}

#[derive(Clone)]
pub struct Tensor {
    alloc: Arc<Allocation>,
    /// Byte offset of element 0 in the buffer (non-zero for row views).
    offset: u64,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.dtype, self.shape)
    }
}

impl Tensor {
    /// An uninitialised tensor (its buffer may hold a previous tensor's data).
    pub fn empty(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Self::allocate(gpu, shape, dtype, Reuse::Output)
    }

    fn allocate(gpu: &Gpu, shape: &[usize], dtype: DType, reuse: Reuse) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        let bytes = (numel * dtype.size()) as u64;
        let alloc = gpu.allocate("tensor", "new tensor", bytes, reuse)?;
        Ok(Tensor { alloc: Arc::new(alloc), offset: 0, shape: shape.to_vec(), dtype })
    }

    pub fn zeros(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        let t = Tensor::empty(gpu, shape, DType::F32)?;
        gpu.clear(&t);
        Ok(t)
    }

    /// Zeros in a new buffer, for state kept across training steps (optimizer moments). Created
    /// mid-step, a pooled buffer would be one of the step's recycled temporaries, which the next
    /// step would then have to create again.
    pub fn zeros_kept(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        let t = Self::empty_kept(gpu, shape, DType::F32)?;
        gpu.clear(&t);
        Ok(t)
    }

    /// [`Tensor::empty`] in a new buffer, for state kept across steps (see [`Tensor::zeros_kept`]).
    pub fn empty_kept(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Self::allocate(gpu, shape, dtype, Reuse::Never)
    }

    pub fn from_f32(gpu: &Gpu, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Self::from_pod(gpu, data, shape, DType::F32)
    }

    pub fn from_u32(gpu: &Gpu, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        Self::from_pod(gpu, data, shape, DType::U32)
    }

    pub fn from_i32(gpu: &Gpu, data: &[i32], shape: &[usize]) -> Result<Tensor> {
        Self::from_pod(gpu, data, shape, DType::I32)
    }

    fn from_pod<T: bytemuck::Pod>(gpu: &Gpu, data: &[T], shape: &[usize], dtype: DType) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(Error::invalid(
                "upload",
                format!("shape {shape:?} holds {numel} elements but {} were given", data.len()),
            ));
        }
        let t = Tensor::allocate(gpu, shape, dtype, Reuse::Upload)?;
        gpu.write_fresh(&t, bytemuck::cast_slice(data));
        Ok(t)
    }

    /// Overwrites the contents (same number of elements).
    pub fn write_f32(&self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        self.expect_dtype("write_f32", DType::F32)?;
        if data.len() != self.numel() {
            return Err(Error::invalid(
                "write_f32",
                format!("tensor {:?} holds {} elements but {} were given", self.shape, self.numel(), data.len()),
            ));
        }
        gpu.write_bytes(self, bytemuck::cast_slice(data))
    }

    pub fn to_f32_vec(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        self.expect_dtype("to_f32_vec", DType::F32)?;
        Ok(bytemuck::cast_slice(&gpu.read_bytes(self, 0, self.byte_len())?).to_vec())
    }

    pub fn to_u32_vec(&self, gpu: &Gpu) -> Result<Vec<u32>> {
        Ok(bytemuck::cast_slice(&gpu.read_bytes(self, 0, self.byte_len())?).to_vec())
    }

    /// The same buffer under another shape with the same number of elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if numel != self.numel() {
            return Err(Error::invalid(
                "reshape",
                format!("cannot view {:?} ({} elements) as {shape:?}", self.shape, self.numel()),
            ));
        }
        Ok(Tensor { alloc: self.alloc.clone(), offset: self.offset, shape: shape.to_vec(), dtype: self.dtype })
    }

    /// Rows `start .. start + count` of the first dimension, sharing the buffer.
    pub fn narrow_rows(&self, start: usize, count: usize) -> Result<Tensor> {
        let rows = self.shape.first().copied().unwrap_or(1);
        if start + count > rows {
            return Err(Error::invalid(
                "narrow_rows",
                format!("rows {start}..{} of a tensor with {rows}", start + count),
            ));
        }
        let row_bytes = (self.numel() / rows.max(1) * self.dtype.size()) as u64;
        let mut shape = self.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = count;
        }
        Ok(Tensor {
            alloc: self.alloc.clone(),
            offset: self.offset + start as u64 * row_bytes,
            shape,
            dtype: self.dtype,
        })
    }

    /// Byte offset of this tensor's first element in its buffer.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Size of dimension `i`, counting from the end when negative (`dim(-1)` is the last).
    pub fn dim(&self, i: isize) -> usize {
        let idx = if i < 0 { self.shape.len() as isize + i } else { i };
        self.shape[idx as usize]
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn byte_len(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        self.alloc.buffer()
    }

    /// True when both tensors share one GPU buffer.
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.alloc, &other.alloc)
    }

    pub(crate) fn expect_dtype(&self, op: &'static str, dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::DType { op, expected: dtype.name(), found: self.dtype.name() });
        }
        Ok(())
    }
}

impl BufferRange for Tensor {
    fn buffer(&self) -> &wgpu::Buffer {
        Tensor::buffer(self)
    }

    fn offset(&self) -> u64 {
        Tensor::offset(self)
    }

    fn byte_len(&self) -> u64 {
        Tensor::byte_len(self)
    }
}
