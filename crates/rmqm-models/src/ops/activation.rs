//! ReLU's gradient mask (behind every fused ReLU's backward) and the residual join
//! `relu(a + b)` as one op.

use super::{Map, candle_default_ops};
use crate::kernels::{self, Real};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};

/// The gradient before a fused ReLU: `grad * (res > 0)` (contiguous).
pub(super) fn pre_activation_grad(grad: &Tensor, res: &Tensor, relu: bool) -> Result<Tensor> {
    let grad = grad.contiguous()?;
    if relu {
        grad.apply_op2_no_bwd(&res.contiguous()?, &ReluMask)
    } else {
        Ok(grad)
    }
}

/// `grad * (res > 0)`: applied as `grad.apply_op2_no_bwd(res)`.
struct ReluMask;

impl Map<2> for ReluMask {
    const NAME: &'static str = "relu mask";
    const INPUTS: [&'static str; 2] = ["grad", "res"];
    fn f<T: Real>(&self, [grad, res]: [&[T]; 2]) -> Result<Vec<T>> {
        if grad.len() != res.len() {
            bail!(
                "relu mask: {} gradients for {} values",
                grad.len(),
                res.len()
            );
        }
        Ok(kernels::relu_mask(grad, res))
    }
}

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
        Ok((self.map([(s1, l1), (s2, l2)])?, l1.shape().clone()))
    }
}

/// `relu(a + b)` for tensors of one shape (ResNet's residual join), with its gradient.
#[derive(Debug, Clone, Copy)]
pub struct AddReluOp;

impl Map<2> for AddReluOp {
    const NAME: &'static str = "add-relu";
    const INPUTS: [&'static str; 2] = ["a", "b"];
    fn f<T: Real>(&self, [a, b]: [&[T]; 2]) -> Result<Vec<T>> {
        Ok(kernels::add_relu(a, b))
    }
}

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
        Ok((self.map([(s1, l1), (s2, l2)])?, l1.shape().clone()))
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
    if candle_default_ops() {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddReluOp)
}
