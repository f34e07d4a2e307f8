//! matmul vs the reference, on awkward shapes, every transpose, batch, bias and accumulate,
//! for the adapter's tile and a small one (so tile edges are crossed on small inputs too);
//! then the skinny path (M ≤ SKINNY_M, `shaders/matvec.wgsl`, and N ≤ SKINNY_M through the
//! transpose) for the adapter's shape, a GPU-style one that splits K across 64 invocations, and
//! an odd one. The tiled kernel's split-K runs every tiled case again, with the fused dropouts
//! and the epilogues.

use kiln::kernels::matmul::{self, Matmul, MatmulTile, MatvecShape, SKINNY_M, SplitK, SplitPlan, matmul_into};
use kiln::reference;
use kiln::{DType, Tensor};

use crate::common::*;

// f32 accumulation over K terms of size ~1: error grows like sqrt(K)·eps; 1e-4 covers K ≤ 2048.
const ATOL: f64 = 1e-4;
const RTOL: f64 = 1e-4;

fn case(rng: &mut Rng, mm: Matmul, a_shared: bool, b_shared: bool, with_bias: bool) {
    let gpu = gpu();
    let (m, n, k, batch) = (mm.m, mm.n, mm.k, mm.batch);
    let a = rng.vec(if a_shared { m * k } else { batch * m * k });
    let b = rng.vec(if b_shared { k * n } else { batch * k * n });
    let bias = rng.vec(n);
    let c0 = rng.vec(batch * m * n);
    let c = upload(&c0, &[batch, m, n]);
    let bias_t = upload(&bias, &[n]);
    matmul_into(gpu, &mm, &upload(&a, &[a.len()]), &upload(&b, &[b.len()]), with_bias.then_some(&bias_t), &c).unwrap();
    let mut want = f64s(&c0);
    let bias64 = f64s(&bias);
    reference::matmul::matmul(
        &f64s(&a),
        &f64s(&b),
        with_bias.then_some(&bias64[..]),
        &mut want,
        (batch, m, n, k),
        mm.trans_a,
        mm.trans_b,
        mm.alpha as f64,
        mm.accumulate,
    );
    assert_close(
        &format!("matmul {mm:?} a_shared={a_shared} b_shared={b_shared} bias={with_bias}"),
        &download(&c),
        &want,
        ATOL * (k as f64).sqrt().max(1.0),
        RTOL,
    );
}

/// A split-K policy that splits every tiled product it can, into K ranges down to 8 deep.
const EVERY_SPLIT: SplitK = SplitK::new(u32::MAX, 8);

/// Runs `f` with split-K off, then with [`EVERY_SPLIT`], and puts the adapter's policy back.
/// The caller holds `TILE_LOCK`, as the tests comparing two products bit for bit do.
fn under_both_split_k(mut f: impl FnMut(SplitK)) {
    let gpu = gpu();
    let saved = matmul::split_k(gpu);
    for split in [SplitK::OFF, EVERY_SPLIT] {
        matmul::set_split_k(gpu, split);
        f(split);
    }
    matmul::set_split_k(gpu, saved);
}

