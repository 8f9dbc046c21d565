//! Convolution + bias + ReLU + 2x2 max pooling as one op (LeNet's building block; the kernels are
//! in `kernels::conv_pool`), keeping the forward's gradient codes for the backward.

use super::conv::conv_geometry;
use super::pool::max_pool2x2;
use super::{Map, candle_default_ops, conv::conv2d, unpack};
use crate::kernels::{self, ConvGeometry, GradLayout, Real};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use std::sync::{Arc, Mutex};

/// Convolution (with bias) + ReLU + 2x2 max pooling as one candle op: applied as
/// `x.apply_op3(weight, bias, op)`.
#[derive(Debug)]
pub struct ConvReluPoolOp {
    /// Stride on both axes.
    pub stride: usize,
    /// Zero padding on both axes.
    pub padding: usize,
    codes: Mutex<Option<Arc<Vec<u8>>>>,
}

impl ConvReluPoolOp {
    /// The op for one application (it keeps that application's gradient codes).
    pub fn new(stride: usize, padding: usize) -> Self {
        ConvReluPoolOp {
            stride,
            padding,
            codes: Mutex::new(None),
        }
    }

    fn geometry(&self, x: &Layout, w: &Layout) -> Result<ConvGeometry> {
        conv_geometry(x, w, self.stride, self.padding)
    }
}

/// The forward kernel call; leaves the gradient codes in `op`.
struct ConvPoolForward<'a> {
    op: &'a ConvReluPoolOp,
    g: ConvGeometry,
}

impl Map<3> for ConvPoolForward<'_> {
    const NAME: &'static str = "conv-relu-pool";
    const INPUTS: [&'static str; 3] = [
        "conv-relu-pool input",
        "conv-relu-pool weight",
        "conv-relu-pool bias",
    ];
    fn f<T: Real>(&self, [x, w, b]: [&[T]; 3]) -> Result<Vec<T>> {
        let (y, codes) = kernels::conv_relu_pool_forward(&self.g, x, w, b);
        *self.op.codes.lock().expect("codes lock") = Some(Arc::new(codes));
        Ok(y)
    }
}

impl CustomOp3 for ConvReluPoolOp {
    fn name(&self) -> &'static str {
        "rmqm-conv2d-relu-pool"
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
        let g = self.geometry(l1, l2)?;
        if l3.shape().elem_count() != g.c_out {
            bail!(
                "conv-relu-pool: bias has {} elements for {} channels",
                l3.shape().elem_count(),
                g.c_out
            );
        }
        let out = ConvPoolForward { op: self, g }.map([(s1, l1), (s2, l2), (s3, l3)])?;
        Ok((out, Shape::from((g.n, g.c_out, g.ho() / 2, g.wo() / 2))))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geometry(x.layout(), w.layout())?;
        let codes = match self.codes.lock().expect("codes lock").clone() {
            Some(c) => c,
            None => bail!("conv-relu-pool: backward before forward"),
        };
        let want_input = x.track_op();
        let want_params = w.track_op() || b.track_op();
        if !want_input && !want_params {
            return Ok((None, None, None));
        }
        let op = ConvReluPoolGrad {
            g,
            codes,
            want_input,
            want_params,
        };
        let flat = x
            .contiguous()?
            .apply_op3_no_bwd(&w.contiguous()?, &grad.contiguous()?, &op)?;
        let [dx, dw, db] = unpack(&flat, &op.layout(), [x.shape(), w.shape(), b.shape()])?;
        Ok((dx, dw.filter(|_| w.track_op()), db.filter(|_| b.track_op())))
    }
}

/// Gradients of [`ConvReluPoolOp`] as one flat tensor [input | weight | bias] (the parts asked
/// for, laid out by [`kernels::conv_relu_pool_grad_layout`]): applied as
/// `x.apply_op3_no_bwd(weight, pooled_grad)`.
struct ConvReluPoolGrad {
    g: ConvGeometry,
    codes: Arc<Vec<u8>>,
    want_input: bool,
    want_params: bool,
}

impl ConvReluPoolGrad {
    fn layout(&self) -> GradLayout {
        kernels::conv_relu_pool_grad_layout(&self.g, self.want_input, self.want_params)
    }
}

impl Map<3> for ConvReluPoolGrad {
    const NAME: &'static str = "conv-relu-pool";
    const INPUTS: [&'static str; 3] = [
        "conv-relu-pool input",
        "conv-relu-pool weight",
        "conv-relu-pool gradient",
    ];
    fn f<T: Real>(&self, [x, w, dy]: [&[T]; 3]) -> Result<Vec<T>> {
        Ok(kernels::conv_relu_pool_backward(
            &self.g,
            x,
            w,
            &self.codes,
            dy,
            self.want_input,
            self.want_params,
        ))
    }
}

impl CustomOp3 for ConvReluPoolGrad {
    fn name(&self) -> &'static str {
        "rmqm-conv2d-relu-pool-grad"
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
        let out = self.map([(s1, l1), (s2, l2), (s3, l3)])?;
        Ok((out, Shape::from(self.layout().total())))
    }
}

/// `max_pool2x2(relu(conv2d(x, w) + b))` as one op ([`ConvReluPoolOp`]); with candle's default
/// ops when they are switched on.
pub fn conv2d_relu_pool(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if candle_default_ops() {
        return max_pool2x2(&conv2d(x, w, Some(b), stride, padding, true)?);
    }
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        ConvReluPoolOp::new(stride, padding),
    )
}
