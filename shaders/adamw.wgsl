// Fused AdamW step, one pass over a parameter tensor's memory:
//
//   clip  = min(1, max_norm / (sqrt(norm_sq) + 1e-6))   (only when max_norm > 0; norm_sq is
//           the global squared gradient norm, computed on the GPU: no readback)
//   g     = grad * clip + ewc_lambda * fisher * (param - anchor)   (EWC term when has_ewc)
//   m     = beta1 m + (1 - beta1) g
//   v     = beta2 v + (1 - beta2) g^2
//   param = param * (1 - lr wd) - lr * (m / bc1) / (sqrt(v / bc2) + eps)
//
// bc1 = 1 - beta1^t and bc2 = 1 - beta2^t are computed on the host. This is PyTorch's
// torch.optim.AdamW (decoupled weight decay) and clip_grad_norm_ (same 1e-6).
//
//   grad, fisher, anchor, param, m, v: [n]   norm_sq: [1]

struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bc1: f32,
    bc2: f32,
    max_norm: f32,
    ewc_lambda: f32,
    has_ewc: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> norm_sq: array<f32>;
@group(0) @binding(3) var<storage, read> fisher: array<f32>;
@group(0) @binding(4) var<storage, read> anchor: array<f32>;
@group(0) @binding(5) var<storage, read_write> param: array<f32>;
@group(0) @binding(6) var<storage, read_write> m1: array<f32>;
@group(0) @binding(7) var<storage, read_write> m2: array<f32>;

@compute @workgroup_size(256)
fn adamw(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var clip = 1.0;
    if (p.max_norm > 0.0) { clip = min(1.0, p.max_norm / (sqrt(norm_sq[0]) + 1e-6)); }
    // Grid-stride loop over a host-capped number of workgroups (see elementwise.wgsl).
    for (var i = (wg.y * nwg.x + wg.x) * 256u + lid; i < p.n; i += nwg.x * nwg.y * 256u) {
        let w = param[i];
        var g = grad[i] * clip;
        if (p.has_ewc != 0u) { g += p.ewc_lambda * fisher[i] * (w - anchor[i]); }
        let m = p.beta1 * m1[i] + (1.0 - p.beta1) * g;
        let v = p.beta2 * m2[i] + (1.0 - p.beta2) * g * g;
        m1[i] = m;
        m2[i] = v;
        param[i] = w * (1.0 - p.lr * p.weight_decay) - p.lr * (m / p.bc1) / (sqrt(v / p.bc2) + p.eps);
    }
}
