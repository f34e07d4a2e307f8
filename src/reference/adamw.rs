//! AdamW as torch.optim.AdamW, with clip_grad_norm_'s scale and an optional EWC term.
//! All slices [n].

pub struct Hyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// One step (t from 1). `clip` = (global squared grad norm, max norm); `ewc` = (λ, F, θ*).
#[allow(clippy::too_many_arguments)]
pub fn step(
    h: &Hyper,
    t: u32,
    param: &mut [f64],
    grad: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    clip: Option<(f64, f64)>,
    ewc: Option<(f64, &[f64], &[f64])>,
) {
    let scale = clip.map_or(1.0, |(norm_sq, max_norm)| (max_norm / (norm_sq.sqrt() + 1e-6)).min(1.0));
    let bc1 = 1.0 - h.beta1.powi(t as i32);
    let bc2 = 1.0 - h.beta2.powi(t as i32);
    for i in 0..param.len() {
        let mut g = grad[i] * scale;
        if let Some((lambda, fisher, anchor)) = ewc {
            g += lambda * fisher[i] * (param[i] - anchor[i]);
        }
        m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g;
        v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g * g;
        param[i] = param[i] * (1.0 - h.lr * h.weight_decay) - h.lr * (m[i] / bc1) / ((v[i] / bc2).sqrt() + h.eps);
    }
}
