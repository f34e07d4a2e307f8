//! Embedding gather (+ accumulate, for position embeddings) and scatter-add vs the reference.

use kiln::Tensor;
use kiln::kernels::embedding::{self, GradIndex};
use kiln::reference::embedding as r;

use crate::common::*;

#[test]
fn gather_and_scatter_add() {
    let gpu = gpu();
    let mut rng = Rng::new(60);
    for (vocab, cols, n) in [(1, 1, 1), (13, 7, 29), (1000, 384, 257)] {
        let (table, pos_table) = (rng.vec(vocab * cols), rng.vec(n * cols));
        let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u32)).collect();
        let pos: Vec<u32> = (0..n as u32).collect();
        let tt = upload(&table, &[vocab, cols]);
        let out = embedding::gather(gpu, &tt, &Tensor::from_u32(gpu, &ids, &[n]).unwrap()).unwrap();
        // Token + position embedding: gather, then gather-accumulate.
        embedding::gather_into(
            gpu,
            &upload(&pos_table, &[n, cols]),
            &Tensor::from_u32(gpu, &pos, &[n]).unwrap(),
            &out,
            true,
        )
        .unwrap();
        let tok = r::gather(&f64s(&table), cols, &ids);
        let want: Vec<f64> = tok.iter().zip(r::gather(&f64s(&pos_table), cols, &pos)).map(|(a, b)| a + b).collect();
        assert_close(&format!("gather {vocab}x{cols} n={n}"), &download(&out), &want, 1e-6, 1e-6);

        let dout = rng.vec(n * cols);
        let base = rng.vec(vocab * cols);
        let dtable = upload(&base, &[vocab, cols]);
        let index = GradIndex::new(gpu, &ids).unwrap();
        embedding::scatter_add(gpu, &upload(&dout, &[n, cols]), &index, &dtable).unwrap();
        let mut want = f64s(&base);
        r::scatter_add(&f64s(&dout), cols, &ids, &mut want);
        assert_close(&format!("scatter_add {vocab}x{cols} n={n}"), &download(&dtable), &want, 1e-5, 1e-5);
    }
}

#[test]
fn scatter_add_is_deterministic() {
    let gpu = gpu();
    let mut rng = Rng::new(61);
    let (vocab, cols, n) = (5, 33, 500);
    let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u32)).collect();
    let dout = upload(&rng.vec(n * cols), &[n, cols]);
    let index = GradIndex::new(gpu, &ids).unwrap();
    let run = || {
        let d = Tensor::zeros(gpu, &[vocab, cols]).unwrap();
        embedding::scatter_add(gpu, &dout, &index, &d).unwrap();
        download(&d)
    };
    let first = run();
    for _ in 0..3 {
        assert!(run().iter().zip(&first).all(|(a, b)| a.to_bits() == b.to_bits()), "scatter_add changed between runs");
    }
}

#[test]
fn ids_outside_the_table_are_rejected() {
    let err = embedding::check_ids(&[0, 3, 9], 5, "token").unwrap_err().to_string();
    assert!(err.contains("token id 9 at position 2"), "{err}");
}

#[test]
fn tables_larger_than_one_binding_are_chunked() {
    // A second device whose binding limit is capped at 64 KiB: a 300 × 100 table (120 KB)
    // must be split into row chunks for both gather and scatter-add.
    let mut small = kiln::Gpu::new(&kiln::gpu::AdapterChoice::from_flag_or_env(None)).unwrap();
    small.cap_storage_binding(64 << 10);
    let gpu = &small;
    let mut rng = Rng::new(62);
    let (vocab, cols, n) = (300, 100, 77);
    let table = rng.vec(vocab * cols);
    let ids: Vec<u32> =
        (0..n).map(|i| if i % 2 == 0 { rng.below(vocab as u32) } else { (vocab - 1 - i) as u32 }).collect();
    let tt = Tensor::from_f32(gpu, &table, &[vocab, cols]).unwrap();
    let out = embedding::gather(gpu, &tt, &Tensor::from_u32(gpu, &ids, &[n]).unwrap()).unwrap();
    let want = r::gather(&f64s(&table), cols, &ids);
    assert_close("chunked gather", &out.to_f32_vec(gpu).unwrap(), &want, 0.0, 0.0);

    let dout = rng.vec(n * cols);
    let dtable = Tensor::zeros(gpu, &[vocab, cols]).unwrap();
    let index = GradIndex::new(gpu, &ids).unwrap();
    embedding::scatter_add(gpu, &Tensor::from_f32(gpu, &dout, &[n, cols]).unwrap(), &index, &dtable).unwrap();
    let mut want = vec![0.0; vocab * cols];
    r::scatter_add(&f64s(&dout), cols, &ids, &mut want);
    assert_close("chunked scatter_add", &dtable.to_f32_vec(gpu).unwrap(), &want, 1e-6, 1e-6);

    // Any other kernel given the whole table says which tensor is too large and the limit.
    let err = kiln::kernels::elementwise::scale(gpu, &tt, 2.0).unwrap_err().to_string();
    assert!(err.contains("tensor `x`") && err.contains("max_storage_buffer_binding_size"), "{err}");
}
