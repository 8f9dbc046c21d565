//! Batch normalisation fused with an optional ReLU: training mode (batch statistics, one op
//! forward and one backward instead of a dozen candle ops) and eval mode (a per-channel affine
//! map).

use super::activation::pre_activation_grad;
use super::{Map, dims4, unpack};
use crate::kernels::{self, BatchNormState, GradLayout, Real, Want};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use std::sync::{Arc, Mutex};

/// Batch normalisation in training mode over the channels of an NCHW tensor (batch statistics,
/// biased variance), optionally followed by ReLU, fused: one op forward and one backward instead
/// of a dozen candle ops. The forward keeps its statistics ([`BatchNormOp::state`]) for the
/// backward and the layer's running statistics.
#[derive(Debug)]
pub struct BatchNormOp {
    eps: f64,
    relu: bool,
    state: Arc<Mutex<Option<BatchNormState>>>,
}

impl BatchNormOp {
    /// The op for one application: `eps` is added to the variance; ReLU follows if `relu`.
    pub fn new(eps: f64, relu: bool) -> Self {
        BatchNormOp {
            eps,
            relu,
            state: Arc::new(Mutex::new(None)),
        }
    }
    /// Where the forward leaves its statistics.
    pub fn state(&self) -> Arc<Mutex<Option<BatchNormState>>> {
        Arc::clone(&self.state)
    }
}

/// An NCHW tensor's sizes as the batch-norm kernels take them: n, c and h * w.
#[derive(Debug, Clone, Copy)]
struct Channels {
    n: usize,
    c: usize,
    hw: usize,
}

impl Channels {
    fn of(l: &Layout, what: &str) -> Result<Self> {
        let (n, c, h, w) = dims4(l, what)?;
        Ok(Channels { n, c, hw: h * w })
    }
}

/// `v`, checked to hold one value per channel.
fn per_channel<'a, T>(v: &'a [T], c: usize, what: &str) -> Result<&'a [T]> {
    if v.len() != c {
        bail!("{what}: {} values for {c} channels", v.len());
    }
    Ok(v)
}

/// The training-mode forward kernel call; leaves the batch statistics in `op`.
struct BatchNormForward<'a> {
    op: &'a BatchNormOp,
    dims: Channels,
}

impl Map<3> for BatchNormForward<'_> {
    const NAME: &'static str = "batch norm";
    const INPUTS: [&'static str; 3] = ["batch norm input", "gamma", "beta"];
    fn f<T: Real>(&self, [x, gamma, beta]: [&[T]; 3]) -> Result<Vec<T>> {
        let Channels { n, c, hw } = self.dims;
        let (y, state) = kernels::batch_norm_forward(
            x,
            per_channel(gamma, c, "gamma")?,
            per_channel(beta, c, "beta")?,
            n,
            c,
            hw,
            self.op.eps,
            self.op.relu,
        );
        *self.op.state.lock().expect("batch norm state") = Some(state);
        Ok(y)
    }
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "rmqm-batch-norm"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = Channels::of(l1, "batch norm")?;
        let out = BatchNormForward { op: self, dims }.map([(s1, l1), (s2, l2), (s3, l3)])?;
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want = Want {
            input: x.track_op(),
            weight: gamma.track_op(),
            bias: beta.track_op(),
        };
        if !(want.input || want.weight || want.bias) {
            return Ok((None, None, None));
        }
        let state = match self.state.lock().expect("batch norm state").clone() {
            Some(s) => s,
            None => bail!("batch norm: backward before forward"),
        };
        let op = BatchNormGrad {
            state,
            dims: Channels::of(x.layout(), "batch norm grad")?,
            relu: self.relu,
            want,
        };
        let flat = x.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &op)?;
        let channels = Shape::from(op.dims.c);
        let [dx, dgamma, dbeta] = unpack(&flat, &op.layout(), [x.shape(), &channels, &channels])?;
        Ok((dx, dgamma, dbeta))
    }
}

/// Gradients of [`BatchNormOp`] as one flat tensor [input | gamma | beta] (the parts asked for,
/// laid out by [`kernels::batch_norm_grad_layout`]): applied as `x.apply_op2_no_bwd(grad)`.
struct BatchNormGrad {
    state: BatchNormState,
    dims: Channels,
    relu: bool,
    want: Want,
}

