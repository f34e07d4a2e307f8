//! Attention forward (out, lse) and backward (dq, dk, dv) vs the reference, over causal and
//! padding masks, sliding windows, grouped-query heads, and sequence lengths off the
//! 64-row/16-key tiles.

use kiln::Tensor;
use kiln::kernels::attention::{self, AttentionSpec};
use kiln::reference::attention as r;

use crate::common::*;

const ATOL: f64 = 2e-5;
const RTOL: f64 = 1e-4;

#[allow(clippy::too_many_arguments)]
fn case(rng: &mut Rng, b: usize, t: usize, hq: usize, hkv: usize, d: usize, causal: bool, padded: bool) {
    windowed(rng, (b, t, hq, hkv, d), causal, padded, None);
}

fn windowed(
    rng: &mut Rng,
    (b, t, hq, hkv, d): (usize, usize, usize, usize, usize),
    causal: bool,
    padded: bool,
    window: Option<usize>,
) {
    let gpu = gpu();
    let spec = AttentionSpec::new(b, t, hq, hkv, d, causal).with_window(window);
    let (nq, nk) = (b * t * hq * d, b * t * hkv * d);
    let (q, k, v, dout) = (rng.vec(nq), rng.vec(nk), rng.vec(nk), rng.vec(nq));
    // Batch entry i has its last i·3 positions as padding.
    let mask: Vec<bool> = (0..b * t).map(|i| (i % t) + (i / t) * 3 < t || i / t == 0).collect();
    let mask_u32: Vec<u32> = mask.iter().map(|&m| m as u32).collect();
    let mask_t = Tensor::from_u32(gpu, &mask_u32, &[b, t]).unwrap();
    let key_mask = padded.then_some(&mask_t);
    let (qt, kt, vt) = (upload(&q, &[b, t, hq, d]), upload(&k, &[b, t, hkv, d]), upload(&v, &[b, t, hkv, d]));
    let fwd = attention::forward(gpu, &spec, &qt, &kt, &vt, key_mask).unwrap();
    let dims = r::Dims { b, t, hq, hkv, d, causal, scale: spec.scale as f64, window, segments: None };
    let m = padded.then_some(&mask[..]);
    let (want_out, want_lse) = r::forward(&dims, &f64s(&q), &f64s(&k), &f64s(&v), m);
    let what =
        format!("attention b={b} t={t} hq={hq} hkv={hkv} d={d} causal={causal} padded={padded} window={window:?}");
    assert_close(&format!("{what} out"), &download(&fwd.out), &want_out, ATOL, RTOL);
    let stats = download(&fwd.stats);
    assert_close(&format!("{what} lse"), &stats[..b * hq * t], &want_lse, ATOL, RTOL);

    let (dq, dk, dv) =
        (Tensor::zeros(gpu, &[nq]).unwrap(), Tensor::zeros(gpu, &[nk]).unwrap(), Tensor::zeros(gpu, &[nk]).unwrap());
    attention::backward(gpu, &spec, &qt, &kt, &vt, key_mask, &fwd, &upload(&dout, &[nq]), (&dq, &dk, &dv), false)
        .unwrap();
    let (wq, wk, wv) = r::backward(&dims, &f64s(&q), &f64s(&k), &f64s(&v), m, &f64s(&dout));
    let tol = ATOL * (t as f64).sqrt();
    assert_close(&format!("{what} dq"), &download(&dq), &wq, tol, RTOL * 10.0);
    assert_close(&format!("{what} dk"), &download(&dk), &wk, tol, RTOL * 10.0);
    assert_close(&format!("{what} dv"), &download(&dv), &wv, tol, RTOL * 10.0);
}

#[test]
fn attention_small_and_awkward() {
    let mut rng = Rng::new(90);
    case(&mut rng, 1, 1, 1, 1, 1, true, false);
    case(&mut rng, 2, 7, 3, 3, 5, false, true);
    case(&mut rng, 2, 17, 4, 2, 8, true, true);
    case(&mut rng, 1, 65, 3, 1, 32, true, false);
    case(&mut rng, 3, 13, 2, 1, 64, false, false);
}

#[test]
fn attention_longer_sequence() {
    let mut rng = Rng::new(91);
    case(&mut rng, 1, 200, 2, 1, 64, true, true);
}