/// The awkward shapes on `tile`, under `split`; returns how many of the products split.
/// `tile` serves the deep products and the shallow ones alike.
fn awkward_shapes(tile: MatmulTile, split: SplitK) -> usize {
    let gpu = gpu();
    let saved = (matmul::tile(gpu), matmul::shallow_tile(gpu), matmul::split_k(gpu));
    matmul::set_tile(gpu, tile);
    matmul::set_shallow_tile(gpu, tile);
    matmul::set_split_k(gpu, split);
    let mut rng = Rng::new(1);
    // (40, 70, 3) and (129, 65, 8) take a K slice cut to their depth (`MatmulTile::for_depth`).
    let shapes = [
        (1, 1, 1),
        (7, 13, 129),
        (1, 65, 3),
        (33, 1, 17),
        (129, 65, 31),
        (64, 64, 64),
        (65, 130, 257),
        (40, 70, 3),
        (129, 65, 8),
        (70, 33, 1000),
    ];
    let mut cases = Vec::new();
    for &(m, n, k) in &shapes {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            cases.push((Matmul::new(m, n, k).trans_a(ta).trans_b(tb), false, false, false));
        }
    }
    // Batched, shared operands, bias, alpha and accumulate.
    cases.push((Matmul::new(9, 17, 33).batch(3), false, false, true));
    cases.push((Matmul::new(19, 17, 33).batch(3).trans_b(true), false, true, false));
    cases.push((Matmul::new(19, 17, 133).batch(2).trans_a(true), true, false, true));
    cases.push((Matmul::new(31, 5, 7).alpha(0.5).accumulate(true), false, false, true));
    cases.push((Matmul::new(31, 5, 7).batch(4).trans_a(true).accumulate(true), false, false, false));
    cases.push((Matmul::new(40, 30, 77).batch(2).alpha(-1.5).accumulate(true), false, false, true));
    let mut split_count = 0;
    for (mm, a_shared, b_shared, bias) in cases {
        let tiled = mm.m > SKINNY_M && mm.n > SKINNY_M;
        split_count += (tiled && split.plan(&mm, tile.for_depth(mm.k), gpu.limits()).is_some()) as usize;
        case(&mut rng, mm, a_shared, b_shared, bias);
    }
    matmul::set_tile(gpu, saved.0);
    matmul::set_shallow_tile(gpu, saved.1);
    matmul::set_split_k(gpu, saved.2);
    split_count
}

#[test]
fn matmul_awkward_shapes_adapter_tile() {
    let _guard = crate::TILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    awkward_shapes(matmul::tile(gpu()), matmul::split_k(gpu()));
}

#[test]
fn matmul_awkward_shapes_adapter_shallow_tile() {
    let _guard = crate::TILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    awkward_shapes(matmul::shallow_tile(gpu()), SplitK::OFF);
}

/// Products at most SHALLOW_K deep take the shallow tile, deeper ones the deep tile, each with
/// its K slice cut to the depth.
#[test]
fn matmul_tile_follows_the_depth_class() {
    let _guard = crate::TILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = gpu();
    let saved = (matmul::tile(gpu), matmul::shallow_tile(gpu));
    let (deep, shallow) = (MatmulTile::new(128, 128, 8, 16, 16), MatmulTile::new(64, 64, 16, 4, 4));
    matmul::set_tile(gpu, deep);
    matmul::set_shallow_tile(gpu, shallow);
    let got =
        [8, matmul::SHALLOW_K, matmul::SHALLOW_K + 1, 1000].map(|k| matmul::tile_for(gpu, &Matmul::new(64, 64, k)));
    matmul::set_tile(gpu, saved.0);
    matmul::set_shallow_tile(gpu, saved.1);
    assert_eq!(got, [shallow.for_depth(8), shallow, deep, deep]);
}

#[test]
fn matmul_awkward_shapes_small_tile() {
    let _guard = crate::TILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    awkward_shapes(MatmulTile::new(64, 64, 8, 8, 8), SplitK::OFF);
}

/// Split-K (partial sums per K range, then `matmul_split_sum`) on every awkward shape the
/// tiled kernel takes, with the adapter's tile and a small one: uneven last ranges, batches
/// with shared operands, bias, alpha and accumulate.
#[test]
fn matmul_split_k_awkward_shapes() {
    let _guard = crate::TILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for tile in [matmul::tile(gpu()), MatmulTile::new(64, 64, 8, 8, 8)] {
        // Every tiled product at least 16 deep: 4 transposes of 4 shapes, and 3 batched ones.
        let split = awkward_shapes(tile, EVERY_SPLIT);
        assert_eq!(split, 19, "awkward products split on {tile}");
    }
}

