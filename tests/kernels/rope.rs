//! RoPE forward and inverse (backward) vs the reference, with offsets and explicit positions.

use kiln::Tensor;
use kiln::kernels::rope::{self, Positions, RopeTables, angles};
use kiln::reference::rope as r;

use crate::common::*;

#[test]
fn rope_forward_and_inverse() {
    let gpu = gpu();
    let mut rng = Rng::new(80);
    for (b, t, h, d) in [(1, 1, 1, 2), (2, 7, 3, 64), (1, 129, 9, 64), (3, 5, 2, 6)] {
        let max_pos = 300;
        let tables = RopeTables::new(gpu, d, max_pos, 100_000.0).unwrap();
        let ang = angles(d, max_pos, 100_000.0);
        let x = rng.vec(b * t * h * d);
        let xt = upload(&x, &[b, t, h, d]);
        let offset = 17;
        let y = rope::apply(gpu, &tables, &xt, Positions::Offset(offset)).unwrap();
        let positions: Vec<usize> = (0..b * t).map(|i| i % t + offset).collect();
        let want = r::apply(&f64s(&x), (b, t, h, d), &ang, &positions, false);
        // Angles up to ~300 rad: f32 cos/sin tables are exact to 6e-8 relative.
        assert_close(&format!("rope {b}x{t}x{h}x{d}"), &download(&y), &want, 1e-5, 1e-5);

        let explicit: Vec<u32> = (0..b * t).map(|_| rng.below(max_pos as u32)).collect();
        let pt = Tensor::from_u32(gpu, &explicit, &[b, t]).unwrap();
        let dx = Tensor::zeros(gpu, &[b, t, h, d]).unwrap();
        rope::apply_into(gpu, &tables, &xt, Positions::Explicit(&pt), true, &dx, false).unwrap();
        let positions: Vec<usize> = explicit.iter().map(|&p| p as usize).collect();
        let want = r::apply(&f64s(&x), (b, t, h, d), &ang, &positions, true);
        assert_close(&format!("rope inverse {b}x{t}x{h}x{d}"), &download(&dx), &want, 1e-5, 1e-5);
    }
    let tables = RopeTables::new(gpu, 4, 8, 10_000.0).unwrap();
    let x = Tensor::zeros(gpu, &[1, 6, 1, 4]).unwrap();
    assert!(rope::apply(gpu, &tables, &x, Positions::Offset(3)).is_err(), "positions past the table must be refused");
}
