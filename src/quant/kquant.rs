//! ggml's reference encoders of the K-quant super-blocks (`quantize_row_q{2,3,4,5,6}_K_ref` in
//! ggml-quants.c, without an importance matrix), written from their description: per sub-block
//! a weighted least-squares search for scale (and min), then the sub-block scales themselves
//! quantized to 6 or 8 bits against one f16 super-scale, then every weight re-rounded against
//! the scale it will really be decoded with. Everything is f32 in ggml's order of operations:
//! on 104 super-blocks of varied data (normal, uniform, heavy-tailed, one-signed, constant,
//! zero, tiny) the blocks were byte-identical to those of ggml's reference functions compiled
//! without floating-point contraction (a one-off check; that C code is not part of kiln).
//!
//! Block layouts (256 weights):
//!   Q2_K  84 bytes: 16 bytes of 4-bit scale | 4-bit min, 64 bytes of 2-bit quants, d, dmin
//!   Q3_K 110 bytes: 32 bytes of high bits (hmask), 64 of 2-bit quants, 12 of 6-bit scales, d
//!   Q4_K 144 bytes: d, dmin (f16), 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
//!   Q5_K 176 bytes: as Q4_K plus 32 bytes of fifth bits (qh) before the nibbles
//!   Q6_K 210 bytes: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 scales, d (f16)
//! `codec::dequantize_f64` documents where each weight's bits sit.

use half::f16;

use super::codec::{QK_K, k_scale_min};

