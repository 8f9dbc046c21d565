//! 2-D convolution with optional fused bias and ReLU, and its two gradient ops.

use super::activation::pre_activation_grad;
use super::{Map, candle_default_ops, dims4, unpack};
use crate::kernels::{self, ConvGeometry, Real, Want};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

/// The geometry of convolving input `x` (NCHW) with weight `w` (OIHW), checked.
pub(super) fn conv_geometry(
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

/// The forward kernel call: inputs x, weight and, for `Map<3>`, the bias.
struct ConvForward {
    g: ConvGeometry,
    relu: bool,
}

impl Map<2> for ConvForward {
    const NAME: &'static str = "conv2d";
    const INPUTS: [&'static str; 2] = ["conv2d input", "conv2d weight"];
    fn f<T: Real>(&self, [x, w]: [&[T]; 2]) -> Result<Vec<T>> {
        Ok(kernels::conv2d_forward(&self.g, x, w, None, self.relu))
    }
}

impl Map<3> for ConvForward {
    const NAME: &'static str = "conv2d";
    const INPUTS: [&'static str; 3] = ["conv2d input", "conv2d weight", "conv2d bias"];
    fn f<T: Real>(&self, [x, w, b]: [&[T]; 3]) -> Result<Vec<T>> {
        if b.len() != self.g.c_out {
            bail!(
                "conv2d: bias has {} values for {} channels",
                b.len(),
                self.g.c_out
            );
        }
        Ok(kernels::conv2d_forward(&self.g, x, w, Some(b), self.relu))
    }
}

impl Conv2dOp {
    fn geometry(&self, x: &Layout, w: &Layout) -> Result<ConvGeometry> {
        conv_geometry(x, w, self.stride, self.padding)
    }

    fn forward<const N: usize>(
        &self,
        inputs: [(&CpuStorage, &Layout); N],
    ) -> Result<(CpuStorage, Shape)>
    where
        ConvForward: Map<N>,
    {
        let g = self.geometry(inputs[0].1, inputs[1].1)?;
        let out = ConvForward { g, relu: self.relu }.map(inputs)?;
        Ok((out, Shape::from((g.n, g.c_out, g.ho(), g.wo()))))
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
        let op = ConvWeightGrad { g, want_bias };
        let flat = x.apply_op2_no_bwd(&grad, &op)?;
        let bias_shape = Shape::from(g.c_out);
        let [_, dw, db] = unpack(&flat, &op.layout(), [x.shape(), w.shape(), &bias_shape])?;
        Ok((dx, dw.filter(|_| w.track_op()), db))
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
        self.forward([(s1, l1), (s2, l2)])
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
        self.forward([(s1, l1), (s2, l2), (s3, l3)])
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

impl Map<2> for ConvInputGrad {
    const NAME: &'static str = "conv2d";
    const INPUTS: [&'static str; 2] = ["dy", "w"];
    fn f<T: Real>(&self, [dy, w]: [&[T]; 2]) -> Result<Vec<T>> {
        Ok(kernels::conv2d_input_grad(&self.0, dy, w))
    }
}

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
        let out = self.map([(s1, l1), (s2, l2)])?;
        Ok((out, Shape::from((g.n, g.c_in, g.h, g.w))))
    }
}

/// Weight gradient of a convolution, followed by the bias gradient when `want_bias`, as one flat
/// tensor laid out by [`ConvWeightGrad::layout`]: applied as `x.apply_op2_no_bwd(dy)`.
struct ConvWeightGrad {
    g: ConvGeometry,
    want_bias: bool,
}

impl ConvWeightGrad {
    fn layout(&self) -> kernels::GradLayout {
        self.g.grad_layout(Want {
            input: false,
            weight: true,
            bias: self.want_bias,
        })
    }
}

impl Map<2> for ConvWeightGrad {
    const NAME: &'static str = "conv2d";
    const INPUTS: [&'static str; 2] = ["x", "dy"];
    fn f<T: Real>(&self, [x, dy]: [&[T]; 2]) -> Result<Vec<T>> {
        let (mut dw, db) = kernels::conv2d_weight_grad(&self.g, x, dy, self.want_bias);
        dw.extend(db.unwrap_or_default());
        Ok(dw)
    }
}

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
        let out = self.map([(s1, l1), (s2, l2)])?;
        Ok((out, Shape::from(self.layout().total())))
    }
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
    if candle_default_ops() {
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