/// How a product is split: enough K ranges to reach the target, whole K slices of the tile, at
/// most MAX_SPLITS, each at least min_depth; nothing when the product already has the
/// workgroups, is too shallow, or the policy is off.
#[test]
fn split_k_plans() {
    let limits = gpu().limits().clone();
    let tile = MatmulTile::new(64, 64, 16, 4, 4);
    let policy = SplitK::new(256, 128);
    let plan = |mm: Matmul| policy.plan(&mm, tile, &limits);
    // 512×576 is 8×9 = 72 tiles: 4 ranges of 144 reach 288 workgroups.
    assert_eq!(plan(Matmul::new(512, 576, 576)), Some(SplitPlan { splits: 4, k_chunk: 144 }));
    // One MiniLM e-mail's down-projection, 128×384 (12 tiles) over K = 1536: capped at 12 by depth.
    assert_eq!(plan(Matmul::new(128, 384, 1536)), Some(SplitPlan { splits: 12, k_chunk: 128 }));
    // A K range is whole slices of the tile: 1000 / 7 = 143 rounds up to 144, so 7 ranges.
    assert_eq!(plan(Matmul::new(64, 64, 1000)), Some(SplitPlan { splits: 7, k_chunk: 144 }));
    // Capped at MAX_SPLITS.
    let deep = SplitK::new(100_000, 16).plan(&Matmul::new(64, 64, 100_000), tile, &limits).unwrap();
    assert_eq!(deep.splits, matmul::MAX_SPLITS);
    // Enough workgroups already (a batch counts), too shallow, or off: whole.
    assert_eq!(plan(Matmul::new(2048, 2048, 2048)), None);
    assert_eq!(plan(Matmul::new(512, 576, 576).batch(4)), None);
    assert_eq!(plan(Matmul::new(512, 576, 200)), None);
    assert_eq!(SplitK::OFF.plan(&Matmul::new(64, 64, 4096), tile, &limits), None);
    // Partial sums the adapter could not bind are not split.
    let small = wgpu::Limits { max_storage_buffer_binding_size: 1 << 20, ..limits.clone() };
    assert_eq!(policy.plan(&Matmul::new(512, 576, 576), tile, &small), None);
}

/// A product shallower than the tile's K slice stages a slice cut to its depth (powers of two
/// down to 4); deeper ones keep the tile's.
#[test]
fn matmul_k_slice_follows_the_depth() {
    let t = MatmulTile::new(128, 128, 16, 8, 8);
    let got = [1, 3, 4, 5, 8, 9, 16, 17, 1000].map(|k| t.for_depth(k).bk);
    assert_eq!(got, [4, 4, 4, 8, 8, 16, 16, 16, 16]);
    assert_eq!(MatmulTile::new(64, 64, 8, 4, 4).for_depth(100), MatmulTile::new(64, 64, 8, 4, 4));
}

#[test]
fn matmul_large() {
    let _guard = crate::TILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(2);
    case(&mut rng, Matmul::new(300, 517, 1031), false, false, true);
}

/// Every entry point of the skinny path: `matvec_vec4` (trans_b, K % 4 == 0), `matvec_vec4n`
/// (!trans_b, N % 4 == 0) and the scalar `matvec` (everything else, trans_a included).
fn skinny_shapes(shape: MatvecShape) {
    let gpu = gpu();
    let saved = matmul::matvec_shape(gpu);
    matmul::set_matvec_shape(gpu, shape);
    let mut rng = Rng::new(3);
    for m in [1, 2, 5, 8, SKINNY_M] {
        for n in [1, 3, 4, 7, 128, 129, 577] {
            for k in [1, 3, 4, 7, 128, 129, 576, 577] {
                for tb in [false, true] {
                    case(&mut rng, Matmul::new(m, n, k).trans_b(tb), false, false, false);
                }
            }
        }
    }
    for m in [1, 5, SKINNY_M] {
        for (n, k) in [(7, 129), (128, 33), (577, 576)] {
            for tb in [false, true] {
                case(&mut rng, Matmul::new(m, n, k).trans_a(true).trans_b(tb), false, false, false);
            }
        }
    }
    // Bias, alpha, accumulate; batch 2 with a shared B (a weight), per-batch B, shared A.
    for (n, k, tb) in [(129, 576, true), (129, 577, true), (128, 129, false), (129, 7, false)] {
        let mm = Matmul::new(5, n, k).trans_b(tb);
        case(&mut rng, mm.batch(2).alpha(0.5).accumulate(true), false, true, true);
        case(&mut rng, mm.batch(2), false, false, true);
        case(&mut rng, mm.batch(2).trans_a(true).accumulate(true), true, false, false);
        case(&mut rng, Matmul::new(1, n, k).trans_b(tb).alpha(-2.0), false, false, true);
    }
    // Few columns and many rows: run as the transpose and stored transposed, with every
    // transpose, bias (indexed by column of C), alpha, accumulate and batch.
    for n in [1, 3, 8, SKINNY_M] {
        for (m, k) in [(SKINNY_M + 1, 7), (70, 96), (129, 128), (300, 33)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                case(&mut rng, Matmul::new(m, n, k).trans_a(ta).trans_b(tb), false, false, ta != tb);
            }
        }
        let mm = Matmul::new(37, n, 20).trans_b(true).alpha(0.5);
        case(&mut rng, mm.batch(3).accumulate(true), false, true, true);
        case(&mut rng, mm.batch(2).trans_a(true), true, false, false);
    }
    // One row past the skinny path: the tiled kernel takes it.
    case(&mut rng, Matmul::new(SKINNY_M + 1, 129, 576).trans_b(true), false, false, true);
    // One column past it: the tiled kernel too.
    case(&mut rng, Matmul::new(70, SKINNY_M + 1, 96), false, false, true);
    matmul::set_matvec_shape(gpu, saved);
}

