// 2-D convolution, NCHW, with stride, padding, dilation and groups, and its backward passes.
//
//   x  [N, C, H, W]       input          w  [O, C/G, KH, KW]   filters      bias [O]
//   y  [N, O, OH, OW]     output         G groups; group g owns channels g*C/G.. and g*O/G..
//   y[n,o,i,j] = bias[o] + sum_{c,a,b} w[o,c,a,b] * x[n, g*C/G + c, i*sh - ph + a*dh, j*sw - pw + b*dw]
//
// conv2d_gemm is an implicit GEMM: the im2col matrix is never stored, each tile load computes
// the image index it stands for (zero outside the image). One pipeline per MODE (a header
// constant, with the tile constants BM BN BK TM TN of the matmul, shaders/matmul.wgsl):
//   MODE 0  forward  C[o, (n,i,j)]   = sum_k W[o, k=(c,a,b)] * im2col(x)[k, (n,i,j)]    (+ bias)
//   MODE 1  dX       C[c, (n,h,w)]   = sum_k W[o,c,a,b] over k=(o,a,b) * gather(dy)[k, (n,h,w)]
//                    where gather(dy) is dy[n,o,i,j] for the (i, j) with i*sh - ph + a*dh = h
//                    (and the same for j), zero where no such integer position exists
//   MODE 2  dW       C[o, (c,a,b)]   = sum_k dy[n,o,i,j] over k=(n,i,j) * im2col(x)[(c,a,b), k]
// workgroup_id.z is the group. Bindings: 1 img (x in modes 0 and 2, dy in mode 1), 2 mat (w in
// modes 0 and 1, dy in mode 2), 3 bias (mode 0, when has_bias), 4 out (y, dx or dw).
//
// Depthwise convolutions (G = C = O) have an M of 1 per group, which wastes a GEMM tile, so
// they take direct kernels: dw_forward and dw_dx (one invocation per output element, grid
// stride), dw_dw_channel (one workgroup per channel holding all of its KH*KW <= 25 taps in
// registers, so each dy element is read once rather than once per tap; a tree reduction over
// N*OH*OW per tap), dw_dw (one workgroup per filter tap, for larger filters).
// bias_grad: dbias[o] = sum over n, i, j of dy[n,o,i,j], one workgroup per channel.
// Every entry adds into out instead of overwriting it when `accumulate` is set.

