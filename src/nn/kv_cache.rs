//! Keys and values of the tokens generated so far, one pair of buffers per layer, so each new
//! token costs one position's forward instead of the whole sequence's.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tensor::Tensor;

pub struct KvCache {
    /// Per layer: `[batch, capacity, kv_heads, head_dim]`.
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub batch: usize,
    pub capacity: usize,
    /// Positions filled.
    pub len: usize,
}

impl KvCache {
    pub fn new(
        gpu: &Gpu,
        layers: usize,
        batch: usize,
        capacity: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let shape = [batch, capacity, kv_heads, head_dim];
        let mut k = Vec::with_capacity(layers);
        let mut v = Vec::with_capacity(layers);
        for _ in 0..layers {
            k.push(Tensor::zeros(gpu, &shape)?);
            v.push(Tensor::zeros(gpu, &shape)?);
        }
        Ok(KvCache { k, v, batch, capacity, len: 0 })
    }

    /// Copies the new keys and values `[batch, t, kv_heads, head_dim]` of `layer` in after the
    /// cached ones. The caller advances `len` once all layers are written.
    pub fn append(&self, gpu: &Gpu, layer: usize, k_new: &Tensor, v_new: &Tensor) -> Result<()> {
        let t = k_new.dim(1);
        if self.len + t > self.capacity {
            return Err(Error::invalid(
                "kv_cache",
                format!("{} cached + {t} new tokens exceed the cache's {} positions", self.len, self.capacity),
            ));
        }
        let row = k_new.numel() / (self.batch * t);
        for (cache, new) in [(&self.k[layer], k_new), (&self.v[layer], v_new)] {
            let cache_rows = cache.reshape(&[self.batch * self.capacity, row])?;
            let new_rows = new.reshape(&[self.batch * t, row])?;
            for b in 0..self.batch {
                gpu.copy(&new_rows.narrow_rows(b * t, t)?, &cache_rows.narrow_rows(b * self.capacity + self.len, t)?)?;
            }
        }
        Ok(())
    }
}
