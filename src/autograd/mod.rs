//! The tape: ops record themselves in forward order; [`Tape::backward`] walks them in reverse
//! and runs their backward kernels into gradient buffers.
//!
//! A [`Var`] is a tensor plus, when it needs a gradient, an id on the tape. Ops whose inputs all
//! lack an id record nothing and return a plain tensor, so frozen parts of a model cost no
//! bookkeeping and no backward kernels, and the walk never goes below the lowest trainable
//! tensor. Trainable [`Param`]s own a persistent gradient buffer that backward adds into, which
//! is what gradient accumulation across micro-batches needs; the optimizer zeroes it after a step.

mod attention;
mod batch_norm;
mod checkpoint;
mod conv2d;
mod dora;
mod elementwise;
mod embedding;
mod linear;
mod loss;
mod norm;
mod pool;
mod pool2d;
mod rope;

pub use attention::attention;
pub use batch_norm::{BnStats, RunningStats, batch_norm};
pub use checkpoint::checkpoint;
pub use conv2d::conv2d;
pub use dora::dora;
pub use elementwise::{activation, add, dropout, gated, scale, split_cols, swiglu};
pub use embedding::embedding;
pub use linear::{Lora, WeightLayout, linear, linear_activation, linear_gated, linear_quant};
pub use loss::{Loss, cross_entropy, cross_entropy_weighted, linear_cross_entropy};
pub use norm::{add_norm, norm};
pub use pool::{first_token_weights, mean_weights, pool};
pub use pool2d::{global_avg_pool, max_pool2d};
pub use rope::{rope, rope_at};

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::elementwise as ew;
use crate::tensor::{DType, Tensor};

/// Identifies a tensor that needs a gradient, within one tape.
pub type VarId = usize;

/// A tensor in the forward pass and, when it needs a gradient, its id on the tape.
#[derive(Clone)]
pub struct Var {
    pub value: Tensor,
    id: Option<VarId>,
}

impl Var {
    /// A tensor that needs no gradient (inputs, frozen weights, anything under `no_grad`).
    pub fn constant(value: Tensor) -> Var {
        Var { value, id: None }
    }

    pub fn id(&self) -> Option<VarId> {
        self.id
    }

    pub fn requires_grad(&self) -> bool {
        self.id.is_some()
    }

    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    /// The same elements in another shape; gradients flow through unchanged (same id).
    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        Ok(Var { value: self.value.reshape(shape)?, id: self.id })
    }
}

/// A named weight of a module. Trainable exactly when it holds a gradient buffer. A clone
/// shares the value and gradient buffers (checkpointed blocks hold one).
#[derive(Clone)]
pub struct Param {
    /// The Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    pub value: Tensor,
    pub grad: Option<Tensor>,
}

impl Param {
    pub fn new(name: impl Into<String>, value: Tensor) -> Param {
        Param { name: name.into(), value, grad: None }
    }

    pub fn trainable(&self) -> bool {
        self.grad.is_some()
    }

    /// Freezes the weight (drops its gradient) or makes it trainable (a zeroed gradient buffer).
    pub fn set_trainable(&mut self, gpu: &Gpu, trainable: bool) -> Result<()> {
        match (trainable, &self.grad) {
            (true, None) => self.grad = Some(Tensor::zeros(gpu, self.value.shape())?),
            (false, Some(_)) => self.grad = None,
            _ => {}
        }
        Ok(())
    }

    pub fn numel(&self) -> usize {
        self.value.numel()
    }
}

/// Modules list their parameters through this, in a fixed order (the optimizer's and the
/// checkpoint's order).
pub trait Module {
    fn visit_params(&self, f: &mut dyn FnMut(&Param));
    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param));
    /// State that is not trained but changes while training and that a checkpoint must keep,
    /// by name (batch norm's running statistics under `--bn train`); none by default.
    fn visit_buffers(&self, _f: &mut dyn FnMut(&str, &Tensor)) {}
}

/// One recorded op: what it needs to run its backward kernels.
pub(crate) trait Backward {
    fn name(&self) -> &'static str;
    fn backward(&self, gpu: &Gpu, grads: &mut Grads) -> Result<()>;
}

struct TapeState {
    next_id: VarId,
    nodes: Vec<Box<dyn Backward>>,
    /// Persistent gradient buffers of the trainable parameters used in this pass.
    param_grads: HashMap<VarId, Tensor>,
}

/// Records a forward pass. A tape made with [`Tape::no_grad`] records nothing (evaluation,
/// generation, feature extraction).
pub struct Tape<'g> {
    pub gpu: &'g Gpu,
    recording: bool,
    training: bool,
    /// Whether any trainable parameter was asked for ([`Tape::param`]), recorded or not: a
    /// checkpointed block run without recording learns this way whether it needs a backward.
    saw_trainable: Cell<bool>,
    /// Seeds dropout: each call site in a pass takes the next stream, each step its own `step`.
    dropout_seed: u32,
    dropout_step: u32,
    dropout_calls: Cell<u32>,
    state: RefCell<TapeState>,
}

