//! RoPE forward and inverse (backward) vs the reference, with offsets and explicit positions,
//! partial rotary and an attention factor.

use kiln::Tensor;
use kiln::kernels::rope::{self, Positions, RopeTables, angles, angles_from};
use kiln::nn::RopeConfig;
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

/// Partial rotary (only the first rot_dim dims of each head turn, pairing i with i + rot_dim/2)
/// with an attention factor on cos and sin; the pass-through dims come out unchanged, also
/// when the backward accumulates into an existing gradient.
#[test]
fn rope_partial_rotary_with_attention_factor() {
    let gpu = gpu();
    let mut rng = Rng::new(81);
    // (b, t, h, head_dim, rot_dim): Phi-3's 0.75 and 0.5 factors, an odd pass-through, a single pair.
    for (b, t, h, d, rot) in [(1, 5, 2, 16, 12), (2, 7, 3, 12, 6), (1, 3, 1, 7, 4), (2, 9, 5, 6, 2), (1, 4, 2, 8, 8)] {
        let max_pos = 40;
        let inv_freq: Vec<f64> = (0..rot / 2).map(|i| 0.9f64.powi(3 * i as i32) / 1.7).collect();
        let factor = 1.21;
        let tables = RopeTables::from_inv_freq(gpu, d, &inv_freq, factor, max_pos).unwrap();
        let ang = angles_from(&inv_freq, max_pos);
        let x = rng.vec(b * t * h * d);
        let xt = upload(&x, &[b, t, h, d]);
        let offset = 3;
        let y = rope::apply(gpu, &tables, &xt, Positions::Offset(offset)).unwrap();
        let positions: Vec<usize> = (0..b * t).map(|i| i % t + offset).collect();
        let want = r::apply_partial(&f64s(&x), (b, t, h, d), rot, &ang, factor, &positions, false);
        let what = format!("rope partial {b}x{t}x{h}x{d} rot {rot}");
        assert_close(&what, &download(&y), &want, 1e-5, 1e-5);

        let explicit: Vec<u32> = (0..b * t).map(|_| rng.below(max_pos as u32)).collect();
        let pt = Tensor::from_u32(gpu, &explicit, &[b, t]).unwrap();
        let prior = rng.vec(b * t * h * d);
        let dx = upload(&prior, &[b, t, h, d]);
        rope::apply_into(gpu, &tables, &xt, Positions::Explicit(&pt), true, &dx, true).unwrap();
        let positions: Vec<usize> = explicit.iter().map(|&p| p as usize).collect();
        let back = r::apply_partial(&f64s(&x), (b, t, h, d), rot, &ang, factor, &positions, true);
        let want: Vec<f64> = back.iter().zip(&prior).map(|(a, p)| a + *p as f64).collect();
        assert_close(&format!("{what} inverse, accumulated"), &download(&dx), &want, 1e-5, 1e-5);
    }
    assert!(RopeTables::from_inv_freq(gpu, 4, &[1.0, 0.5, 0.1], 1.0, 8).is_err(), "6 rotated dims in a head of 4");
    assert!(RopeTables::from_inv_freq(gpu, 4, &[], 1.0, 8).is_err(), "nothing to rotate");
}

/// Inverse frequencies and attention factors of every RoPE type against transformers'
/// `ROPE_INIT_FUNCTIONS` (fixture `rope_scaling.json`, made by scripts/make_fixtures.py), from
/// the config both as older files write it (`rope_scaling`) and as transformers 5 saves it
/// (`rope_parameters`). transformers computes in f32; kiln in f64, so the tolerance is relative.
#[test]
fn rope_scaling_matches_transformers() {
    const RTOL: f64 = 1e-6;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rope_scaling.json");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(cases.len() >= 12, "{} cases", cases.len());
    let mut kinds = std::collections::BTreeSet::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let seq_len = case["seq_len"].as_u64().map(|s| s as usize);
        let want: Vec<f64> = case["inv_freq"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let want_factor = case["attention_factor"].as_f64().unwrap();
        for form in ["legacy", "saved"] {
            let cfg = &case[form];
            let head_dim = cfg["head_dim"].as_u64().map_or_else(
                || (cfg["hidden_size"].as_u64().unwrap() / cfg["num_attention_heads"].as_u64().unwrap()) as usize,
                |d| d as usize,
            );
            let rope = RopeConfig::from_hf(cfg, head_dim, &path).unwrap_or_else(|e| panic!("{name} {form}: {e}"));
            kinds.insert(format!("{:?}", rope.scaling).split([' ', '{']).next().unwrap().to_string());
            // What an export writes reads back as the same RoPE.
            let saved = serde_json::json!({"rope_parameters": rope.to_hf_json(),
                "max_position_embeddings": rope.max_position_embeddings});
            assert_eq!(RopeConfig::from_hf(&saved, head_dim, &path).unwrap(), rope, "{name} {form}: export round trip");
            let (got, factor) = rope.inv_freq(seq_len);
            assert_eq!(got.len(), want.len(), "{name} {form}: number of frequencies");
            let worst = got.iter().zip(&want).map(|(g, w)| ((g - w) / w).abs()).fold(0.0, f64::max);
            println!("{name} ({form}, seq_len {seq_len:?}): {} frequencies, max rel err {worst:.2e}", got.len());
            assert!(worst <= RTOL, "{name} {form} seq_len {seq_len:?}: inv_freq rel err {worst:e} > {RTOL:e}");
            assert!(
                (factor - want_factor).abs() <= RTOL * want_factor,
                "{name} {form}: attention factor {factor} vs transformers {want_factor}"
            );
        }
    }
    assert_eq!(kinds.len(), 6, "every RoPE type is covered: {kinds:?}");
}

/// Unknown types and impossible parameters are refused naming the key.
#[test]
fn rope_scaling_refuses_bad_configs() {
    let path = std::path::Path::new("config.json");
    let cases = [
        (serde_json::json!({"max_position_embeddings": 64, "rope_scaling": {"rope_type": "su2"}}), "`su2`"),
        (serde_json::json!({"max_position_embeddings": 64, "rope_scaling": {"rope_type": "linear"}}), "`factor`"),
        (
            serde_json::json!({"max_position_embeddings": 64, "rope_scaling": {"rope_type": "longrope",
                "short_factor": [1.0], "long_factor": [1.0, 2.0, 3.0, 4.0]}}),
            "`short_factor`",
        ),
        (serde_json::json!({"max_position_embeddings": 64, "partial_rotary_factor": 0.4}), "partial_rotary_factor"),
        (serde_json::json!({"rope_theta": 10000.0}), "max_position_embeddings"),
        (
            serde_json::json!({"max_position_embeddings": 64, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                "low_freq_factor": 4.0, "high_freq_factor": 1.0}}),
            "high_freq_factor",
        ),
    ];
    for (cfg, key) in cases {
        let err = RopeConfig::from_hf(&cfg, 8, path).err().unwrap_or_else(|| panic!("{cfg} accepted")).to_string();
        assert!(err.contains("config.json") && err.contains(key), "{cfg}: {err}");
    }
}
