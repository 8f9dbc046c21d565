//! candle custom ops over the CPU kernels: convolution (+bias, +ReLU), 2x2 max pooling and dense
//! layers (+bias, +ReLU), each with a backward pass that computes only the gradients the graph
//! needs (an argument that does not track gradients gets none: no weight gradients during PGD, no
//! image gradient during training).

use crate::kernels::{self, BatchNormState, ConvGeometry, Real};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
    bail,
};
use std::sync::{Arc, Mutex};

/// The contiguous elements of a custom op's input, or an error naming `what`.
pub(crate) fn slice<'a, T: Real>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: input must be contiguous"),
    }
}

fn dims4(l: &Layout, what: &str) -> Result<(usize, usize, usize, usize)> {
    match l.dims() {
        &[a, b, c, d] => Ok((a, b, c, d)),
        d => bail!("{what}: expected a 4-d tensor, got shape {d:?}"),
    }
}

/// The geometry of convolving input `x` (NCHW) with weight `w` (OIHW), checked.
pub(crate) fn conv_geometry(
    x: &Layout,
    w: &Layout,
    stride: usize,
    padding: usize,
) -> Result<ConvGeometry> {
    let (n, c_in, h, wd) = dims4(x, "conv2d input")?;
    let (c_out, c_in2, kh, kw) = dims4(w, "conv2d weight")?;
    if c_in != c_in2 {
        bail!("conv2d: input has {c_in} channels, weight expects {c_in2}");
    }
    if h + 2 * padding < kh || wd + 2 * padding < kw {
        bail!("conv2d: kernel {kh}x{kw} larger than padded input {h}x{wd}");
    }
    if stride == 0 {
        bail!("conv2d: stride must be positive");
    }
    Ok(ConvGeometry {
        n,
        c_in,
        h,
        w: wd,
        c_out,
        kh,
        kw,
        stride,
        padding,
    })
}

/// A 2-D convolution (NCHW, OIHW weight) with optional fused bias and ReLU.
#[derive(Debug, Clone, Copy)]
pub struct Conv2dOp {
    /// Stride on both axes.
    pub stride: usize,
    /// Zero padding on both axes.
    pub padding: usize,
    /// Apply ReLU to the output.
    pub relu: bool,
}

impl Conv2dOp {
    fn geometry(&self, x: &Layout, w: &Layout) -> Result<ConvGeometry> {
        conv_geometry(x, w, self.stride, self.padding)
    }

    fn forward(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(l1, l2)?;
        let shape = Shape::from((g.n, g.c_out, g.ho(), g.wo()));
        fn run<T: Real>(
            op: &Conv2dOp,
            g: &ConvGeometry,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            bias: Option<(&CpuStorage, &Layout)>,
        ) -> Result<CpuStorage> {
            let x = slice::<T>(s1, l1, "conv2d input")?;
            let w = slice::<T>(s2, l2, "conv2d weight")?;
            let b = match bias {
                Some((s, l)) => Some(slice::<T>(s, l, "conv2d bias")?),
                None => None,
            };
            Ok(T::to_cpu_storage_owned(kernels::conv2d_forward(
                g, x, w, b, op.relu,
            )))
        }
        let out = match s1.dtype() {
            DType::F32 => run::<f32>(self, &g, s1, l1, s2, l2, bias)?,
            DType::F64 => run::<f64>(self, &g, s1, l1, s2, l2, bias)?,
            d => bail!("conv2d: unsupported dtype {d:?}"),
        };
        Ok((out, shape))
    }

    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = pre_activation_grad(grad, res, self.relu)?;
        let g = self.geometry(x.layout(), w.layout())?;
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(w, &ConvInputGrad(g))?)
        } else {
            None
        };
        let want_bias = b.is_some_and(|b| b.track_op());
        if !w.track_op() && !want_bias {
            return Ok((dx, None, None));
        }
        // One pass over the images gives both: weight gradient then bias gradient, flat.
        let both = x.apply_op2_no_bwd(&grad, &ConvWeightGrad(g, want_bias))?;
        let weights = g.c_out * g.ckk();
        let dw = if w.track_op() {
            Some(both.narrow(0, 0, weights)?.reshape(w.shape())?)
        } else {
            None
        };
        let db = if want_bias {
            Some(both.narrow(0, weights, g.c_out)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// The gradient before a fused ReLU: `grad * (res > 0)` (contiguous).
fn pre_activation_grad(grad: &Tensor, res: &Tensor, relu: bool) -> Result<Tensor> {
    let grad = grad.contiguous()?;
    if relu {
        grad.apply_op2_no_bwd(&res.contiguous()?, &ReluMask)
    } else {
        Ok(grad)
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "rmqm-conv2d"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(s1, l1, s2, l2, None)
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, None, res, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "rmqm-conv2d-bias"
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
        self.forward(s1, l1, s2, l2, Some((s3, l3)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.backward(x, w, Some(b), res, grad)
    }
}

/// Input gradient of a convolution: applied as `dy.apply_op2_no_bwd(weight)`.
struct ConvInputGrad(ConvGeometry);

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "rmqm-conv2d-input-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(kernels::conv2d_input_grad(
                &g,
                slice(s1, l1, "dy")?,
                slice(s2, l2, "w")?,
            )),
            DType::F64 => f64::to_cpu_storage_owned(kernels::conv2d_input_grad(
                &g,
                slice(s1, l1, "dy")?,
                slice(s2, l2, "w")?,
            )),
            d => bail!("conv2d: unsupported dtype {d:?}"),
        };
        Ok((out, Shape::from((g.n, g.c_in, g.h, g.w))))
    }
}