#[test]
fn matmul_skinny_adapter_shape() {
    let _guard = crate::TILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    skinny_shapes(matmul::matvec_shape(gpu()));
}

#[test]
fn matmul_skinny_split_k() {
    let _guard = crate::TILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    skinny_shapes(MatvecShape::new(64, 4, 1));
}

#[test]
fn matmul_skinny_odd_shape() {
    let _guard = crate::TILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    skinny_shapes(MatvecShape::new(4, 3, 2));
}

/// More column blocks than one grid dimension takes (65535): the grid folds into y. One
/// column per workgroup makes that happen at a small size.
#[test]
fn matmul_skinny_folded_grid() {
    let _guard = crate::TILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = gpu();
    let saved = matmul::matvec_shape(gpu);
    matmul::set_matvec_shape(gpu, MatvecShape::new(1, 1, 1));
    let mut rng = Rng::new(4);
    case(&mut rng, Matmul::new(2, 70_001, 4).trans_b(true), false, false, true);
    case(&mut rng, Matmul::new(1, 70_001, 3).trans_b(true), false, false, false);
    case(&mut rng, Matmul::new(2, 4 * 66_001, 2), false, false, true);
    matmul::set_matvec_shape(gpu, saved);
}

#[test]
fn matmul_rejects_mismatched_shapes() {
    let gpu = gpu();
    let a = Tensor::zeros(gpu, &[4, 5]).unwrap();
    let b = Tensor::zeros(gpu, &[6, 3]).unwrap();
    let err = kiln::kernels::matmul::matmul(gpu, &a, &b, false, false).unwrap_err().to_string();
    assert!(err.contains("tensor `b`") && err.contains("inner dimension 5"), "{err}");
    let c = Tensor::empty(gpu, &[4, 4], DType::F32).unwrap();
    let err = matmul_into(gpu, &Matmul::new(4, 3, 5), &a, &Tensor::zeros(gpu, &[5, 3]).unwrap(), None, &c)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tensor `c`"), "{err}");
}

/// A dropout fused into one operand (LoRA's dropout of its input) gives exactly what
/// `dropout::apply` on that operand, then the plain matmul, gives (the same f32 operations), and
/// the reference's dropout then matmul within the usual tolerance: on A, on B and on the
/// product (before bias and accumulation), through the tiled kernel (whole and split-K) and the
/// skinny one, with every transpose, bias, alpha and accumulate.
#[test]
fn matmul_with_fused_dropout() {
    use kiln::kernels::dropout::DropoutMask;
    use kiln::kernels::matmul::DropOn;
    let _guard = crate::TILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = gpu();
    let mut rng = Rng::new(4);
    let mask = DropoutMask { p: 0.3, seed: 11, step: 5 };
    let scale = 1.0 / (1.0 - 0.3f64);
    under_both_split_k(|split| fused_dropout_cases(gpu, &mut rng, mask, scale, split));
    // A batch cannot take a fused dropout (its mask indexes one matrix).
    let (a, b, c) =
        (upload(&rng.vec(2 * 4 * 3), &[24]), upload(&rng.vec(3 * 5), &[15]), upload(&[0.0; 40], &[2, 4, 5]));
    let e = matmul_into(gpu, &Matmul::new(4, 5, 3).batch(2).dropout(DropOn::A, mask), &a, &b, None, &c).unwrap_err();
    assert!(e.to_string().contains("one matrix"), "{e}");
}