struct Params {
    n: u32, c: u32, h: u32, w: u32,
    o: u32, kh: u32, kw: u32, oh: u32,
    ow: u32, sh: u32, sw: u32, ph: u32,
    pw: u32, dh: u32, dw: u32, groups: u32,
    has_bias: u32, accumulate: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> img: array<f32>;
@group(0) @binding(2) var<storage, read> mat: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG_X: u32 = BN / TN;
const WG_Y: u32 = BM / TM;
const WG: u32 = WG_X * WG_Y;
const TN4: u32 = TN / 4u;

var<workgroup> a_tile: array<f32, BK * BM>; // [BK][BM]
var<workgroup> b_tile: array<vec4<f32>, BK * BN / 4u>; // [BK][BN]

fn cg() -> u32 { return p.c / p.groups; }
fn og() -> u32 { return p.o / p.groups; }
fn taps() -> u32 { return p.kh * p.kw; }

fn gemm_m() -> u32 {
    if (MODE == 1u) { return cg(); }
    return og();
}
fn gemm_n() -> u32 {
    if (MODE == 0u) { return p.n * p.oh * p.ow; }
    if (MODE == 1u) { return p.n * p.h * p.w; }
    return cg() * taps();
}
fn gemm_k() -> u32 {
    if (MODE == 0u) { return cg() * taps(); }
    if (MODE == 1u) { return og() * taps(); }
    return p.n * p.oh * p.ow;
}

// The output position (i, j) whose tap (a, b) reads input (h, w), if one exists: the
// transpose of im2col, as a gather so that dX needs no atomics.
fn dy_gather(g: u32, o: u32, a: u32, b: u32, n: u32, h: u32, w: u32) -> f32 {
    let ti = i32(h + p.ph) - i32(a * p.dh);
    let tj = i32(w + p.pw) - i32(b * p.dw);
    if (ti < 0 || tj < 0) { return 0.0; }
    let ui = u32(ti);
    let uj = u32(tj);
    if (ui % p.sh != 0u || uj % p.sw != 0u) { return 0.0; }
    let i = ui / p.sh;
    let j = uj / p.sw;
    if (i >= p.oh || j >= p.ow) { return 0.0; }
    return img[((n * p.o + g * og() + o) * p.oh + i) * p.ow + j];
}

fn load_a(g: u32, m: u32, k: u32) -> f32 {
    if (MODE == 0u) {
        return mat[(g * og() + m) * cg() * taps() + k];
    }
    if (MODE == 1u) {
        // W[o, c=m, a, b] with k = (o, a, b)
        let o = k / taps();
        let t = k % taps();
        return mat[((g * og() + o) * cg() + m) * taps() + t];
    }
    // dy[n, o=m, i, j] with k = (n, i, j)
    let s = p.oh * p.ow;
    let n = k / s;
    return mat[(n * p.o + g * og() + m) * s + k % s];
}

// Mode 1's B element: dy gathered for input pixel col = (n, h, w) and k = (o, a, b).
fn load_b_dx(g: u32, k: u32, col: u32) -> f32 {
    let s = p.h * p.w;
    let n = col / s;
    let r = col % s;
    let o = k / taps();
    let t = k % taps();
    return dy_gather(g, o, t / p.kw, t % p.kw, n, r / p.w, r % p.w);
}

fn out_index(g: u32, m: u32, col: u32) -> u32 {
    if (MODE == 0u) {
        let s = p.oh * p.ow;
        return ((col / s) * p.o + g * og() + m) * s + col % s;
    }
    if (MODE == 1u) {
        let s = p.h * p.w;
        return ((col / s) * p.c + g * cg() + m) * s + col % s;
    }
    return (g * og() + m) * cg() * taps() + col;
}

// The im2col element of modes 0 and 2 splits into a pixel part (n, i, j) and a tap part
// (c, a, b): x[(n*C + g*C/G + c)*H*W + (i*sh - ph + a*dh)*W + (j*sw - pw + b*dw)]. Each part is
// an offset and a row and column displacement; the element is zero outside the image.
struct Part { off: i32, h: i32, w: i32 }

fn pixel_part(g: u32, q: u32) -> Part {
    let s = p.oh * p.ow;
    let n = q / s;
    let r = q % s;
    let off = i32((n * p.c + g * cg()) * p.h * p.w);
    return Part(off, i32((r / p.ow) * p.sh) - i32(p.ph), i32((r % p.ow) * p.sw) - i32(p.pw));
}

fn tap_part(t: u32) -> Part {
    let c = t / taps();
    let r = t % taps();
    return Part(i32(c * p.h * p.w), i32((r / p.kw) * p.dh), i32((r % p.kw) * p.dw));
}

fn im2col_parts(a: Part, b: Part) -> f32 {
    let hi = a.h + b.h;
    let wi = a.w + b.w;
    if (hi < 0 || wi < 0 || hi >= i32(p.h) || wi >= i32(p.w)) { return 0.0; }
    return img[u32(a.off + b.off + hi * i32(p.w) + wi)];
}

// The k-dependent part of this k-slice's B elements (the tap in mode 0, the pixel in mode
// 2), worked out once per slice instead of once per element: on a CPU adapter the integer
// divisions cost more than the multiply-adds.
var<workgroup> k_parts: array<Part, BK>;

@compute @workgroup_size(WG)
fn conv2d_gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tx = lid % WG_X;
    let ty = lid / WG_X;
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    let g = wg.z;
    let gm = gemm_m();
    let gn = gemm_n();
    let gk = gemm_k();

    var acc: array<vec4<f32>, TM * TN4>;
    for (var i = 0u; i < TM * TN4; i++) { acc[i] = vec4<f32>(0.0); }
    // The column part of the last B element this invocation loaded: when the workgroup size
    // is a multiple of BN an invocation always loads the same column, so it is worked out once.
    var cached_col = 0xffffffffu;
    var col_part = Part(0, 0, 0);

