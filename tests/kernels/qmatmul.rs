//! The quantized matmul kernels (`shaders/qmatmul.wgsl`) against the reference: dequantize the
//! same blocks, then multiply in f64. Every format (the K-quants on rows of 256-weight
//! super-blocks; F16 and BF16 as blocks of 32 plain values), awkward shapes (M and N off the 64-wide tile, size 1, K one block and many),
//! the skinny path (M ≤ 16), bias, alpha and accumulate; the tiled path on the adapter's tile,
//! a GPU's (64×64 of 4×4) and lavapipe's former one (64×64 of 8×8).

use kiln::kernels::qmatmul::{self, QTile, QuantTensor};
use kiln::kernels::qmatmul::{qmatmul_dx_into, qmatmul_into};
use kiln::quant::{QuantType, QuantWeights, repack};
use kiln::reference;

use crate::common::*;

// The kernel multiplies exactly the dequantized values the reference uses (d·q is exact in f32;
// Q4_1's d·q + m rounds once), so the error is f32 accumulation over K terms: ~sqrt(K)·eps·|w|.
const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-4;

fn weights(rng: &mut Rng, kind: QuantType, n: usize, k: usize) -> QuantWeights {
    // Rows of different scales, so a wrong block's scale shows.
    let data: Vec<f32> = (0..n * k).map(|i| rng.uniform() * (1.0 + (i / k % 5) as f32)).collect();
    QuantWeights::quantize(kind, &data, n, k, "w").unwrap()
}

fn forward_case(rng: &mut Rng, kind: QuantType, (m, n, k): (usize, usize, usize), bias: bool, alpha: f32, acc: bool) {
    let gpu = gpu();
    let w = weights(rng, kind, n, k);
    let qt = QuantTensor::upload(gpu, &w).unwrap();
    let x = rng.vec(m * k);
    let b = rng.vec(n);
    let y0 = rng.vec(m * n);
    let y = upload(&y0, &[m, n]);
    let bias_t = upload(&b, &[n]);
    qmatmul_into(gpu, &upload(&x, &[m, k]), &qt, bias.then_some(&bias_t), &y, alpha, acc).unwrap();
    let mut want = f64s(&y0);
    let b64 = f64s(&b);
    reference::quant::qmatmul(
        &f64s(&x),
        kind,
        &w.blocks,
        bias.then_some(&b64[..]),
        &mut want,
        (m, n, k),
        alpha as f64,
        acc,
    );
    let what = format!("qmatmul {kind} m={m} n={n} k={k} bias={bias} alpha={alpha} acc={acc}");
    assert_close(&what, &download(&y), &want, ATOL * (k as f64).sqrt() * 5.0, RTOL);
}

fn dx_case(rng: &mut Rng, kind: QuantType, (m, n, k): (usize, usize, usize), alpha: f32, acc: bool) {
    let gpu = gpu();
    let w = weights(rng, kind, n, k);
    let qt = QuantTensor::upload(gpu, &w).unwrap();
    let dy = rng.vec(m * n);
    let dx0 = rng.vec(m * k);
    let dx = upload(&dx0, &[m, k]);
    qmatmul_dx_into(gpu, &upload(&dy, &[m, n]), &qt, &dx, alpha, acc).unwrap();
    let mut want = f64s(&dx0);
    reference::quant::qmatmul_dx(&f64s(&dy), kind, &w.blocks, &mut want, (m, n, k), alpha as f64, acc);
    let what = format!("qmatmul_dx {kind} m={m} n={n} k={k} alpha={alpha} acc={acc}");
    assert_close(&what, &download(&dx), &want, ATOL * (n as f64).sqrt() * 5.0, RTOL);
}

/// (M, N, K): one of everything, shapes off the tile, the skinny path's edges (16, 17 rows),
/// and a SmolLM2-sized K = 576. K-quants take [`K_SHAPES`]: their rows are 256-weight
/// super-blocks.
const SHAPES: [(usize, usize, usize); 9] = [
    (1, 1, 32),
    (3, 7, 32),
    (5, 65, 96),
    (16, 129, 64),
    (17, 33, 160),
    (65, 130, 96),
    (129, 65, 320),
    (2, 192, 576),
    (70, 100, 576),
];

/// (M, N, K) for the K-quants: one super-block, several (every sub-block position and both
/// Q6_K halves), M and N off the tile, the skinny path's edges.
const K_SHAPES: [(usize, usize, usize); 7] =
    [(1, 1, 256), (3, 7, 512), (16, 65, 256), (17, 33, 768), (65, 130, 256), (129, 65, 512), (2, 100, 1024)];

fn shapes(kind: QuantType) -> &'static [(usize, usize, usize)] {
    if kind.is_k_quant() { &K_SHAPES } else { &SHAPES }
}

