//! candle custom ops over the CPU kernels: convolution (+bias, +ReLU), 2x2 max pooling and dense
//! layers (+bias, +ReLU), each with a backward pass that computes only the gradients the graph
//! needs (an argument that does not track gradients gets none: no weight gradients during PGD, no
//! image gradient during training).

use crate::kernels::{self, ConvGeometry, Real};
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
    bail,
};

fn slice<'a, T: Real>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
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
        let (n, c_in, h, wd) = dims4(x, "conv2d input")?;
        let (c_out, c_in2, kh, kw) = dims4(w, "conv2d weight")?;
        if c_in != c_in2 {
            bail!("conv2d: input has {c_in} channels, weight expects {c_in2}");
        }
        if h + 2 * self.padding < kh || wd + 2 * self.padding < kw {
            bail!("conv2d: kernel {kh}x{kw} larger than padded input {h}x{wd}");
        }
        Ok(ConvGeometry {
            n,
            c_in,
            h,
            w: wd,
            c_out,
            kh,
            kw,
            stride: self.stride,
            padding: self.padding,
        })
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
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(&grad, &ConvWeightGrad(g))?)
        } else {
            None
        };
        let db = match b {
            Some(b) if b.track_op() => Some(grad.sum(3)?.sum(2)?.sum(0)?),
            _ => None,
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

/// Weight gradient of a convolution: applied as `x.apply_op2_no_bwd(dy)`.
struct ConvWeightGrad(ConvGeometry);

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
        let g = self.0;
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(
                kernels::conv2d_weight_grad(&g, slice(s1, l1, "x")?, slice(s2, l2, "dy")?, false).0,
            ),
            DType::F64 => f64::to_cpu_storage_owned(
                kernels::conv2d_weight_grad(&g, slice(s1, l1, "x")?, slice(s2, l2, "dy")?, false).0,
            ),
            d => bail!("conv2d: unsupported dtype {d:?}"),
        };
        Ok((out, Shape::from((g.c_out, g.c_in, g.kh, g.kw))))
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
        let dx = if x.track_op() {
            Some(grad.matmul(w)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(grad.t()?.matmul(x)?)
        } else {
            None
        };
        let db = match b {
            Some(b) if b.track_op() => Some(grad.sum(0)?),
            _ => None,
        };
        Ok((dx, dw, db))
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

static CANDLE_DEFAULT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Routes convolution, pooling and dense layers through candle's own ops instead of these kernels,
/// so benchmarks can compare the two on the same models. (candle's `max_pool2d` backward is wrong
/// in 0.11.1: use this for timing only.)
pub fn use_candle_default_ops(on: bool) {
    CANDLE_DEFAULT.store(on, std::sync::atomic::Ordering::Relaxed);
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