/// Weight gradient of a convolution, followed by the bias gradient when `.1`, as one flat tensor:
/// applied as `x.apply_op2_no_bwd(dy)`.
struct ConvWeightGrad(ConvGeometry, bool);

impl CustomOp2 for ConvWeightGrad {
    fn name(&self) -> &'static str {
        "rmqm-conv2d-weight-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: Real>(
            g: &ConvGeometry,
            bias: bool,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> Result<CpuStorage> {
            let (mut dw, db) =
                kernels::conv2d_weight_grad(g, slice(s1, l1, "x")?, slice(s2, l2, "dy")?, bias);
            dw.extend(db.unwrap_or_default());
            Ok(T::to_cpu_storage_owned(dw))
        }
        let (g, bias) = (self.0, self.1);
        let out = match s1.dtype() {
            DType::F32 => run::<f32>(&g, bias, s1, l1, s2, l2)?,
            DType::F64 => run::<f64>(&g, bias, s1, l1, s2, l2)?,
            d => bail!("conv2d: unsupported dtype {d:?}"),
        };
        let len = g.c_out * g.ckk() + if bias { g.c_out } else { 0 };
        Ok((out, Shape::from(len)))
    }
}

/// `grad * (res > 0)`: applied as `grad.apply_op2_no_bwd(res)`.
struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "rmqm-relu-mask"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(kernels::relu_mask(
                slice(s1, l1, "grad")?,
                slice(s2, l2, "res")?,
            )),
            DType::F64 => f64::to_cpu_storage_owned(kernels::relu_mask(
                slice(s1, l1, "grad")?,
                slice(s2, l2, "res")?,
            )),
            d => bail!("relu mask: unsupported dtype {d:?}"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// 2x2 max pooling with stride 2 on NCHW tensors; the gradient goes to each window's first maximum.
/// (candle 0.11.1's `max_pool2d` backward scales gradients by 1/(k*k); this op does not.)
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2x2;

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "rmqm-max-pool2x2"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4(l, "max pool")?;
        let out = match s.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(kernels::max_pool2x2_forward(
                slice(s, l, "x")?,
                n * c,
                h,
                w,
            )),
            DType::F64 => f64::to_cpu_storage_owned(kernels::max_pool2x2_forward(
                slice(s, l, "x")?,
                n * c,
                h,
                w,
            )),
            d => bail!("max pool: unsupported dtype {d:?}"),
        };
        Ok((out, Shape::from((n, c, h / 2, w / 2))))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolGrad)?,
        ))
    }
}