fn fused_dropout_cases(
    gpu: &kiln::Gpu,
    rng: &mut Rng,
    mask: kiln::kernels::dropout::DropoutMask,
    scale: f64,
    split: SplitK,
) {
    use kiln::kernels::dropout;
    use kiln::kernels::matmul::DropOn;
    // (m, n, k): a tiled product, a skinny one (M ≤ SKINNY_M), LoRA's three shapes at r = 8
    // (the first, N ≤ SKINNY_M, run as its transpose), and a tiled one with few columns. K of
    // the first is odd: with K % 4 == 0 the unfused product would take `matvec_vec4`, whose
    // sums run in another order than the scalar entry a fused dropout takes.
    for (m, n, k) in [(37, 19, 45), (5, 23, 33), (70, 8, 97), (8, 96, 70), (70, 96, 8), (70, 17, 9), (40, 33, 301)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for on in [DropOn::A, DropOn::B, DropOn::Product] {
                let (with_bias, accumulate, alpha) = (on == DropOn::Product, on != DropOn::A, 0.75);
                let mm = Matmul::new(m, n, k).trans_a(ta).trans_b(tb).alpha(alpha).accumulate(accumulate);
                let (a, b, bias, c0) = (rng.vec(m * k), rng.vec(k * n), rng.vec(n), rng.vec(m * n));
                let (at, bt, bias_t) = (upload(&a, &[a.len()]), upload(&b, &[b.len()]), upload(&bias, &[n]));
                let fused = upload(&c0, &[m, n]);
                let bias_arg = with_bias.then_some(&bias_t);
                matmul_into(gpu, &mm.dropout(on, mask), &at, &bt, bias_arg, &fused).unwrap();
                // The same with the dropout kernel.
                let plain = upload(&c0, &[m, n]);
                match on {
                    DropOn::A => matmul_into(gpu, &mm, &dropout::apply(gpu, mask, &at).unwrap(), &bt, bias_arg, &plain),
                    DropOn::B => matmul_into(gpu, &mm, &at, &dropout::apply(gpu, mask, &bt).unwrap(), bias_arg, &plain),
                    DropOn::Product => {
                        let t = Tensor::empty(gpu, &[m, n], DType::F32).unwrap();
                        matmul_into(gpu, &mm.accumulate(false), &at, &bt, None, &t).unwrap();
                        dropout::apply_into(gpu, mask, &t, &plain, true).unwrap();
                        Ok(())
                    }
                }
                .unwrap();
                let what = format!("fused dropout on {on:?}, {mm:?}, {split:?}");
                let got = download(&fused);
                if on == DropOn::Product {
                    // The unfused path adds the bias before the dropout; compare without it.
                    let minus_bias: Vec<f32> = got.iter().enumerate().map(|(i, v)| v - bias[i % n]).collect();
                    assert_close(&what, &minus_bias, &f64s(&download(&plain)), 1e-5, 1e-5);
                } else {
                    assert_eq!(got, download(&plain), "{what}: not the dropout kernel's result bit for bit");
                }
                // The reference: dropout of the operand (or of the product), then the matmul.
                let (mut a64, mut b64) = (f64s(&a), f64s(&b));
                match on {
                    DropOn::A => a64 = reference::dropout::apply(&a64, 0.3, 11, 5),
                    DropOn::B => b64 = reference::dropout::apply(&b64, 0.3, 11, 5),
                    DropOn::Product => {}
                }
                let mut prod = vec![0.0; m * n];
                reference::matmul::matmul(&a64, &b64, None, &mut prod, (1, m, n, k), ta, tb, alpha as f64, false);
                if on == DropOn::Product {
                    prod = reference::dropout::apply(&prod, 0.3, 11, 5);
                }
                let want: Vec<f64> = prod
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v + if with_bias { bias[i % n] as f64 } else { 0.0 }
                            + if accumulate { c0[i] as f64 } else { 0.0 }
                    })
                    .collect();
                assert_close(&what, &got, &want, ATOL * scale * (k as f64).sqrt(), RTOL);
            }
        }
    }
}

