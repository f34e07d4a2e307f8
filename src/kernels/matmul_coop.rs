//! The mixed-precision matmul (`shaders/matmul_coop.wgsl`): A and B rounded to f16 and
//! multiplied on cooperative matrices (NVIDIA's tensor cores through `VK_KHR_cooperative_matrix`,
//! Apple's simdgroup matrices), accumulated in f32.
//!
//! It runs only for products whose caller accepts f16 inputs ([`Matmul::mixed_precision`]: a
//! frozen base's forward and dX, where the weight is never updated and the rounding is the same
//! as a 16-bit base's) and for the quantized and 16-bit bases' tiled products
//! (`shaders/qmatmul_coop.wgsl`, always frozen), and only while the device's [`Precision`] is
//! [`Precision::F16`]. Never
//! silently: `kiln devices`, `kiln bench`, the step benchmarks and each run's settings name the
//! precision in use, and `--precision f32` (or `KILN_PRECISION=f32`) turns it off.
//!
//! [`Matmul::mixed_precision`]: super::matmul::Matmul::mixed_precision

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Which kernels run a product whose caller accepts f16 inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// The f32 kernels, for every product.
    F32,
    /// The cooperative-matrix kernel with f16 inputs and f32 accumulation, where the caller
    /// accepts it; the f32 kernels elsewhere.
    F16,
}

impl Precision {
    pub fn parse(text: &str) -> Option<Precision> {
        match text {
            "f32" => Some(Precision::F32),
            "f16" => Some(Precision::F16),
            _ => None,
        }
    }

    /// "f32" or "f16", as `--precision` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }
}

/// What the kernel needs of a device: square `size`×`size`×`size` fragments with f16 A and B
/// and an f32 accumulator, and one subgroup size (a workgroup is four subgroups of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoopShape {
    pub size: u32,
    pub subgroup: u32,
}

impl CoopShape {
    /// Rows and columns of C per workgroup (2 × 2 subgroups of 2 × 2 fragments).
    pub fn block(self) -> u32 {
        4 * self.size
    }

    /// The WGSL header of `matmul_coop.wgsl` for this shape.
    pub(crate) fn header(self, has_epilogue: bool) -> String {
        let s = self.size;
        format!(
            "enable f16;\nenable wgpu_cooperative_matrix;\nconst CS: u32 = {s}u;\nconst SG: u32 = {}u;\n\
             alias FragA = coop_mat{s}x{s}<f16, A>;\nalias FragB = coop_mat{s}x{s}<f16, B>;\n\
             alias FragC = coop_mat{s}x{s}<f32, C>;\nconst HAS_EPILOGUE: bool = {has_epilogue};\n",
            self.subgroup
        )
    }

    /// "cooperative matrices 16x16x16, subgroups of 32, f32 accumulation".
    pub fn describe(self) -> String {
        let s = self.size;
        format!("cooperative matrices {s}x{s}x{s}, subgroups of {}, f32 accumulation", self.subgroup)
    }
}

/// The shape the kernel would take on a device with these features, configurations, subgroup
/// sizes and limits, or why it cannot run there.
pub fn coop_shape_of(
    features: wgpu::Features,
    configs: &[wgpu::CooperativeMatrixProperties],
    info: &wgpu::AdapterInfo,
    limits: &wgpu::Limits,
) -> std::result::Result<CoopShape, String> {
    use wgpu::CooperativeScalarType as T;
    for (feature, name) in [
        (wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX, "cooperative matrices"),
        (wgpu::Features::SHADER_F16, "f16 shaders"),
        (wgpu::Features::SUBGROUP, "subgroup operations"),
    ] {
        if !features.contains(feature) {
            return Err(format!("the adapter has no {name}"));
        }
    }
    let square_f16 = |size: u32| {
        configs.iter().any(|c| {
            c.m_size == size && c.n_size == size && c.k_size == size && c.ab_type == T::F16 && c.cr_type == T::F32
        })
    };
    let Some(size) = [16, 8].into_iter().find(|&s| square_f16(s)) else {
        return Err("the adapter lists no 8x8x8 or 16x16x16 cooperative matrix with f16 inputs and an f32 accumulator"
            .to_string());
    };
    if info.subgroup_min_size != info.subgroup_max_size {
        return Err(format!(
            "the adapter's subgroup size varies ({}-{}), and the kernel lays its fragments out for one",
            info.subgroup_min_size, info.subgroup_max_size
        ));
    }
    let shape = CoopShape { size, subgroup: info.subgroup_min_size };
    let (block, depth) = (shape.block(), 2 * size);
    // Two f16 tiles and four f32 fragments' stage.
    let bytes = 2 * (block * depth * 2) + 4 * size * size * 4;
    if 4 * shape.subgroup > limits.max_compute_invocations_per_workgroup
        || bytes > limits.max_compute_workgroup_storage_size
    {
        return Err(format!(
            "a workgroup of {} invocations and {bytes} bytes of workgroup memory is over the adapter's limits",
            4 * shape.subgroup
        ));
    }
    Ok(shape)
}