/// Gradient of [`MaxPool2x2`]: applied as `x.apply_op2_no_bwd(dy)`.
struct MaxPoolGrad;

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "rmqm-max-pool2x2-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4(l1, "max pool grad")?;
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(kernels::max_pool2x2_backward(
                slice(s1, l1, "x")?,
                slice(s2, l2, "dy")?,
                n * c,
                h,
                w,
            )),
            DType::F64 => f64::to_cpu_storage_owned(kernels::max_pool2x2_backward(
                slice(s1, l1, "x")?,
                slice(s2, l2, "dy")?,
                n * c,
                h,
                w,
            )),
            d => bail!("max pool: unsupported dtype {d:?}"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// A dense layer `y = x w^T + b` on (n, in) inputs with (out, in) weights, optional fused ReLU.
#[derive(Debug, Clone, Copy)]
pub struct LinearOp {
    /// Apply ReLU to the output.
    pub relu: bool,
}

impl LinearOp {
    fn forward(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, d_in) = l1.shape().dims2()?;
        let (d_out, d_in2) = l2.shape().dims2()?;
        if d_in != d_in2 {
            bail!("linear: input has {d_in} features, weight expects {d_in2}");
        }
        fn run<T: Real>(
            relu: bool,
            n: usize,
            d_in: usize,
            d_out: usize,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
            bias: Option<(&CpuStorage, &Layout)>,
        ) -> Result<CpuStorage> {
            let b = match bias {
                Some((s, l)) => Some(slice::<T>(s, l, "linear bias")?),
                None => None,
            };
            let y = kernels::linear_forward(
                slice::<T>(s1, l1, "linear input")?,
                slice::<T>(s2, l2, "linear weight")?,
                b,
                n,
                d_in,
                d_out,
                relu,
            );
            Ok(T::to_cpu_storage_owned(y))
        }
        let out = match s1.dtype() {
            DType::F32 => run::<f32>(self.relu, n, d_in, d_out, s1, l1, s2, l2, bias)?,
            DType::F64 => run::<f64>(self.relu, n, d_in, d_out, s1, l1, s2, l2, bias)?,
            d => bail!("linear: unsupported dtype {d:?}"),
        };
        Ok((out, Shape::from((n, d_out))))
    }

    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = pre_activation_grad(grad, res, self.relu)?;
        let want = (x.track_op(), w.track_op(), b.is_some_and(|b| b.track_op()));
        if !(want.0 || want.1 || want.2) {
            return Ok((None, None, None));
        }
        let flat = x
            .contiguous()?
            .apply_op3_no_bwd(&w.contiguous()?, &grad, &LinearGrad(want))?;
        let (inputs, weights) = (
            if want.0 { x.elem_count() } else { 0 },
            if want.1 { w.elem_count() } else { 0 },
        );
        let dx = want
            .0
            .then(|| flat.narrow(0, 0, inputs)?.reshape(x.shape()))
            .transpose()?;
        let dw = want
            .1
            .then(|| flat.narrow(0, inputs, weights)?.reshape(w.shape()))
            .transpose()?;
        let db = want
            .2
            .then(|| flat.narrow(0, inputs + weights, w.dim(0)?))
            .transpose()?;
        Ok((dx, dw, db))
    }
}

/// Gradients of a dense layer as one flat tensor [input | weight | bias] (the parts in `.0`):
/// applied as `x.apply_op3_no_bwd(w, dy)` with dy the pre-activation gradient.
struct LinearGrad((bool, bool, bool));

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "rmqm-linear-grad"
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
        let (n, d_in) = match l1.dims() {
            &[n, d] => (n, d),
            d => bail!("linear grad: expected a 2-d input, got {d:?}"),
        };
        let d_out = l2.dims()[0];
        if l3.dims() != [n, d_out] {
            bail!(
                "linear grad: gradient shape {:?}, expected [{n}, {d_out}]",
                l3.dims()
            );
        }
        fn run<T: Real>(
            want: (bool, bool, bool),
            s: [(&CpuStorage, &Layout); 3],
            (n, d_in, d_out): (usize, usize, usize),
        ) -> Result<CpuStorage> {
            let flat = kernels::linear_backward(
                slice::<T>(s[0].0, s[0].1, "x")?,
                slice::<T>(s[1].0, s[1].1, "w")?,
                slice::<T>(s[2].0, s[2].1, "dy")?,
                n,
                d_in,
                d_out,
                want,
            );
            Ok(T::to_cpu_storage_owned(flat))
        }
        let s = [(s1, l1), (s2, l2), (s3, l3)];
        let out = match s1.dtype() {
            DType::F32 => run::<f32>(self.0, s, (n, d_in, d_out))?,
            DType::F64 => run::<f64>(self.0, s, (n, d_in, d_out))?,
            d => bail!("linear grad: unsupported dtype {d:?}"),
        };
        let want = self.0;
        let len = if want.0 { n * d_in } else { 0 }
            + if want.1 { d_out * d_in } else { 0 }
            + if want.2 { d_out } else { 0 };
        Ok((out, Shape::from(len)))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "rmqm-linear"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(s1, l1, s2, l2, None)
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, None, res, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "rmqm-linear-bias"
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
        self.forward(s1, l1, s2, l2, Some((s3, l3)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.backward(x, w, Some(b), res, grad)
    }
}

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