/// The epilogues (an activation, or a gated unit reading `gate`) against the reference product
/// then the reference function, on tiled shapes (with a K slice cut to depth, and a batch) and
/// on the skinny shapes that fall back to the elementwise kernel; C keeps the product. Each
/// with split-K off and on (the epilogue then runs in the pass that adds the partial sums).
#[test]
fn epilogues_match_the_reference() {
    use kiln::kernels::elementwise::{Activation, GatedUnit};
    use kiln::kernels::matmul::{Epilogue, matmul_epilogue_into};
    use kiln::reference::elementwise as ew;
    let _guard = crate::TILE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = gpu();
    let mut rng = Rng::new(77);
    type Pointwise = fn(f64) -> f64;
    type Gated = fn(&[f64], &[f64]) -> Vec<f64>;
    let activations: [(Activation, Pointwise); 6] = [
        (Activation::GeluErf, ew::gelu_erf),
        (Activation::GeluTanh, ew::gelu_tanh),
        (Activation::Silu, ew::silu),
        (Activation::Relu, ew::relu),
        (Activation::Relu6, ew::relu6),
        (Activation::Tanh, ew::tanh),
    ];
    let gated: [(GatedUnit, Gated); 2] = [(GatedUnit::SwiGlu, ew::swiglu), (GatedUnit::GeGlu, ew::geglu)];
    // (batch, m, n, k): tiled, tiled with K 8, batched, skinny M, skinny N, batched and deep
    // enough to split.
    for (batch, m, n, k) in
        [(1, 40, 70, 33), (1, 129, 65, 8), (2, 23, 31, 17), (1, 5, 37, 20), (1, 40, 9, 12), (2, 40, 70, 150)]
    {
        let mm = Matmul::new(m, n, k).batch(batch).trans_b(true);
        // Inputs scaled so the products cross every kink (relu6's 6 included).
        let a: Vec<f32> = rng.vec(batch * m * k).iter().map(|v| v * 3.0).collect();
        let (b, bias, gate) = (rng.vec(batch * n * k), rng.vec(n), rng.vec(batch * m * n));
        let (at, bt, bias_t) = (upload(&a, &[batch * m, k]), upload(&b, &[batch * n, k]), upload(&bias, &[n]));
        let gate_t = upload(&gate, &[batch, m, n]);
        let mut product = vec![0.0; batch * m * n];
        let bias64 = f64s(&bias);
        let dims = (batch, m, n, k);
        reference::matmul::matmul(&f64s(&a), &f64s(&b), Some(&bias64), &mut product, dims, false, true, 1.0, false);
        let tol = ATOL * (k as f64).sqrt() * 4.0;
        let mut epilogues: Vec<(Epilogue, String, Vec<f64>)> = activations
            .iter()
            .map(|&(act, f)| (Epilogue::Activation(act), format!("{act:?}"), product.iter().map(|&v| f(v)).collect()))
            .collect();
        for &(unit, f) in &gated {
            epilogues.push((Epilogue::Gated(unit, &gate_t), format!("{unit:?}"), f(&f64s(&gate), &product)));
        }
        under_both_split_k(|split| {
            under_both_epilogues(|fused| {
                for (epilogue, name, want) in &epilogues {
                    let c = Tensor::zeros(gpu, &[batch, m, n]).unwrap();
                    let out = matmul_epilogue_into(gpu, &mm, &at, &bt, Some(&bias_t), &c, *epilogue).unwrap();
                    let what = format!("matmul {batch}x{m}x{n}x{k} then {name}, fused {fused}, {split:?}");
                    assert_close(&format!("{what}: c"), &download(&c), &product, tol, RTOL);
                    assert_close(&format!("{what}: epilogue"), &download(&out), want, tol, RTOL);
                }
            })
        });
    }
    // A gate that is not shaped as C is refused by name.
    let (a, c) = (Tensor::zeros(gpu, &[40, 8]).unwrap(), Tensor::zeros(gpu, &[40, 70]).unwrap());
    let (b, short) = (Tensor::zeros(gpu, &[70, 8]).unwrap(), Tensor::zeros(gpu, &[40]).unwrap());
    let epilogue = Epilogue::Gated(GatedUnit::SwiGlu, &short);
    let Err(err) = matmul_epilogue_into(gpu, &Matmul::new(40, 70, 8).trans_b(true), &a, &b, None, &c, epilogue) else {
        panic!("a gate of 40 elements for a 40x70 product was accepted");
    };
    assert!(err.to_string().contains("gate"), "{err}");
}

