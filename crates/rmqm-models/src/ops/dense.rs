//! Dense layers `y = x w^T + b` with optional fused ReLU, and one op for all their gradients.

use super::activation::pre_activation_grad;
use super::{Map, candle_default_ops, unpack};
use crate::kernels::{self, GradLayout, MatRef, Real, Want};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor, bail};

/// A dense layer `y = x w^T + b` on (n, in) inputs with (out, in) weights, optional fused ReLU.
#[derive(Debug, Clone)]
pub struct LinearOp {
    /// Apply ReLU to the output.
    pub relu: bool,
    /// A frozen layer's weight stored by columns: the (in, out) transpose, contiguous. The
    /// forward pass reads it instead of the weight when the pass has rows enough for the same
    /// values ([`kernels::row_invariant_rows`]): the product then skips packing the weight. The
    /// backward pass always takes the weight.
    pub columns: Option<Tensor>,
}

/// A dense layer's sizes: n inputs of d_in features to d_out outputs.
#[derive(Debug, Clone, Copy)]
struct DenseDims {
    n: usize,
    d_in: usize,
    d_out: usize,
}

/// How the forward pass's weight input is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeightOrder {
    /// (out, in), row-major: the layer's weight.
    Rows,
    /// (in, out), row-major: the weight's columns ([`LinearOp::columns`]).
    Columns,
}

/// The forward kernel call: inputs x, weight and, for `Map<3>`, the bias.
struct DenseForward {
    dims: DenseDims,
    relu: bool,
    order: WeightOrder,
}

impl DenseForward {
    fn run<T: Real>(&self, x: &[T], w: &[T], b: Option<&[T]>) -> Vec<T> {
        let DenseDims { n, d_in, d_out } = self.dims;
        let w = match self.order {
            WeightOrder::Rows => MatRef::row_major(w, d_out, d_in),
            WeightOrder::Columns => MatRef::row_major(w, d_in, d_out).t(),
        };
        kernels::linear_forward(x, w, b, n, self.relu)
    }
}

impl Map<2> for DenseForward {
    const NAME: &'static str = "linear";
    const INPUTS: [&'static str; 2] = ["linear input", "linear weight"];
    fn f<T: Real>(&self, [x, w]: [&[T]; 2]) -> Result<Vec<T>> {
        Ok(self.run(x, w, None))
    }
}

impl Map<3> for DenseForward {
    const NAME: &'static str = "linear";
    const INPUTS: [&'static str; 3] = ["linear input", "linear weight", "linear bias"];
    fn f<T: Real>(&self, [x, w, b]: [&[T]; 3]) -> Result<Vec<T>> {
        if b.len() != self.dims.d_out {
            bail!(
                "linear: bias has {} values for {} outputs",
                b.len(),
                self.dims.d_out
            );
        }
        Ok(self.run(x, w, Some(b)))
    }
}

impl LinearOp {
    fn forward<const N: usize>(
        &self,
        inputs: [(&CpuStorage, &Layout); N],
    ) -> Result<(CpuStorage, Shape)>
    where
        DenseForward: Map<N>,
    {
        let (n, d_in) = inputs[0].1.shape().dims2()?;
        let (d_out, d_in2) = inputs[1].1.shape().dims2()?;
        if d_in != d_in2 {
            bail!("linear: input has {d_in} features, weight expects {d_in2}");
        }
        let dims = DenseDims { n, d_in, d_out };
        let columns = self
            .columns
            .as_ref()
            .filter(|_| n >= kernels::row_invariant_rows(d_in, d_out))
            .map(|c| c.storage_and_layout());
        let mut inputs: [(&CpuStorage, &Layout); N] = inputs;
        let order = match &columns {
            Some((storage, layout)) => {
                let Storage::Cpu(storage) = &**storage else {
                    bail!("linear: the weight's columns are not on the CPU");
                };
                if layout.dims() != [d_in, d_out] {
                    bail!(
                        "linear: the weight's columns have shape {:?}, expected [{d_in}, {d_out}]",
                        layout.dims()
                    );
                }
                inputs[1] = (storage, layout);
                WeightOrder::Columns
            }
            None => WeightOrder::Rows,
        };
        let out = DenseForward {
            dims,
            relu: self.relu,
            order,
        }
        .map(inputs)?;
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
        let want = Want {
            input: x.track_op(),
            weight: w.track_op(),
            bias: b.is_some_and(|b| b.track_op()),
        };
        if !(want.input || want.weight || want.bias) {
            return Ok((None, None, None));
        }
        let (n, d_in) = x.dims2()?;
        let op = LinearGrad {
            dims: DenseDims {
                n,
                d_in,
                d_out: w.dim(0)?,
            },
            want,
        };
        let flat = x
            .contiguous()?
            .apply_op3_no_bwd(&w.contiguous()?, &grad, &op)?;
        let bias_shape = Shape::from(op.dims.d_out);
        let [dx, dw, db] = unpack(&flat, &op.layout(), [x.shape(), w.shape(), &bias_shape])?;
        Ok((dx, dw, db))
    }
}

/// Gradients of a dense layer as one flat tensor [input | weight | bias] (the parts in `want`,
/// laid out by [`kernels::dense_grad_layout`]): applied as `x.apply_op3_no_bwd(w, dy)` with dy
/// the pre-activation gradient.
struct LinearGrad {
    dims: DenseDims,
    want: Want,
}

impl LinearGrad {
    fn layout(&self) -> GradLayout {
        let DenseDims { n, d_in, d_out } = self.dims;
        kernels::dense_grad_layout(n, d_in, d_out, self.want)
    }
}

impl Map<3> for LinearGrad {
    const NAME: &'static str = "linear grad";
    const INPUTS: [&'static str; 3] = ["x", "w", "dy"];
    fn f<T: Real>(&self, [x, w, dy]: [&[T]; 3]) -> Result<Vec<T>> {
        let DenseDims { n, d_in, d_out } = self.dims;
        Ok(kernels::linear_backward(
            x, w, dy, n, d_in, d_out, self.want,
        ))
    }
}

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
        let DenseDims { n, d_in, d_out } = self.dims;
        if l1.dims() != [n, d_in] || l2.dims() != [d_out, d_in] || l3.dims() != [n, d_out] {
            bail!(
                "linear grad: shapes {:?}, {:?}, {:?} for x [{n}, {d_in}], w [{d_out}, {d_in}], dy [{n}, {d_out}]",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let out = self.map([(s1, l1), (s2, l2), (s3, l3)])?;
        Ok((out, Shape::from(self.layout().total())))
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

/// Dense layer `x w^T (+ b)`, fused ReLU if `relu`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    linear_by(
        x,
        w,
        b,
        LinearOp {
            relu,
            columns: None,
        },
    )
}

/// Dense layer `x w^T (+ b)` computed by `op` (ReLU, and the frozen weight's columns if any).
pub fn linear_by(x: &Tensor, w: &Tensor, b: Option<&Tensor>, op: LinearOp) -> Result<Tensor> {
    let relu = op.relu;
    if candle_default_ops() {
        let mut y = x.matmul(&w.t()?)?;
        if let Some(b) = b {
            y = y.broadcast_add(b)?;
        }
        return if relu { y.relu() } else { Ok(y) };
    }
    let x = x.contiguous()?;
    match b {
        Some(b) => x.apply_op3(w, b, op),
        None => x.apply_op2(w, op),
    }
}