/// `y = x * scale[c] + shift[c]` per channel of an NCHW tensor (batch norm in eval mode), then
/// ReLU if `.0`.
#[derive(Debug, Clone, Copy)]
pub struct ChannelAffineOp(pub bool);

fn channel_vec<'a, T: Real>(
    s: &'a CpuStorage,
    l: &Layout,
    c: usize,
    what: &str,
) -> Result<&'a [T]> {
    let v = slice::<T>(s, l, what)?;
    if v.len() != c {
        bail!("{what}: {} values for {c} channels", v.len());
    }
    Ok(v)
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
        let (n, c, h, w) = dims4(l1, "batch norm")?;
        fn run<T: Real>(
            op: &BatchNormOp,
            s: [(&CpuStorage, &Layout); 3],
            (n, c, hw): (usize, usize, usize),
        ) -> Result<(CpuStorage, BatchNormState)> {
            let (y, state) = kernels::batch_norm_forward(
                slice::<T>(s[0].0, s[0].1, "batch norm input")?,
                channel_vec(s[1].0, s[1].1, c, "gamma")?,
                channel_vec(s[2].0, s[2].1, c, "beta")?,
                n,
                c,
                hw,
                op.eps,
                op.relu,
            );
            Ok((T::to_cpu_storage_owned(y), state))
        }
        let s = [(s1, l1), (s2, l2), (s3, l3)];
        let (out, state) = match s1.dtype() {
            DType::F32 => run::<f32>(self, s, (n, c, h * w))?,
            DType::F64 => run::<f64>(self, s, (n, c, h * w))?,
            d => bail!("batch norm: unsupported dtype {d:?}"),
        };
        *self.state.lock().expect("batch norm state") = Some(state);
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
        let c = x.dim(1)?;
        let want = (x.track_op(), gamma.track_op(), beta.track_op());
        if !(want.0 || want.1 || want.2) {
            return Ok((None, None, None));
        }
        let state = match self.state.lock().expect("batch norm state").clone() {
            Some(s) => s,
            None => bail!("batch norm: backward before forward"),
        };
        let op = BatchNormGrad {
            state,
            relu: self.relu,
            want,
        };
        let flat = x.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &op)?;
        let inputs = if want.0 { x.elem_count() } else { 0 };
        let dx = want
            .0
            .then(|| flat.narrow(0, 0, inputs)?.reshape(x.shape()))
            .transpose()?;
        let dgamma = want.1.then(|| flat.narrow(0, inputs, c)).transpose()?;
        let at = inputs + if want.1 { c } else { 0 };
        let dbeta = want.2.then(|| flat.narrow(0, at, c)).transpose()?;
        Ok((dx, dgamma, dbeta))
    }
}