/// Sliding windows shorter than the sequence: inside one 16-key tile, across tiles, across the
/// 64-row blocks (so whole key tiles and query tiles are skipped), and longer than the sequence
/// (the same as no window).
#[test]
fn attention_sliding_window() {
    let mut rng = Rng::new(93);
    windowed(&mut rng, (1, 7, 2, 1, 5), true, false, Some(4));
    windowed(&mut rng, (2, 17, 4, 2, 8), true, true, Some(1));
    windowed(&mut rng, (2, 33, 3, 3, 6), true, true, Some(16));
    windowed(&mut rng, (1, 150, 2, 1, 16), true, false, Some(37));
    windowed(&mut rng, (1, 140, 2, 2, 8), true, true, Some(70));
    windowed(&mut rng, (1, 9, 1, 1, 4), true, false, Some(100));
}

/// Packed rows: each row holds examples of the given lengths (then padding); every query sees
/// only the keys of its own example, in forward and both backward passes. Segments cross the
/// 16-key tiles and the 64-row blocks; with grouped heads and with a sliding window.
fn packed(rng: &mut Rng, (hq, hkv, d): (usize, usize, usize), rows: &[&[usize]], t: usize, window: Option<usize>) {
    let gpu = gpu();
    let b = rows.len();
    let mut seg = vec![0u32; b * t];
    for (bi, lens) in rows.iter().enumerate() {
        let mut pos = 0;
        for (e, &len) in lens.iter().enumerate() {
            seg[bi * t + pos..bi * t + pos + len].fill(e as u32 + 1);
            pos += len;
        }
    }
    let spec = AttentionSpec::new(b, t, hq, hkv, d, true).with_window(window).with_segments(true);
    let (nq, nk) = (b * t * hq * d, b * t * hkv * d);
    let (q, k, v, dout) = (rng.vec(nq), rng.vec(nk), rng.vec(nk), rng.vec(nq));
    let seg_t = Tensor::from_u32(gpu, &seg, &[b, t]).unwrap();
    let (qt, kt, vt) = (upload(&q, &[b, t, hq, d]), upload(&k, &[b, t, hkv, d]), upload(&v, &[b, t, hkv, d]));
    let fwd = attention::forward(gpu, &spec, &qt, &kt, &vt, Some(&seg_t)).unwrap();
    let dims =
        r::Dims { b, t, hq, hkv, d, causal: true, scale: spec.scale as f64, window, segments: Some(seg.clone()) };
    let mask: Vec<bool> = seg.iter().map(|&s| s != 0).collect();
    let (want_out, want_lse) = r::forward(&dims, &f64s(&q), &f64s(&k), &f64s(&v), Some(&mask));
    let what = format!("packed attention rows={rows:?} t={t} hq={hq} hkv={hkv} d={d} window={window:?}");
    assert_close(&format!("{what} out"), &download(&fwd.out), &want_out, ATOL, RTOL);
    assert_close(&format!("{what} lse"), &download(&fwd.stats)[..b * hq * t], &want_lse, ATOL, RTOL);
    let (dq, dk, dv) =
        (Tensor::zeros(gpu, &[nq]).unwrap(), Tensor::zeros(gpu, &[nk]).unwrap(), Tensor::zeros(gpu, &[nk]).unwrap());
    attention::backward(gpu, &spec, &qt, &kt, &vt, Some(&seg_t), &fwd, &upload(&dout, &[nq]), (&dq, &dk, &dv), false)
        .unwrap();
    let (wq, wk, wv) = r::backward(&dims, &f64s(&q), &f64s(&k), &f64s(&v), Some(&mask), &f64s(&dout));
    let tol = ATOL * (t as f64).sqrt();
    assert_close(&format!("{what} dq"), &download(&dq), &wq, tol, RTOL * 10.0);
    assert_close(&format!("{what} dk"), &download(&dk), &wk, tol, RTOL * 10.0);
    assert_close(&format!("{what} dv"), &download(&dv), &wv, tol, RTOL * 10.0);
}

#[test]
fn attention_packed_segments() {
    let mut rng = Rng::new(94);
    packed(&mut rng, (2, 1, 5), &[&[3, 4], &[1, 2, 2]], 7, None);
    packed(&mut rng, (4, 2, 8), &[&[17, 5, 9], &[30], &[1, 1, 1, 20]], 33, None);
    packed(&mut rng, (3, 3, 16), &[&[70, 3, 40], &[64, 50]], 130, None);
    packed(&mut rng, (2, 1, 8), &[&[20, 45, 6], &[9, 9]], 75, Some(12));
}

