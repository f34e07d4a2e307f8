//! Sequence packing (TRL's `packing`, unsloth's): several examples share a row of up to
//! `max_len` tokens, so a batch of short examples does not pay for padding.
//!
//! Each token carries its example's number in the row (1, 2, ...; 0 = padding) and its position
//! inside the example; the model then attends only within an example (a block-diagonal causal
//! mask) and restarts positions at each example, so every example's loss is what it is unpacked.
//! Targets never cross an example's end: its last token predicts nothing, as when padded alone.

use super::lm::{Example, LmBatch};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::softmax_xent::IGNORE_INDEX;
use crate::models::LmInput;
use crate::util::SplitMix64;

/// Packs examples (in order, or shuffled by `shuffle_seed`) into batches of up to `rows` rows of
/// at most `max_len` tokens each: an example goes into the first row of the batch it fits in
/// (first fit), a new row when none has room, a new batch when the rows are all taken. Each
/// batch is as long as its longest row.
pub fn pack_batches(
    examples: &[Example],
    rows: usize,
    max_len: usize,
    pad_id: u32,
    shuffle_seed: Option<u64>,
) -> Result<Vec<LmBatch>> {
    if rows == 0 || max_len == 0 {
        return Err(Error::invalid("--pack", "batch size and --max-len must be at least 1"));
    }
    for (i, e) in examples.iter().enumerate() {
        if e.ids.is_empty() || e.ids.len() != e.loss_mask.len() {
            return Err(Error::invalid(
                "--pack",
                format!("example {i} has {} ids and {} mask entries", e.ids.len(), e.loss_mask.len()),
            ));
        }
        if e.ids.len() > max_len {
            return Err(Error::invalid(
                "--pack",
                format!("example {i} has {} tokens, more than the {max_len} of a packed row (--max-len)", e.ids.len()),
            ));
        }
    }
    let mut order: Vec<usize> = (0..examples.len()).collect();
    if let Some(seed) = shuffle_seed {
        SplitMix64::new(seed).shuffle(&mut order);
    }
    let mut batches = Vec::new();
    // The rows of the batch being filled: the examples in each, and its length.
    let mut open: Vec<(Vec<&Example>, usize)> = Vec::new();
    for i in order {
        let e = &examples[i];
        let n = e.ids.len();
        if let Some(row) = open.iter_mut().find(|(_, len)| len + n <= max_len) {
            row.0.push(e);
            row.1 += n;
            continue;
        }
        if open.len() == rows {
            batches.push(build(&open, pad_id));
            open.clear();
        }
        open.push((vec![e], n));
    }
    if !open.is_empty() {
        batches.push(build(&open, pad_id));
    }
    Ok(batches)
}

/// One packed batch from its rows, right-padded to the longest.
fn build(rows: &[(Vec<&Example>, usize)], pad_id: u32) -> LmBatch {
    let batch = rows.len();
    let seq = rows.iter().map(|r| r.1).max().unwrap_or(0);
    let mut ids = vec![pad_id; batch * seq];
    let mut targets = vec![IGNORE_INDEX; batch * seq];
    let mut segments = vec![0u32; batch * seq];
    let mut positions = vec![0u32; batch * seq];
    let (mut tokens, mut target_count) = (0, 0);
    for (b, (examples, _)) in rows.iter().enumerate() {
        let mut at = b * seq;
        for (k, e) in examples.iter().enumerate() {
            let n = e.ids.len();
            ids[at..at + n].copy_from_slice(&e.ids);
            segments[at..at + n].fill(k as u32 + 1);
            for (t, p) in positions[at..at + n].iter_mut().enumerate() {
                *p = t as u32;
            }
            for t in 0..n - 1 {
                if e.loss_mask[t + 1] {
                    targets[at + t] = e.ids[t + 1] as i32;
                    target_count += 1;
                }
            }
            tokens += n;
            at += n;
        }
    }
    LmBatch { batch, seq, ids, targets, key_mask: segments, positions: Some(positions), tokens, target_count }
}

/// The model input of a batch, packed or padded.
pub fn lm_input(gpu: &Gpu, b: &LmBatch) -> Result<LmInput> {
    match &b.positions {
        Some(p) => LmInput::packed(gpu, b.ids.clone(), b.batch, b.seq, &b.key_mask, p.clone()),
        None => LmInput::new(gpu, b.ids.clone(), b.batch, b.seq, Some(&b.key_mask)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(n: usize, first: u32) -> Example {
        Example { ids: (first..first + n as u32).collect(), loss_mask: vec![true; n], truncated: false }
    }

    #[test]
    fn first_fit_rows_segments_positions_and_targets() {
        let examples = [ex(3, 10), ex(4, 20), ex(2, 30), ex(5, 40), ex(1, 50)];
        let batches = pack_batches(&examples, 2, 7, 0, None).unwrap();
        // Rows: [3, 4] (7), [2, 5] (7) fill the first batch; [1] starts the second.
        assert_eq!(batches.len(), 2);
        let b = &batches[0];
        assert_eq!((b.batch, b.seq, b.tokens), (2, 7, 14));
        assert_eq!(b.key_mask, [1, 1, 1, 2, 2, 2, 2, 1, 1, 2, 2, 2, 2, 2]);
        assert_eq!(b.positions.as_deref().unwrap(), [0, 1, 2, 0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 4]);
        // Each example's last token predicts nothing: no target crosses into the next example.
        assert_eq!(&b.targets[..7], [11, 12, IGNORE_INDEX, 21, 22, 23, IGNORE_INDEX]);
        assert_eq!(b.target_count, 2 + 3 + 1 + 4);
        assert_eq!(batches[1].key_mask, [1]);
    }

    #[test]
    fn too_long_an_example_names_the_flag() {
        let err = pack_batches(&[ex(9, 1)], 2, 8, 0, None).unwrap_err().to_string();
        assert!(err.contains("--max-len") && err.contains("9 tokens"), "{err}");
    }
}