/// Gradients of [`BatchNormOp`] as one flat tensor [input | gamma | beta] (the parts asked for):
/// applied as `x.apply_op2_no_bwd(grad)`.
struct BatchNormGrad {
    state: BatchNormState,
    relu: bool,
    want: (bool, bool, bool),
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
        let (n, c, h, w) = dims4(l1, "batch norm grad")?;
        fn run<T: Real>(
            op: &BatchNormGrad,
            s: [(&CpuStorage, &Layout); 2],
            (n, c, hw): (usize, usize, usize),
        ) -> Result<CpuStorage> {
            Ok(T::to_cpu_storage_owned(kernels::batch_norm_backward(
                slice::<T>(s[0].0, s[0].1, "batch norm input")?,
                slice::<T>(s[1].0, s[1].1, "batch norm gradient")?,
                &op.state,
                n,
                c,
                hw,
                op.relu,
                op.want,
            )))
        }
        let s = [(s1, l1), (s2, l2)];
        let out = match s1.dtype() {
            DType::F32 => run::<f32>(self, s, (n, c, h * w))?,
            DType::F64 => run::<f64>(self, s, (n, c, h * w))?,
            d => bail!("batch norm: unsupported dtype {d:?}"),
        };
        let len = if self.want.0 { n * c * h * w } else { 0 }
            + if self.want.1 { c } else { 0 }
            + if self.want.2 { c } else { 0 };
        Ok((out, Shape::from(len)))
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
        let (_, c, h, w) = dims4(l1, "channel affine")?;
        fn run<T: Real>(
            relu: bool,
            s: [(&CpuStorage, &Layout); 3],
            (c, hw): (usize, usize),
        ) -> Result<CpuStorage> {
            Ok(T::to_cpu_storage_owned(kernels::channel_affine(
                slice::<T>(s[0].0, s[0].1, "x")?,
                channel_vec(s[1].0, s[1].1, c, "scale")?,
                channel_vec(s[2].0, s[2].1, c, "shift")?,
                c,
                hw,
                relu,
            )))
        }
        let s = [(s1, l1), (s2, l2), (s3, l3)];
        let out = match s1.dtype() {
            DType::F32 => run::<f32>(self.0, s, (c, h * w))?,
            DType::F64 => run::<f64>(self.0, s, (c, h * w))?,
            d => bail!("channel affine: unsupported dtype {d:?}"),
        };
        Ok((out, l1.shape().clone()))
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

/// `relu(a + b)` for tensors of one shape (ResNet's residual join), with its gradient.
#[derive(Debug, Clone, Copy)]
pub struct AddReluOp;

impl CustomOp2 for AddReluOp {
    fn name(&self) -> &'static str {
        "rmqm-add-relu"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!(
                "add-relu: shapes {:?} and {:?} differ",
                l1.dims(),
                l2.dims()
            );
        }
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(kernels::add_relu(
                slice(s1, l1, "a")?,
                slice(s2, l2, "b")?,
            )),
            DType::F64 => f64::to_cpu_storage_owned(kernels::add_relu(
                slice(s1, l1, "a")?,
                slice(s2, l2, "b")?,
            )),
            d => bail!("add-relu: unsupported dtype {d:?}"),
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !a.track_op() && !b.track_op() {
            return Ok((None, None));
        }
        let g = pre_activation_grad(grad, res, true)?;
        Ok((a.track_op().then(|| g.clone()), b.track_op().then_some(g)))
    }
}

/// `relu(a + b)` as one op (candle's ops when they are switched on).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if candle_default() {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddReluOp)
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

static CANDLE_DEFAULT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Routes convolution, pooling and dense layers through candle's own ops instead of these kernels,
/// so benchmarks can compare the two on the same models. (candle's `max_pool2d` backward is wrong
/// in 0.11.1: use this for timing only.)
pub fn use_candle_default_ops(on: bool) {
    CANDLE_DEFAULT.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// True while [`use_candle_default_ops`] is on.
pub fn candle_default_ops() -> bool {
    candle_default()
}

fn candle_default() -> bool {
    CANDLE_DEFAULT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Convolution of `x` with `w` (and `b`), fused ReLU if `relu`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
    relu: bool,
) -> Result<Tensor> {
    if candle_default() {
        let mut y = x.conv2d(w, padding, stride, 1, 1)?;
        if let Some(b) = b {
            y = y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?)?;
        }
        return if relu { y.relu() } else { Ok(y) };
    }
    let op = Conv2dOp {
        stride,
        padding,
        relu,
    };
    let x = x.contiguous()?;
    match b {
        Some(b) => x.apply_op3(w, b, op),
        None => x.apply_op2(w, op),
    }
}

/// `max_pool2x2(relu(conv2d(x, w) + b))` as one op (see [`crate::conv_pool`]); with candle's
/// default ops when they are switched on.
pub fn conv2d_relu_pool(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if candle_default() {
        return max_pool2x2(&conv2d(x, w, Some(b), stride, padding, true)?);
    }
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        crate::conv_pool::ConvReluPoolOp::new(stride, padding),
    )
}

/// 2x2 max pooling, stride 2.
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    if candle_default() {
        return x.max_pool2d(2);
    }
    x.contiguous()?.apply_op1(MaxPool2x2)
}

/// Dense layer `x w^T (+ b)`, fused ReLU if `relu`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    if candle_default() {
        let mut y = x.matmul(&w.t()?)?;
        if let Some(b) = b {
            y = y.broadcast_add(b)?;
        }
        return if relu { y.relu() } else { Ok(y) };
    }
    let op = LinearOp { relu };
    let x = x.contiguous()?;
    match b {
        Some(b) => x.apply_op3(w, b, op),
        None => x.apply_op2(w, op),
    }
}