#[test]
fn attention_packed_needs_the_mask() {
    let gpu = gpu();
    let z = Tensor::zeros(gpu, &[32]).unwrap();
    let spec = AttentionSpec::new(1, 4, 1, 1, 8, true).with_segments(true);
    let err = attention::forward(gpu, &spec, &z, &z, &z, None).err().expect("segments without a mask").to_string();
    assert!(err.contains("segment"), "{err}");
}

#[test]
fn attention_rejects_bad_windows() {
    let gpu = gpu();
    let z = Tensor::zeros(gpu, &[32]).unwrap();
    let spec = AttentionSpec::new(1, 4, 1, 1, 8, true).with_window(Some(0));
    let err = attention::forward(gpu, &spec, &z, &z, &z, None).err().expect("window 0 is refused").to_string();
    assert!(err.contains("window of 0"), "{err}");
    let spec = AttentionSpec::new(1, 4, 1, 1, 8, false).with_window(Some(2));
    let err = attention::forward(gpu, &spec, &z, &z, &z, None).err().expect("a bidirectional window").to_string();
    assert!(err.contains("causal attention only"), "{err}");
}

#[test]
fn attention_rejects_bad_heads() {
    let gpu = gpu();
    let spec = AttentionSpec::new(1, 4, 3, 2, 8, true);
    let q = Tensor::zeros(gpu, &[1, 4, 3, 8]).unwrap();
    let k = Tensor::zeros(gpu, &[1, 4, 2, 8]).unwrap();
    let err =
        attention::forward(gpu, &spec, &q, &k, &k, None).err().expect("3 query heads over 2 kv heads").to_string();
    assert!(err.contains("multiple of key/value heads"), "{err}");
}

/// Decoding with a KV cache: the new rows' outputs equal the last rows of attention over the
/// whole sequence, when the cache holds the earlier keys and has room to spare.
#[test]
fn attention_with_kv_cache_matches_the_full_sequence() {
    let gpu = gpu();
    let mut rng = Rng::new(92);
    let (b, hq, hkv, d, cap) = (2, 4, 2, 16, 80);
    let cases = [(1, 1, None), (70, 1, None), (70, 5, None), (70, 1, Some(20)), (70, 5, Some(3)), (9, 3, Some(4))];
    for (t, new, window) in cases {
        let cached = t - new;
        let (q, k, v) = (rng.vec(b * t * hq * d), rng.vec(b * t * hkv * d), rng.vec(b * t * hkv * d));
        let dims = r::Dims { b, t, hq, hkv, d, causal: true, scale: 1.0 / (d as f64).sqrt(), window, segments: None };
        let (want, _) = r::forward(&dims, &f64s(&q), &f64s(&k), &f64s(&v), None);
        // Cache [b, cap, hkv, d] with rows 0..t filled; queries are the last `new` rows.
        let (mut kc, mut vc) = (vec![9.0f32; b * cap * hkv * d], vec![9.0f32; b * cap * hkv * d]);
        let mut qn = Vec::new();
        let mut want_new = Vec::new();
        let (row_q, row_k) = (hq * d, hkv * d);
        for bi in 0..b {
            for ti in 0..t {
                let src = (bi * t + ti) * row_k;
                let dst = (bi * cap + ti) * row_k;
                kc[dst..dst + row_k].copy_from_slice(&k[src..src + row_k]);
                vc[dst..dst + row_k].copy_from_slice(&v[src..src + row_k]);
            }
            for ti in cached..t {
                let src = (bi * t + ti) * row_q;
                qn.extend_from_slice(&q[src..src + row_q]);
                want_new.extend_from_slice(&want[src..src + row_q]);
            }
        }
        let spec = AttentionSpec::new(b, new, hq, hkv, d, true).with_cache(cap, cached).with_window(window);
        let out = attention::forward(
            gpu,
            &spec,
            &upload(&qn, &[b, new, hq, d]),
            &upload(&kc, &[b, cap, hkv, d]),
            &upload(&vc, &[b, cap, hkv, d]),
            None,
        )
        .unwrap();
        let what = format!("kv cache t={t} new={new} window={window:?}");
        assert_close(&what, &download(&out.out), &want_new, ATOL, RTOL);
    }
    let spec = AttentionSpec::new(1, 4, 1, 1, 8, true).with_cache(3, 0);
    let z = Tensor::zeros(gpu, &[32]).unwrap();
    let err = attention::forward(gpu, &spec, &z, &z, &z, None).err().expect("a cache too small is refused").to_string();
    assert!(err.contains("do not fit a cache"), "{err}");
}
