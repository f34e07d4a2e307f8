//! Batch normalisation (`shaders/batch_norm.wgsl`) over the channels of `[N, C, ...]` tensors.
//!
//! Training mode normalises with the batch's statistics (and moves the running averages);
//! evaluation mode and a frozen BN use the running ones, which makes the op a per-channel
//! affine map. [`BnSaved`] keeps what the backward pass needs for either.

use bytemuck::{Pod, Zeroable};

use super::workgroup_reduce::reducing;
use super::{expect_numel, shader, u32_of};
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, KernelSpec, ShaderFile};
use crate::tensor::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    c: u32,
    s: u32,
    train: u32,
    from_var: u32,
    update_running: u32,
    has_dgamma: u32,
    has_dbeta: u32,
    accumulate: u32,
    eps: f32,
    momentum: f32,
    _pad: u32,
}

const OP: &str = "batch_norm";

/// The statistics a forward pass normalised with: the batch's mean and rstd (training mode),
/// or the running mean and variance (evaluation, frozen).
#[derive(Clone)]
pub struct BnSaved {
    pub mean: Tensor,
    /// rstd when `train`, the running variance otherwise (rstd is formed in the kernels).
    pub rstd_or_var: Tensor,
    pub train: bool,
    pub eps: f32,
}

/// (N, C, S) of x `[N, C, ...]`.
fn dims(x: &Tensor) -> Result<(usize, usize, usize)> {
    if x.rank() < 2 {
        return Err(Error::Shape { op: OP, tensor: "x", expected: "[N, C, ...]".into(), found: x.shape().to_vec() });
    }
    let (n, c) = (x.dim(0), x.dim(1));
    Ok((n, c, x.numel() / (n * c).max(1)))
}

fn params(x: &Tensor, eps: f32, momentum: f32) -> Result<Params> {
    let (n, c, s) = dims(x)?;
    u32_of(OP, "elements", x.numel())?;
    Ok(Params {
        n: n as u32,
        c: c as u32,
        s: s as u32,
        train: 0,
        from_var: 0,
        update_running: 0,
        has_dgamma: 0,
        has_dbeta: 0,
        accumulate: 0,
        eps,
        momentum,
        _pad: 0,
    })
}