/// This device's shape for the kernel, or why it has none.
pub fn coop_shape(gpu: &Gpu) -> std::result::Result<CoopShape, String> {
    coop_shape_of(gpu.features(), gpu.cooperative_matrices(), gpu.info(), gpu.limits())
}

/// f16 on a GPU that can run the kernel; f32 on a CPU adapter, which emulates cooperative
/// matrices (lavapipe from Mesa 26 lists them) slower than its f32 kernel, and wherever the
/// kernel cannot run. `KILN_PRECISION=f32|f16` overrides it; f16 where the kernel cannot run
/// warns and keeps f32.
pub fn default_precision(device_type: wgpu::DeviceType, shape: &std::result::Result<CoopShape, String>) -> Precision {
    let wanted = match std::env::var("KILN_PRECISION").as_deref() {
        Ok("") | Err(_) => None,
        Ok(text) => match Precision::parse(text) {
            Some(p) => Some(p),
            None => {
                eprintln!("warning: KILN_PRECISION={text:?} is not `f32` or `f16`; ignored");
                None
            }
        },
    };
    match (wanted, shape) {
        (Some(Precision::F16), Err(why)) => {
            eprintln!("warning: KILN_PRECISION=f16, but {why}; the matmuls stay f32");
            Precision::F32
        }
        (Some(p), _) => p,
        (None, Ok(_)) if device_type != wgpu::DeviceType::Cpu => Precision::F16,
        (None, _) => Precision::F32,
    }
}

/// This device's [`Precision`].
pub fn precision(gpu: &Gpu) -> Precision {
    gpu.setting(|info| default_precision(info.device_type, &coop_shape(gpu)))
}

/// Sets the device's precision (`--precision`, and the tests). F16 where the kernel cannot run
/// is an error that says why, naming the adapter.
pub fn set_precision(gpu: &Gpu, precision: Precision) -> Result<()> {
    if precision == Precision::F16
        && let Err(why) = coop_shape(gpu)
    {
        return Err(Error::invalid(
            "--precision",
            format!("f16 needs cooperative matrices, and on {} {why}; use --precision f32", gpu.describe()),
        ));
    }
    gpu.set_setting(precision);
    Ok(())
}

/// The shape to run a product that accepts f16 inputs on, when the device's precision is f16.
pub(crate) fn active(gpu: &Gpu) -> Option<CoopShape> {
    match precision(gpu) {
        Precision::F16 => coop_shape(gpu).ok(),
        Precision::F32 => None,
    }
}

/// What the precision setting means on this device, for headers and run settings: "f32
/// matmuls", or "f16 matmuls for frozen-base products (cooperative matrices 16x16x16, ...)".
pub fn describe(gpu: &Gpu) -> String {
    match active(gpu) {
        Some(shape) => describe_f16(shape),
        None => "f32 matmuls".to_string(),
    }
}

/// "f16 matmuls for frozen-base products (cooperative matrices 16x16x16, ...)".
pub fn describe_f16(shape: CoopShape) -> String {
    format!("f16 matmuls for frozen-base products ({})", shape.describe())
}