/// ggml's `nearest_int`: round half to even (its magic-number trick, valid for |v| < 2^22).
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// ggml's `GROUP_MAX_EPS`: below this a group counts as all zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `make_qkx2_quants`: levels `l[i]` in 0..=nmax and (scale, min) with x ≈ scale·l −
/// min, searching `nstep + 1` trial inverse scales (nmax + rmin + rdelta·is) / (max − min),
/// solving the weighted least squares for each and keeping the one of least weighted squared
/// (or, with `use_mad`, absolute) error. Returns (scale, min).
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let err = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        l[i] = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
        best_error += weights[i] * err(scale * l[i] as f32 + min - x[i]);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let (w, q) = (weights[i], q as f32);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                cur_error += weights[i] * err(this_scale * laux[i] as f32 + this_min - x[i]);
            }
            if cur_error < best_error {
                l.copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// (the value of largest magnitude with its sign, that magnitude); the first one on ties, as
/// ggml picks it.
fn signed_abs_max(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (max, amax)
}

/// ggml's `make_qx_quants` with `rmse_type` 1 and no importance weights (Q6_K's sub-blocks):
/// signed levels in −nmax..nmax−1 (stored + nmax) and the scale, trying 19 inverse scales
/// around −nmax / max and keeping the one of least weighted (x²) squared error.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [u8]) -> f32 {
    let (max, amax) = signed_abs_max(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (i, &v) in x.iter().enumerate() {
        let q = level(iscale, v);
        l[i] = (q + nmax) as u8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let q = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * q;
            suml2 += w * q * q;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                l[i] = (level(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Appends one Q4_K (`five` false) or Q5_K super-block of the 256 values `x`.
pub(super) fn quantize_q45_k(x: &[f32], five: bool, out: &mut Vec<u8>) {
    debug_assert_eq!(x.len(), QK_K);
    let nmax = if five { 31 } else { 15 };
    let (rmin, nstep) = if five { (-0.5, 15) } else { (-1.0, 20) };
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * (j + 1)];
        // Weights favour large values: the sub-block's RMS plus |x|.
        let sum_x2 = xs.iter().fold(0f32, |a, &v| a + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: Vec<f32> = xs.iter().map(|&v| av_x + v.abs()).collect();
        (scales[j], mins[j]) =
            make_qkx2_quants(nmax, xs, &weights, &mut l[32 * j..32 * (j + 1)], rmin, 0.1, nstep, false);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        // ggml stores nearest_int in a uint8_t before clamping to 63.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    // Re-round every weight against the scale and min it will be decoded with.
    for j in 0..8 {
        let (sc, m) = k_scale_min(&packed, j);
        let dl = d.to_f32() * sc as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for i in 32 * j..32 * (j + 1) {
            l[i] = nearest_int((x[i] + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    out.extend(d.to_le_bytes());
    out.extend(dmin.to_le_bytes());
    out.extend(packed);
    if five {
        // Fifth bits: sub-block j's weight i at bit j of qh byte i.
        let mut qh = [0u8; 32];
        for (i, &q) in l.iter().enumerate() {
            qh[i % 32] |= (q >> 4) << (i / 32);
        }
        out.extend(qh);
    }
    // Sub-blocks 2h and 2h + 1 share 32 bytes: low and high nibbles.
    for h in 0..4 {
        out.extend((0..32).map(|i| (l[64 * h + i] & 0xf) | ((l[64 * h + 32 + i] & 0xf) << 4)));
    }
}

/// Appends one Q6_K super-block of the 256 values `x`.
pub(super) fn quantize_q6_k(x: &[f32], out: &mut Vec<u8>) {
    debug_assert_eq!(x.len(), QK_K);
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for (g, s) in scales.iter_mut().enumerate() {
        *s = make_qx_quants(32, &x[16 * g..16 * (g + 1)], &mut l[16 * g..16 * (g + 1)]);
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = *s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        out.extend([0u8; 210]);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    let sc: Vec<i8> = scales.iter().map(|&s| nearest_int(iscale * s).min(127) as i8).collect();
    for (g, &s) in sc.iter().enumerate() {
        let dl = d.to_f32() * s as f32;
        if dl == 0.0 {
            continue;
        }
        for i in 16 * g..16 * (g + 1) {
            l[i] = (nearest_int(x[i] / dl).clamp(-32, 31) + 32) as u8;
        }
    }
    // Per 128-half h: ql byte 64h + 32(c % 2) + i holds weight 128h + 32c + i's low nibble in
    // nibble c / 2; qh byte 32h + i its top two bits at bits 2c.
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for (i, &q) in l.iter().enumerate() {
        let (h, c, k) = (i / 128, (i / 32) % 4, i % 32);
        ql[64 * h + 32 * (c % 2) + k] |= (q & 0xf) << (4 * (c / 2));
        qh[32 * h + k] |= (q >> 4) << (2 * c);
    }
    out.extend(ql);
    out.extend(qh);
    out.extend(sc.iter().map(|&s| s as u8));
    out.extend(d.to_le_bytes());
}

/// ggml's `make_q3_quants` with `do_rmse`: signed levels in −nmax..nmax−1 (stored + nmax),
/// starting from the rounding at −nmax / max, then up to 5 passes that move single levels when
/// that raises the weighted (x²) fit Σwxl² / Σwl². Returns the scale.
fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (max, amax) = signed_abs_max(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (i, &v) in x.iter().enumerate() {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        l[i] = q as i8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for (i, &v) in x.iter().enumerate() {
            let w = v * v;
            let li = l[i] as f32;
            let mut slx = sumlx - w * v * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l[i] as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for q in l.iter_mut() {
        *q += nmax as i8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// The 2-bit quants of Q2_K and Q3_K: per 128-half h, byte 32h + k holds weights
/// 128h + 32s + k at bits 2s.
fn push_2bit(l: &[u8; QK_K], out: &mut Vec<u8>) {
    for h in 0..2 {
        out.extend((0..32).map(|k| (0..4).fold(0u8, |b, s| b | (l[128 * h + 32 * s + k] << (2 * s)))));
    }
}

/// Appends one Q2_K super-block of the 256 values `x`.
pub(super) fn quantize_q2_k(x: &[f32], out: &mut Vec<u8>) {
    debug_assert_eq!(x.len(), QK_K);
    const Q4SCALE: f32 = 15.0;
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..16 {
        let xs = &x[16 * j..16 * (j + 1)];
        let weights: Vec<f32> = xs.iter().map(|v| v.abs()).collect();
        (scales[j], mins[j]) = make_qkx2_quants(3, xs, &weights, &mut l[16 * j..16 * (j + 1)], -0.5, 0.1, 15, true);
        max_scale = max_scale.max(scales[j]);
        max_min = max_min.max(mins[j]);
    }
    // Scale in the low nibble, min in the high one; ggml stores the rounded ints as bytes.
    let mut packed = [0u8; 16];
    let mut d = f16::ZERO;
    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for j in 0..16 {
            packed[j] = nearest_int(iscale * scales[j]) as u8;
        }
        d = f16::from_f32(max_scale / Q4SCALE);
    }
    let mut dmin = f16::ZERO;
    if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for j in 0..16 {
            packed[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        dmin = f16::from_f32(max_min / Q4SCALE);
    }
    for (j, &sc) in packed.iter().enumerate() {
        let dl = d.to_f32() * (sc & 0xf) as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * (sc >> 4) as f32;
        for i in 16 * j..16 * (j + 1) {
            l[i] = nearest_int((x[i] + dm) / dl).clamp(0, 3) as u8;
        }
    }
    out.extend(packed);
    push_2bit(&l, out);
    out.extend(d.to_le_bytes());
    out.extend(dmin.to_le_bytes());
}

/// Appends one Q3_K super-block of the 256 values `x`.
pub(super) fn quantize_q3_k(x: &[f32], out: &mut Vec<u8>) {
    debug_assert_eq!(x.len(), QK_K);
    let mut li = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for j in 0..16 {
        scales[j] = make_q3_quants(4, &x[16 * j..16 * (j + 1)], &mut li[16 * j..16 * (j + 1)]);
        if scales[j].abs() > amax {
            amax = scales[j].abs();
            max_scale = scales[j];
        }
    }
    // 6-bit scales (offset 32): low nibbles in bytes 0..7 (j < 8 low half, else high half of
    // byte j − 8), top two bits in bytes 8..11 (byte 8 + j % 4, bits 2·(j / 4)).
    let mut packed = [0u8; 12];
    let mut d = f16::ZERO;
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..16 {
            let q = ((nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32) as u8;
            if j < 8 {
                packed[j] = q & 0xf;
            } else {
                packed[j - 8] |= (q & 0xf) << 4;
            }
            packed[8 + j % 4] |= (q >> 4) << (2 * (j / 4));
        }
        d = f16::from_f32(1.0 / iscale);
    }
    let mut l = [0u8; QK_K];
    for (i, q) in l.iter_mut().enumerate() {
        *q = li[i] as u8;
    }
    for j in 0..16 {
        let low = if j < 8 { packed[j] & 0xf } else { packed[j - 8] >> 4 };
        let sc = (low | (((packed[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
        let dl = d.to_f32() * sc as f32;
        if dl == 0.0 {
            continue;
        }
        for i in 16 * j..16 * (j + 1) {
            l[i] = (nearest_int(x[i] / dl).clamp(-4, 3) + 4) as u8;
        }
    }
    // Levels 4..7 keep their high bit in hmask (bit i / 32 of byte i % 32).
    let mut hmask = [0u8; 32];
    for (i, q) in l.iter_mut().enumerate() {
        if *q > 3 {
            hmask[i % 32] |= 1 << (i / 32);
            *q -= 4;
        }
    }
    out.extend(hmask);
    push_2bit(&l, out);
    out.extend(packed);
    out.extend(d.to_le_bytes());
}
