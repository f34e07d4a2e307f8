//! A process-wide cache of the `head` strategy's frozen-body features, for `kiln tune`: every
//! trial of a study on the same model and texts would otherwise run the whole encoder again
//! (minutes on a CPU adapter) to get the same vectors.
//!
//! Off unless [`enable`] is called, so a plain `kiln train` holds nothing extra. The key is
//! everything the features depend on, taken from the values themselves rather than from names:
//! the adapter, a hash of every body weight (read back from the GPU, so a different checkpoint
//! at the same path can never hit), the pooling, the batch size (batches are padded to their
//! longest text; keeping it in the key means a hit returns bit for bit what the run would have
//! computed), the pad id and the token ids of every text. A hit is therefore exactly the vectors
//! a fresh computation would give, which is what lets `best.toml` reproduce a trial's score.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::autograd::Module;
use crate::data::encode::Encoded;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::models::classifier::SequenceClassifier;

/// None: caching is off.
static CACHE: Mutex<Option<HashMap<u64, Arc<Vec<f32>>>>> = Mutex::new(None);

/// Turns the cache on for the rest of the process.
pub fn enable() {
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    c.get_or_insert_with(HashMap::new);
}

fn enabled() -> bool {
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// [`super::classify::features`] through the cache when it is on.
pub fn features(gpu: &Gpu, model: &SequenceClassifier, items: &[Encoded], batch: usize, pad: u32) -> Result<Vec<f32>> {
    if !enabled() {
        return super::classify::features(gpu, model, items, batch, pad);
    }
    let key = key(gpu, model, items, batch, pad)?;
    if let Some(hit) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|c| c.get(&key).cloned()) {
        return Ok(hit.as_ref().clone());
    }
    let computed = super::classify::features(gpu, model, items, batch, pad)?;
    if let Some(c) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        c.insert(key, Arc::new(computed.clone()));
    }
    Ok(computed)
}

fn key(gpu: &Gpu, model: &SequenceClassifier, items: &[Encoded], batch: usize, pad: u32) -> Result<u64> {
    let mut h = crate::util::Hash64::default();
    h.bytes(gpu.describe().as_bytes());
    h.bytes(format!("{:?}", model.pooling).as_bytes());
    h.u64(batch as u64);
    h.u64(pad as u64);
    let mut tensors = Vec::new();
    model.body.visit_params(&mut |p| tensors.push((p.name.clone(), p.value.clone())));
    for (name, value) in tensors {
        h.bytes(name.as_bytes());
        for &d in value.shape() {
            h.u64(d as u64);
        }
        for x in value.to_f32_vec(gpu)? {
            h.u64(x.to_bits() as u64);
        }
    }
    h.u64(items.len() as u64);
    for e in items {
        h.u64(e.ids.len() as u64);
        for (&i, &t) in e.ids.iter().zip(&e.types) {
            h.u64(((i as u64) << 32) | t as u64);
        }
    }
    Ok(h.0)
}