/// Through the tape, a linear layer with its activation (or gated unit) in the epilogue gives
/// the values and gradients of the linear then the elementwise op, on a tiled and a skinny
/// product and with either weight layout, with a loss that reads both the product and the
/// epilogue's output.
#[test]
fn linear_epilogues_on_the_tape_equal_the_two_ops() {
    use kiln::autograd::{
        Tape, WeightLayout, activation, add, cross_entropy, gated, linear, linear_activation, linear_gated,
    };
    use kiln::kernels::elementwise::{Activation, GatedUnit};
    let g = gpu();
    let mut rng = Rng::new(78);
    let (out_in, in_out) = (WeightLayout::OutIn, WeightLayout::InOut);
    for (rows, d_in, d_out, layout) in [(40, 19, 33, out_in), (6, 19, 33, out_in), (40, 19, 33, in_out)] {
        let w_shape = if layout == out_in { vec![d_out, d_in] } else { vec![d_in, d_out] };
        let shapes = [vec![rows, d_in], w_shape, vec![d_out], vec![rows, d_out]];
        let data: Vec<Vec<f32>> = shapes.iter().map(|s| rng.vec(s.iter().product())).collect();
        let targets: Vec<i32> = (0..rows).map(|_| rng.below(d_out as u32) as i32).collect();
        for unit in [None, Some(GatedUnit::SwiGlu)] {
            let run = |fused: bool| -> Vec<Vec<f32>> {
                let params = trainable_params(&["x", "w", "b", "gate"], &data, &shapes);
                let tape = Tape::train(g, 0, 1);
                let v: Vec<_> = params.iter().map(|p| tape.param(p)).collect();
                let (x, w, b, gate) = (&v[0], &v[1], Some(&v[2]), &v[3]);
                let (h, y) = match (unit, fused) {
                    (None, true) => linear_activation(&tape, x, w, layout, b, Activation::GeluTanh).unwrap(),
                    (Some(u), true) => linear_gated(&tape, x, w, layout, b, u, gate).unwrap(),
                    (None, false) => {
                        let h = linear(&tape, x, w, layout, b, None).unwrap();
                        let y = activation(&tape, Activation::GeluTanh, &h).unwrap();
                        (h, y)
                    }
                    (Some(u), false) => {
                        let h = linear(&tape, x, w, layout, b, None).unwrap();
                        let y = gated(&tape, u, gate, &h).unwrap();
                        (h, y)
                    }
                };
                let loss = cross_entropy(&tape, &add(&tape, &h, &y).unwrap(), &targets).unwrap();
                tape.backward(&loss, 1.0).unwrap();
                let mut out = vec![vec![loss.read(g).unwrap().0]];
                let used = if unit.is_some() { 4 } else { 3 };
                out.extend(params[..used].iter().map(|p| download(p.grad.as_ref().expect("a gradient"))));
                out
            };
            let plain = run(false);
            under_both_epilogues(|fused_kernel| {
                let fused = run(true);
                for (i, what) in ["loss", "dx", "dw", "db", "dgate"].iter().enumerate().take(fused.len()) {
                    let name =
                        format!("{rows}x{d_in}->{d_out} {layout:?} {unit:?} epilogue {what}, fused {fused_kernel}");
                    assert_close(&name, &fused[i], &f64s(&plain[i]), 1e-6, 1e-5);
                }
            });
        }
    }
}