impl<'g> Tape<'g> {
    /// A training pass: records ops and applies dropout (seeded by `seed` and `step`).
    pub fn train(gpu: &'g Gpu, seed: u32, step: u32) -> Tape<'g> {
        Tape::make(gpu, true, true, seed, step)
    }

    /// Records ops for gradients with dropout off (gradients of the model as evaluated, e.g.
    /// for a Fisher estimate).
    pub fn grad_only(gpu: &'g Gpu) -> Tape<'g> {
        Tape::make(gpu, true, false, 0, 0)
    }

    /// An evaluation pass: nothing recorded, dropout off.
    pub fn no_grad(gpu: &'g Gpu) -> Tape<'g> {
        Tape::make(gpu, false, false, 0, 0)
    }

    fn make(gpu: &'g Gpu, recording: bool, training: bool, seed: u32, step: u32) -> Tape<'g> {
        let state = TapeState { next_id: 0, nodes: Vec::new(), param_grads: HashMap::new() };
        Tape {
            gpu,
            recording,
            training,
            saw_trainable: Cell::new(false),
            dropout_seed: seed,
            dropout_step: step,
            dropout_calls: Cell::new(0),
            state: RefCell::new(state),
        }
    }

    pub fn training(&self) -> bool {
        self.training
    }

    /// Whether this pass records ops (for backward).
    pub fn recording(&self) -> bool {
        self.recording
    }

    /// A tape for one run of a checkpointed block: same device, dropout settings and dropout
    /// stream position as this one (or as `calls` says), recording or not, never checkpointing
    /// again.
    pub(crate) fn sub(gpu: &'g Gpu, recording: bool, training: bool, seed: u32, step: u32, calls: u32) -> Tape<'g> {
        let t = Tape::make(gpu, recording, training, seed, step);
        t.dropout_calls.set(calls);
        t
    }

    /// (seed, step, calls so far) of this pass's dropout streams.
    pub(crate) fn dropout_state(&self) -> (u32, u32, u32) {
        (self.dropout_seed, self.dropout_step, self.dropout_calls.get())
    }

    pub(crate) fn set_dropout_calls(&self, calls: u32) {
        self.dropout_calls.set(calls);
    }

    /// Whether [`Tape::param`] has handed out a trainable parameter on this tape.
    pub(crate) fn saw_trainable(&self) -> bool {
        self.saw_trainable.get()
    }

    /// A new tensor with an id of its own and no producer (a checkpointed block's input during
    /// its rerun), so backward collects its gradient.
    pub(crate) fn leaf(&self, value: Tensor) -> Var {
        let mut st = self.state.borrow_mut();
        let id = st.next_id;
        st.next_id += 1;
        Var { value, id: Some(id) }
    }

    /// Records `node` whatever its inputs (when recording): for an op whose output needs a
    /// gradient for reasons its inputs do not show (a checkpointed block with trainable weights).
    pub(crate) fn record(&self, value: Tensor, node: impl FnOnce(VarId) -> Box<dyn Backward>) -> Var {
        if !self.recording {
            return Var::constant(value);
        }
        let mut st = self.state.borrow_mut();
        let id = st.next_id;
        st.next_id += 1;
        st.nodes.push(node(id));
        Var { value, id: Some(id) }
    }

    /// The parameter as a leaf of this pass: with an id when it is trainable and we record.
    pub fn param(&self, p: &Param) -> Var {
        if p.grad.is_some() {
            self.saw_trainable.set(true);
        }
        match (&p.grad, self.recording) {
            (Some(grad), true) => {
                let mut st = self.state.borrow_mut();
                let id = st.next_id;
                st.next_id += 1;
                st.param_grads.insert(id, grad.clone());
                Var { value: p.value.clone(), id: Some(id) }
            }
            _ => Var::constant(p.value.clone()),
        }
    }

    /// Wraps an op's output: a new id when any input needs a gradient (and then `node` is
    /// recorded, built from that id), a constant otherwise.
    pub(crate) fn output(&self, value: Tensor, inputs: &[&Var], node: impl FnOnce(VarId) -> Box<dyn Backward>) -> Var {
        if inputs.iter().all(|v| v.id.is_none()) {
            return Var::constant(value);
        }
        self.record(value, node)
    }

    /// The next dropout stream (seed, step) for one call site of this pass.
    pub(crate) fn next_dropout_stream(&self) -> (u32, u32) {
        let call = self.dropout_calls.get();
        self.dropout_calls.set(call + 1);
        // Mix the call index into the seed so call sites draw independent masks.
        (self.dropout_seed.wrapping_mul(0x9E37_79B9) ^ call.wrapping_mul(0x85EB_CA6B), self.dropout_step)
    }

    /// How many ops were recorded (tests check that frozen parts record none).
    pub fn recorded(&self) -> usize {
        self.state.borrow().nodes.len()
    }

    /// The names of the recorded ops, in forward order.
    pub fn recorded_names(&self) -> Vec<&'static str> {
        self.state.borrow().nodes.iter().map(|n| n.name()).collect()
    }

    /// Runs every recorded op's backward in reverse, starting from `loss` with d(objective)/d(loss)
    /// = `seed` (1 for one batch; 1/n to average n accumulated micro-batches). Gradients are added
    /// into the trainable parameters' buffers. The tape is consumed.
    pub fn backward(self, loss: &Loss, seed: f32) -> Result<()> {
        let Some(id) = loss.var.id else {
            return Err(Error::invalid(
                "backward",
                "the loss does not depend on any trainable parameter (is everything frozen?)",
            ));
        };
        let st = self.state.into_inner();
        let mut grads = Grads { gpu: self.gpu, slots: HashMap::new(), params: st.param_grads, seed: Some((id, seed)) };
        for node in st.nodes.iter().rev() {
            node.backward(self.gpu, &mut grads)?;
        }
        Ok(())
    }

    /// Runs the recorded ops' backward in reverse from `out` with gradient `dy` (a checkpointed
    /// block's rerun), adding into the parameters' buffers, and returns the gradient of `want`
    /// (None when nothing reached it). The tape is consumed.
    pub(crate) fn backward_from(self, out: &Var, dy: Tensor, want: Option<VarId>) -> Result<Option<Tensor>> {
        let Some(id) = out.id else { return Ok(None) };
        let st = self.state.into_inner();
        let mut slots = HashMap::new();
        slots.insert(id, dy);
        let mut grads = Grads { gpu: self.gpu, slots, params: st.param_grads, seed: None };
        for node in st.nodes.iter().rev() {
            node.backward(self.gpu, &mut grads)?;
        }
        Ok(want.and_then(|w| grads.slots.remove(&w)))
    }
}

/// Gradient buffers during a backward walk.
pub(crate) struct Grads<'g> {
    gpu: &'g Gpu,
    /// Gradients of intermediate tensors, by id; removed once their producer has used them.
    slots: HashMap<VarId, Tensor>,
    params: HashMap<VarId, Tensor>,
    seed: Option<(VarId, f32)>,
}

/// Where a backward kernel writes the gradient of one input, and whether it must add to what is
/// there (a parameter's buffer, or a tensor used more than once) or may overwrite it.
pub(crate) struct Target {
    pub tensor: Tensor,
    pub accumulate: bool,
}

impl Grads<'_> {
    /// The gradient of an op's output, if anything downstream produced one (otherwise the op's
    /// backward has nothing to do).
    pub fn take(&mut self, id: VarId) -> Option<Tensor> {
        self.slots.remove(&id)
    }

    /// The host seed when `id` is the loss being differentiated.
    pub fn take_seed(&mut self, id: VarId) -> Option<f32> {
        match self.seed {
            Some((sid, s)) if sid == id => {
                self.seed = None;
                Some(s)
            }
            _ => None,
        }
    }

    /// Where to write the gradient of `var` (None when it needs none). `shape` is used when a
    /// buffer has to be made.
    pub fn target(&mut self, var_id: Option<VarId>, shape: &[usize]) -> Result<Option<Target>> {
        let Some(id) = var_id else { return Ok(None) };
        if let Some(g) = self.params.get(&id) {
            return Ok(Some(Target { tensor: g.clone(), accumulate: true }));
        }
        if let Some(g) = self.slots.get(&id) {
            return Ok(Some(Target { tensor: g.clone(), accumulate: true }));
        }
        let t = Tensor::empty(self.gpu, shape, DType::F32)?;
        self.slots.insert(id, t.clone());
        Ok(Some(Target { tensor: t, accumulate: false }))
    }

    /// Like [`Grads::target`] but the buffer always holds valid data (zeroed when new), for
    /// kernels that only add (scatter) or write in several partial passes.
    pub fn target_zeroed(&mut self, var_id: Option<VarId>, shape: &[usize]) -> Result<Option<Tensor>> {
        Ok(match self.target(var_id, shape)? {
            Some(Target { tensor, accumulate: false }) => {
                self.gpu.clear(&tensor);
                Some(tensor)
            }
            Some(t) => Some(t.tensor),
            None => None,
        })
    }

    /// Adds `g` to the gradient of `var`. With `may_alias`, a var with no gradient yet takes
    /// `g` itself (no copy); the caller must not write `g` again.
    pub fn add(&mut self, var_id: Option<VarId>, g: &Tensor, may_alias: bool) -> Result<()> {
        let Some(id) = var_id else { return Ok(()) };
        if may_alias && !self.params.contains_key(&id) && !self.slots.contains_key(&id) {
            self.slots.insert(id, g.clone());
            return Ok(());
        }
        let t = self.target(Some(id), g.shape())?.expect("an id always has a target");
        if t.accumulate { ew::axpy(self.gpu, 1.0, g, &t.tensor) } else { self.gpu.copy(g, &t.tensor) }
    }
}