impl BatchNormGrad {
    fn layout(&self) -> GradLayout {
        let Channels { n, c, hw } = self.dims;
        kernels::batch_norm_grad_layout(n, c, hw, self.want)
    }
}

impl Map<2> for BatchNormGrad {
    const NAME: &'static str = "batch norm";
    const INPUTS: [&'static str; 2] = ["batch norm input", "batch norm gradient"];
    fn f<T: Real>(&self, [x, g]: [&[T]; 2]) -> Result<Vec<T>> {
        let Channels { n, c, hw } = self.dims;
        Ok(kernels::batch_norm_backward(
            x,
            g,
            &self.state,
            n,
            c,
            hw,
            self.relu,
            self.want,
        ))
    }
}

impl CustomOp2 for BatchNormGrad {
    fn name(&self) -> &'static str {
        "rmqm-batch-norm-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Channels { n, c, hw } = Channels::of(l1, "batch norm grad")?;
        let d = self.dims;
        if (n, c, hw) != (d.n, d.c, d.hw) || l2.shape() != l1.shape() {
            bail!(
                "batch norm grad: input {:?} and gradient {:?} for n {}, c {}, hw {}",
                l1.dims(),
                l2.dims(),
                d.n,
                d.c,
                d.hw
            );
        }
        let out = self.map([(s1, l1), (s2, l2)])?;
        Ok((out, Shape::from(self.layout().total())))
    }
}

/// `y = x * scale[c] + shift[c]` per channel of an NCHW tensor (batch norm in eval mode), then
/// ReLU if `.0`.
#[derive(Debug, Clone, Copy)]
pub struct ChannelAffineOp(pub bool);

/// The kernel call of [`ChannelAffineOp`].
struct ChannelAffine {
    dims: Channels,
    relu: bool,
}

impl Map<3> for ChannelAffine {
    const NAME: &'static str = "channel affine";
    const INPUTS: [&'static str; 3] = ["x", "scale", "shift"];
    fn f<T: Real>(&self, [x, scale, shift]: [&[T]; 3]) -> Result<Vec<T>> {
        let Channels { c, hw, .. } = self.dims;
        Ok(kernels::channel_affine(
            x,
            per_channel(scale, c, "scale")?,
            per_channel(shift, c, "shift")?,
            c,
            hw,
            self.relu,
        ))
    }
}

impl CustomOp3 for ChannelAffineOp {
    fn name(&self) -> &'static str {
        "rmqm-channel-affine"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = Channels::of(l1, "channel affine")?;
        let op = ChannelAffine { dims, relu: self.0 };
        Ok((op.map([(s1, l1), (s2, l2), (s3, l3)])?, l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = x.dim(1)?;
        let grad = pre_activation_grad(grad, res, self.0)?;
        let dx = if x.track_op() {
            let zero = scale.zeros_like()?;
            Some(grad.apply_op3_no_bwd(&scale.contiguous()?, &zero, &ChannelAffineOp(false))?)
        } else {
            None
        };
        let sum_c = |t: &Tensor| -> Result<Tensor> {
            t.transpose(0, 1)?.contiguous()?.reshape((c, ()))?.sum(1)
        };
        let dscale = if scale.track_op() {
            Some(sum_c(&(&grad * x)?)?)
        } else {
            None
        };
        let dshift = if shift.track_op() {
            Some(sum_c(&grad)?)
        } else {
            None
        };
        Ok((dx, dscale, dshift))
    }
}

/// Batch norm with batch statistics (training mode), then ReLU if `relu`, fused; returns the
/// output and the batch statistics it used.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, BatchNormState)> {
    let op = BatchNormOp::new(eps, relu);
    let state = op.state();
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let state = state.lock().expect("batch norm state").clone();
    match state {
        Some(s) => Ok((y, s)),
        None => bail!("batch norm: the forward left no statistics"),
    }
}

/// `x * scale[c] + shift[c]` per channel (batch norm in eval mode), then ReLU if `relu`, fused.
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor, relu: bool) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &scale.contiguous()?,
        &shift.contiguous()?,
        ChannelAffineOp(relu),
    )
}