/// Runs `f` on the adapter's tile with every format, then on the other tiles the defaults give
/// some adapter that this one can run with one format of each kind (plain blocks, super-blocks,
/// 16-bit): the tile's code does not depend on the format, and each (format, tile, rows)
/// compiles a pipeline of its own, about a second and a half on lavapipe. Puts the adapter's
/// tile back. Each tile is printed before its cases, so a failure's captured output names it.
fn under_each_tile(mut f: impl FnMut(&[QuantType])) {
    let _guard = crate::TILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = gpu();
    let saved = qmatmul::tile(gpu);
    let mut tiles = vec![saved];
    for t in [QTile::new(64, 64, 4, 4), QTile::new(64, 64, 8, 8)] {
        if t.fits(gpu.limits()) && !tiles.contains(&t) {
            tiles.push(t);
        }
    }
    assert!(tiles.len() >= 2, "{} runs only its own qmatmul tile", gpu.describe());
    for t in tiles {
        qmatmul::set_tile(gpu, t);
        eprintln!("qmatmul tile {t:?}");
        f(if t == saved { &QuantType::ALL } else { &[QuantType::Q4_0, QuantType::Q4_K, QuantType::F16] });
    }
    qmatmul::set_tile(gpu, saved);
}

#[test]
fn qmatmul_forward_every_format_awkward_shapes() {
    let mut rng = Rng::new(40);
    under_each_tile(|kinds| {
        for &kind in kinds {
            let b = kind.block_weights();
            for &shape in shapes(kind) {
                forward_case(&mut rng, kind, shape, false, 1.0, false);
            }
            // Bias, alpha, accumulate on both paths.
            forward_case(&mut rng, kind, (7, 33, 2 * b), true, 0.5, true);
            forward_case(&mut rng, kind, (67, 33, 2 * b), true, -2.0, true);
        }
    });
}

#[test]
fn qmatmul_dx_every_format_awkward_shapes() {
    let mut rng = Rng::new(41);
    under_each_tile(|kinds| {
        for &kind in kinds {
            for &shape in shapes(kind) {
                dx_case(&mut rng, kind, shape, 1.0, false);
            }
            dx_case(&mut rng, kind, (9, 45, 3 * kind.block_weights()), 0.5, true);
        }
    });
}

/// A tile's rows halve, rows per invocation with them, while the product's rows still fill it,
/// down to 4 per invocation.
#[test]
fn qmatmul_tile_follows_the_rows() {
    let big = QTile::new(128, 128, 16, 16);
    let got = [17, 32, 33, 64, 65, 512].map(|m| qmatmul::tile_for_rows(big, m));
    let want = [(32, 4), (32, 4), (64, 8), (64, 8), (128, 16), (128, 16)].map(|(bm, tm)| QTile::new(bm, 128, tm, 16));
    assert_eq!(got, want);
    assert_eq!(qmatmul::tile_for_rows(QTile::new(64, 64, 4, 4), 17), QTile::new(64, 64, 4, 4));
}

#[test]
fn qmatmul_large() {
    let mut rng = Rng::new(42);
    forward_case(&mut rng, QuantType::Q4_1, (300, 517, 1024), true, 1.0, false);
    dx_case(&mut rng, QuantType::Q4_1, (300, 517, 1024), 1.0, false);
}

#[test]
fn quant_tensor_round_trips_through_the_gpu() {
    let gpu = gpu();
    let mut rng = Rng::new(43);
    for kind in QuantType::ALL {
        let w = weights(&mut rng, kind, 5, 2 * kind.block_weights());
        let qt = QuantTensor::upload(gpu, &w).unwrap();
        assert_eq!(qt.download(gpu).unwrap(), w, "{kind}");
        // On the GPU it takes the file's bytes, rounded up to whole words.
        assert_eq!(qt.byte_len() as usize, repack(&w).0.len() * 4);
        assert!(qt.byte_len() as usize - w.blocks.len() <= 2);
        assert_eq!(download(&qt.dequantize(gpu).unwrap()), w.dequantize());
    }
}

#[test]
fn qmatmul_shape_errors_name_the_tensor() {
    let gpu = gpu();
    let mut rng = Rng::new(44);
    let qt = QuantTensor::upload(gpu, &weights(&mut rng, QuantType::Q8_0, 4, 64)).unwrap();
    let e = qmatmul_into(gpu, &upload(&rng.vec(3 * 60), &[3, 60]), &qt, None, &upload(&[0.0; 12], &[3, 4]), 1.0, false)
        .unwrap_err();
    assert!(e.to_string().contains("`x`") && e.to_string().contains("64"), "{e}");
    let e =
        qmatmul_dx_into(gpu, &upload(&rng.vec(12), &[3, 4]), &qt, &upload(&[0.0; 3], &[3]), 1.0, false).unwrap_err();
    assert!(e.to_string().contains("`dx`"), "{e}");
}
