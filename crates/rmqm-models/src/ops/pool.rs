//! 2x2 max pooling with stride 2, with a gradient that goes to each window's first maximum.

use super::{Map, candle_default_ops, dims4};
use crate::kernels::{self, Real};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// 2x2 max pooling with stride 2 on NCHW tensors; the gradient goes to each window's first maximum.
/// (candle 0.11.1's `max_pool2d` backward scales gradients by 1/(k*k); this op does not.)
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2x2;

/// The pooled planes: `planes` planes of h x w.
#[derive(Debug, Clone, Copy)]
struct Planes {
    planes: usize,
    h: usize,
    w: usize,
}

impl Planes {
    fn of(l: &Layout, what: &str) -> Result<(Self, (usize, usize, usize, usize))> {
        let (n, c, h, w) = dims4(l, what)?;
        Ok((
            Planes {
                planes: n * c,
                h,
                w,
            },
            (n, c, h, w),
        ))
    }
}

/// The forward kernel call.
struct PoolForward(Planes);

impl Map<1> for PoolForward {
    const NAME: &'static str = "max pool";
    const INPUTS: [&'static str; 1] = ["x"];
    fn f<T: Real>(&self, [x]: [&[T]; 1]) -> Result<Vec<T>> {
        let Planes { planes, h, w } = self.0;
        Ok(kernels::max_pool2x2_forward(x, planes, h, w))
    }
}

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "rmqm-max-pool2x2"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, (n, c, h, w)) = Planes::of(l, "max pool")?;
        let out = PoolForward(planes).map([(s, l)])?;
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

/// The backward kernel call.
struct PoolBackward(Planes);

impl Map<2> for PoolBackward {
    const NAME: &'static str = "max pool";
    const INPUTS: [&'static str; 2] = ["x", "dy"];
    fn f<T: Real>(&self, [x, dy]: [&[T]; 2]) -> Result<Vec<T>> {
        let Planes { planes, h, w } = self.0;
        Ok(kernels::max_pool2x2_backward(x, dy, planes, h, w))
    }
}

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
        let (planes, _) = Planes::of(l1, "max pool grad")?;
        let out = PoolBackward(planes).map([(s1, l1), (s2, l2)])?;
        Ok((out, l1.shape().clone()))
    }
}

/// 2x2 max pooling, stride 2.
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    if candle_default_ops() {
        return x.max_pool2d(2);
    }
    x.contiguous()?.apply_op1(MaxPool2x2)
}
