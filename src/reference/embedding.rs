//! Embedding lookup. table [V, C]; ids [N]; out, dout [N, C].

pub fn gather(table: &[f64], cols: usize, ids: &[u32]) -> Vec<f64> {
    ids.iter().flat_map(|&id| table[id as usize * cols..(id as usize + 1) * cols].iter().copied()).collect()
}

/// dtable[ids[n]] += dout[n].
pub fn scatter_add(dout: &[f64], cols: usize, ids: &[u32], dtable: &mut [f64]) {
    for (n, &id) in ids.iter().enumerate() {
        for c in 0..cols {
            dtable[id as usize * cols + c] += dout[n * cols + c];
        }
    }
}