fn per_channel(x: &Tensor, named: &[(&'static str, &Tensor)]) -> Result<()> {
    let c = x.dim(1);
    for (name, t) in named {
        t.expect_dtype(OP, DType::F32)?;
        expect_numel(OP, name, t, c, "one per channel (dimension 1 of x)")?;
    }
    Ok(())
}

/// batch_norm.wgsl with this device's workgroup reductions, and the header that names them:
/// every entry of the file is compiled from the one module.
fn shader_file(gpu: &Gpu) -> (ShaderFile, String) {
    reducing(gpu, shader!("batch_norm"), "")
}

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;

fn apply(gpu: &Gpu, p: Params, x: &Tensor, saved: &BnSaved, gamma: &Tensor, beta: &Tensor) -> Result<Tensor> {
    let y = Tensor::empty(gpu, x.shape(), DType::F32)?;
    let bindings = [
        ("x", Some(x)),
        ("mean", Some(&saved.mean)),
        ("rstd", Some(&saved.rstd_or_var)),
        ("gamma", Some(gamma)),
        ("beta", Some(beta)),
        ("y", Some(&y)),
    ];
    let (file, header) = shader_file(gpu);
    gpu.dispatch(
        OP,
        &KernelSpec { file, entry: "bn_apply", header: &header, access: &[R, R, R, R, R, RW] },
        bytemuck::bytes_of(&p),
        &bindings,
        gpu.grid_stride(x.numel() as u64),
    )?;
    Ok(y)
}

/// Training mode: y with the batch's statistics; with `running` (mean, var) those move toward
/// the batch's by `momentum` (PyTorch's rule). Returns y and what backward needs.
///
/// Bindings: bn_stats 1 x, 2 mean, 3 rstd, 4 running mean, 5 running var; then bn_apply
/// 1 x, 2 mean, 3 rstd, 4 gamma, 5 beta, 6 y.
pub fn forward_train(
    gpu: &Gpu,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running: Option<(&Tensor, &Tensor)>,
    eps: f32,
    momentum: f32,
) -> Result<(Tensor, BnSaved)> {
    let mut p = params(x, eps, momentum)?;
    per_channel(x, &[("gamma", gamma), ("beta", beta)])?;
    if let Some((rm, rv)) = running {
        per_channel(x, &[("running_mean", rm), ("running_var", rv)])?;
    }
    let c = x.dim(1);
    let mean = Tensor::empty(gpu, &[c], DType::F32)?;
    let rstd = Tensor::empty(gpu, &[c], DType::F32)?;
    p.update_running = running.is_some() as u32;
    let bindings = [
        ("x", Some(x)),
        ("mean", Some(&mean)),
        ("rstd", Some(&rstd)),
        ("running_mean", running.map(|r| r.0)),
        ("running_var", running.map(|r| r.1)),
    ];
    let (file, header) = shader_file(gpu);
    gpu.dispatch(
        OP,
        &KernelSpec { file, entry: "bn_stats", header: &header, access: &[R, RW, RW, RW, RW] },
        bytemuck::bytes_of(&p),
        &bindings,
        gpu.grid_1d(c as u64),
    )?;
    p.train = 1;
    let saved = BnSaved { mean, rstd_or_var: rstd, train: true, eps };
    Ok((apply(gpu, p, x, &saved, gamma, beta)?, saved))
}

/// Evaluation mode or a frozen BN: y with the running statistics, which stay as they are.
///
/// Bindings: bn_apply 1 x, 2 running mean, 3 running var, 4 gamma, 5 beta, 6 y.
pub fn forward_fixed(
    gpu: &Gpu,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f32,
) -> Result<(Tensor, BnSaved)> {
    let mut p = params(x, eps, 0.0)?;
    per_channel(x, &[("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)])?;
    p.from_var = 1;
    let saved = BnSaved { mean: running_mean.clone(), rstd_or_var: running_var.clone(), train: false, eps };
    Ok((apply(gpu, p, x, &saved, gamma, beta)?, saved))
}

/// Where backward writes: dx (and whether to add into it), dgamma and dbeta (added into when
/// `accumulate_params`, as parameter gradients are).
pub struct BnGrads<'a> {
    pub dx: Option<(&'a Tensor, bool)>,
    pub dgamma: Option<&'a Tensor>,
    pub dbeta: Option<&'a Tensor>,
    pub accumulate_params: bool,
}

/// The backward pass for either mode (`saved` says which).
///
/// Bindings: bn_bwd_sums 1 x, 2 dy, 3 mean, 4 rstd/var, 5 sums `[2, C]`, 6 dgamma, 7 dbeta;
/// then bn_bwd_dx 1 x, 2 dy, 3 mean, 4 rstd/var, 5 gamma, 6 sums, 7 dx.
pub fn backward(gpu: &Gpu, x: &Tensor, gamma: &Tensor, saved: &BnSaved, dy: &Tensor, out: BnGrads) -> Result<()> {
    let mut p = params(x, saved.eps, 0.0)?;
    expect_numel(OP, "dy", dy, x.numel(), "the shape of x")?;
    p.train = saved.train as u32;
    p.from_var = !saved.train as u32;
    let c = x.dim(1);
    // Fixed statistics need the sums only for dgamma and dbeta.
    let need_sums = saved.train && out.dx.is_some();
    let sums = if need_sums || out.dgamma.is_some() || out.dbeta.is_some() {
        let sums = Tensor::empty(gpu, &[2 * c], DType::F32)?;
        let mut ps = p;
        ps.has_dgamma = out.dgamma.is_some() as u32;
        ps.has_dbeta = out.dbeta.is_some() as u32;
        ps.accumulate = out.accumulate_params as u32;
        for (name, t) in [("dgamma", out.dgamma), ("dbeta", out.dbeta)] {
            if let Some(t) = t {
                expect_numel(OP, name, t, c, "one per channel")?;
            }
        }
        let bindings = [
            ("x", Some(x)),
            ("dy", Some(dy)),
            ("mean", Some(&saved.mean)),
            ("rstd", Some(&saved.rstd_or_var)),
            ("sums", Some(&sums)),
            ("dgamma", out.dgamma),
            ("dbeta", out.dbeta),
        ];
        let (file, header) = shader_file(gpu);
        gpu.dispatch(
            OP,
            &KernelSpec { file, entry: "bn_bwd_sums", header: &header, access: &[R, R, R, R, RW, RW, RW] },
            bytemuck::bytes_of(&ps),
            &bindings,
            gpu.grid_1d(c as u64),
        )?;
        Some(sums)
    } else {
        None
    };
    if let Some((dx, accumulate)) = out.dx {
        expect_numel(OP, "dx", dx, x.numel(), "the shape of x")?;
        p.accumulate = accumulate as u32;
        let bindings = [
            ("x", Some(x)),
            ("dy", Some(dy)),
            ("mean", Some(&saved.mean)),
            ("rstd", Some(&saved.rstd_or_var)),
            ("gamma", Some(gamma)),
            ("sums", sums.as_ref()),
            ("dx", Some(dx)),
        ];
        let (file, header) = shader_file(gpu);
        gpu.dispatch(
            OP,
            &KernelSpec { file, entry: "bn_bwd_dx", header: &header, access: &[R, R, R, R, R, R, RW] },
            bytemuck::bytes_of(&p),
            &bindings,
            gpu.grid_stride(x.numel() as u64),
        )?;
    }
    Ok(())
}