    for (var k0 = 0u; k0 < gk; k0 += BK) {
        if (MODE != 1u && lid < BK && k0 + lid < gk) {
            if (MODE == 0u) { k_parts[lid] = tap_part(k0 + lid); } else { k_parts[lid] = pixel_part(g, k0 + lid); }
        }
        workgroupBarrier();
        for (var i = lid; i < BM * BK; i += WG) {
            let kk = i % BK;
            let mm = i / BK;
            var v = 0.0;
            if (row0 + mm < gm && k0 + kk < gk) { v = load_a(g, row0 + mm, k0 + kk); }
            a_tile[kk * BM + mm] = v;
        }
        // Neighbouring invocations take neighbouring output columns: neighbouring pixels.
        for (var i = lid; i < BN * BK; i += WG) {
            let nn = i % BN;
            let kk = i / BN;
            var v = 0.0;
            let col = col0 + nn;
            if (col < gn && k0 + kk < gk) {
                if (MODE == 1u) {
                    v = load_b_dx(g, k0 + kk, col);
                } else {
                    if (col != cached_col) {
                        if (MODE == 0u) { col_part = pixel_part(g, col); } else { col_part = tap_part(col); }
                        cached_col = col;
                    }
                    v = im2col_parts(col_part, k_parts[kk]);
                }
            }
            let t = kk * BN + nn;
            b_tile[t / 4u][t % 4u] = v;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < BK; kk++) {
            var bv: array<vec4<f32>, TN4>;
            for (var j = 0u; j < TN4; j++) { bv[j] = b_tile[(kk * BN + tx * TN) / 4u + j]; }
            for (var i = 0u; i < TM; i++) {
                let av = vec4<f32>(a_tile[kk * BM + ty * TM + i]);
                for (var j = 0u; j < TN4; j++) {
                    acc[i * TN4 + j] = fma(av, bv[j], acc[i * TN4 + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        let row = row0 + ty * TM + i;
        if (row >= gm) { break; }
        for (var j = 0u; j < TN; j++) {
            let col = col0 + tx * TN + j;
            if (col >= gn) { break; }
            var v = acc[i * TN4 + j / 4u][j % 4u];
            if (MODE == 0u && p.has_bias != 0u) { v += bias[g * og() + row]; }
            let idx = out_index(g, row, col);
            if (p.accumulate != 0u) { v += out[idx]; }
            out[idx] = v;
        }
    }
}

// ---- depthwise (G = C = O: channel c reads only input channel c) ----

fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * 256u + lid;
}

fn store(i: u32, v: f32) {
    if (p.accumulate != 0u) { out[i] += v; } else { out[i] = v; }
}

// img = x, mat = w [C, 1, KH, KW], out = y.
@compute @workgroup_size(256)
fn dw_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let total = p.n * p.o * p.oh * p.ow;
    for (var e = flat_index(wg, nwg, lid); e < total; e += nwg.x * nwg.y * 256u) {
        let j = e % p.ow;
        let i = (e / p.ow) % p.oh;
        let nc = e / (p.ow * p.oh); // n * C + c
        let c = nc % p.c;
        var s = 0.0;
        if (p.has_bias != 0u) { s = bias[c]; }
        for (var a = 0u; a < p.kh; a++) {
            let hi = i32(i * p.sh + a * p.dh) - i32(p.ph);
            if (hi < 0 || hi >= i32(p.h)) { continue; }
            for (var b = 0u; b < p.kw; b++) {
                let wi = i32(j * p.sw + b * p.dw) - i32(p.pw);
                if (wi < 0 || wi >= i32(p.w)) { continue; }
                s = fma(mat[(c * p.kh + a) * p.kw + b], img[(nc * p.h + u32(hi)) * p.w + u32(wi)], s);
            }
        }
        store(e, s);
    }
}

// img = dy, mat = w, out = dx: each input element gathers from the outputs that read it.
@compute @workgroup_size(256)
fn dw_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let total = p.n * p.c * p.h * p.w;
    for (var e = flat_index(wg, nwg, lid); e < total; e += nwg.x * nwg.y * 256u) {
        let x = e % p.w;
        let y = (e / p.w) % p.h;
        let nc = e / (p.w * p.h);
        let c = nc % p.c;
        var s = 0.0;
        for (var a = 0u; a < p.kh; a++) {
            let ti = i32(y + p.ph) - i32(a * p.dh);
            if (ti < 0) { continue; }
            // Stride 1 (most depthwise layers) needs no division: integer division by a
            // runtime value is slow on CPU adapters, and this is the inner loop.
            var i = u32(ti);
            if (p.sh != 1u) {
                if (i % p.sh != 0u) { continue; }
                i = i / p.sh;
            }
            if (i >= p.oh) { continue; }
            for (var b = 0u; b < p.kw; b++) {
                let tj = i32(x + p.pw) - i32(b * p.dw);
                if (tj < 0) { continue; }
                var j = u32(tj);
                if (p.sw != 1u) {
                    if (j % p.sw != 0u) { continue; }
                    j = j / p.sw;
                }
                if (j >= p.ow) { continue; }
                s = fma(mat[(c * p.kh + a) * p.kw + b], img[(nc * p.oh + i) * p.ow + j], s);
            }
        }
        store(e, s);
    }
}

var<workgroup> scratch: array<f32, 256>;

// Tree reduction of scratch[0..256] into scratch[0] (a fixed order: deterministic).
fn reduce_scratch(lid: u32) {
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        workgroupBarrier();
        if (lid < stride) { scratch[lid] += scratch[lid + stride]; }
    }
    workgroupBarrier();
}

// img = x, mat = dy, out = dw [C, 1, KH, KW]: workgroup (c, a, b) sums over n, i, j.
@compute @workgroup_size(256)
fn dw_dw(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tap = wg.y * nwg.x + wg.x;
    if (tap >= p.c * p.kh * p.kw) { return; }
    let b = tap % p.kw;
    let a = (tap / p.kw) % p.kh;
    let c = tap / (p.kw * p.kh);
    let s = p.oh * p.ow;
    var acc = 0.0;
    for (var e = lid; e < p.n * s; e += 256u) {
        let n = e / s;
        let i = (e % s) / p.ow;
        let j = e % p.ow;
        let hi = i32(i * p.sh + a * p.dh) - i32(p.ph);
        let wi = i32(j * p.sw + b * p.dw) - i32(p.pw);
        if (hi < 0 || wi < 0 || hi >= i32(p.h) || wi >= i32(p.w)) { continue; }
        acc = fma(mat[(n * p.c + c) * s + i * p.ow + j], img[((n * p.c + c) * p.h + u32(hi)) * p.w + u32(wi)], acc);
    }
    scratch[lid] = acc;
    reduce_scratch(lid);
    if (lid == 0u) { store(tap, scratch[0]); }
}

// The most taps dw_dw_channel holds (5x5, EfficientNet's largest depthwise filter).
const DW_TAPS: u32 = 25u;

// img = x, mat = dy, out = dw [C, 1, KH, KW]: workgroup c sums every tap (a, b) over n, i, j,
// each invocation keeping its partial sums of all taps; then one reduction per tap.
@compute @workgroup_size(256)
fn dw_dw_channel(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = wg.y * nwg.x + wg.x;
    if (c >= p.c) { return; }
    let s = p.oh * p.ow;
    var acc: array<f32, DW_TAPS>;
    for (var e = lid; e < p.n * s; e += 256u) {
        let n = e / s;
        let i = (e % s) / p.ow;
        let j = e % p.ow;
        let g = mat[(n * p.c + c) * s + i * p.ow + j];
        let plane = (n * p.c + c) * p.h;
        for (var a = 0u; a < p.kh; a++) {
            let hi = i32(i * p.sh + a * p.dh) - i32(p.ph);
            if (hi < 0 || hi >= i32(p.h)) { continue; }
            for (var b = 0u; b < p.kw; b++) {
                let wi = i32(j * p.sw + b * p.dw) - i32(p.pw);
                if (wi < 0 || wi >= i32(p.w)) { continue; }
                let t = a * p.kw + b;
                acc[t] = fma(g, img[(plane + u32(hi)) * p.w + u32(wi)], acc[t]);
            }
        }
    }
    // taps() is uniform, so every invocation meets the reductions' barriers.
    for (var t = 0u; t < taps(); t++) {
        scratch[lid] = acc[t];
        reduce_scratch(lid);
        if (lid == 0u) { store(c * taps() + t, scratch[0]); }
    }
}

// img = dy, out = dbias [O]: workgroup o sums dy[n, o, :, :].
@compute @workgroup_size(256)
fn bias_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let o = wg.y * nwg.x + wg.x;
    if (o >= p.o) { return; }
    let s = p.oh * p.ow;
    var acc = 0.0;
    for (var e = lid; e < p.n * s; e += 256u) {
        acc += img[((e / s) * p.o + o) * s + e % s];
    }
    scratch[lid] = acc;
    reduce_scratch(lid);
    if (lid == 0u) { store(o, scratch[0]); }
}
