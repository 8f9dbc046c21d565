//! Layers as plain structs with `new` and `forward`, on the fast custom ops.

use crate::ops;
use crate::params::{Buffer, Counter, Init, ParamStore};
use candle_core::{D, Result, Tensor};

/// A 2-D convolution with optional bias.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// A `c_in -> c_out` convolution with a `k x k` kernel, PyTorch's default initialisation.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
        let weight = store.param(
            &format!("{name}.weight"),
            (c_out, c_in, k, k),
            Init::Uniform(bound),
        )?;
        let bias = if bias {
            Some(store.param(&format!("{name}.bias"), c_out, Init::Uniform(bound))?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            stride,
            padding,
        })
    }
    /// Applies the convolution, then ReLU if `relu`.
    pub fn forward(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        ops::conv2d(
            x,
            &self.weight,
            self.bias.as_ref(),
            self.stride,
            self.padding,
            relu,
        )
    }
    /// Applies the convolution, ReLU and 2x2 max pooling (one fused op when there is a bias).
    pub fn forward_relu_pool(&self, x: &Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => ops::conv2d_relu_pool(x, &self.weight, b, self.stride, self.padding),
            None => ops::max_pool2x2(&self.forward(x, true)?),
        }
    }
}

/// A dense layer `x w^T + b`.
#[derive(Debug, Clone)]
pub struct Dense {
    weight: Tensor,
    bias: Tensor,
    /// A frozen layer's weight by columns (the (in, out) transpose, contiguous), which forward
    /// passes read without packing it; `None` when the weight trains.
    columns: Option<Tensor>,
}

impl Dense {
    /// A `d_in -> d_out` layer, PyTorch's default initialisation.
    pub fn new(store: &mut ParamStore, name: &str, d_in: usize, d_out: usize) -> Result<Self> {
        let bound = 1.0 / (d_in as f64).sqrt();
        let weight = store.param(
            &format!("{name}.weight"),
            (d_out, d_in),
            Init::Uniform(bound),
        )?;
        let bias = store.param(&format!("{name}.bias"), d_out, Init::Uniform(bound))?;
        let columns = if store.trainable() {
            None
        } else {
            Some(weight.t()?.contiguous()?)
        };
        Ok(Dense {
            weight,
            bias,
            columns,
        })
    }

    /// Applies the layer, then ReLU if `relu`.
    pub fn forward(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let op = ops::LinearOp {
            relu,
            columns: self.columns.clone(),
        };
        ops::linear_by(x, &self.weight, Some(&self.bias), op)
    }

    /// The fewest rows a forward pass needs for every row's output to be the same whatever rows
    /// share the pass ([`crate::kernels::row_invariant_rows`]).
    pub fn row_invariant_rows(&self) -> usize {
        let dims = self.weight.dims();
        crate::kernels::row_invariant_rows(dims[1], dims[0])
    }
}

/// Batch normalisation over the channels of NCHW tensors (PyTorch semantics: biased variance to
/// normalise in training, unbiased variance in the running estimate, momentum 0.1, eps 1e-5; the
/// training-mode passes counted in `num_batches_tracked`, as PyTorch's state dict has it).
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    gamma: Tensor,
    beta: Tensor,
    running_mean: Buffer,
    running_var: Buffer,
    num_batches_tracked: Counter,
    momentum: f64,
    eps: f64,
}

impl BatchNorm2d {
    /// Batch norm for `c` channels.
    pub fn new(store: &mut ParamStore, name: &str, c: usize) -> Result<Self> {
        Ok(BatchNorm2d {
            gamma: store.param(&format!("{name}.weight"), c, Init::Const(1.0))?,
            beta: store.param(&format!("{name}.bias"), c, Init::Const(0.0))?,
            running_mean: store.buffer(&format!("{name}.running_mean"), c, 0.0)?,
            running_var: store.buffer(&format!("{name}.running_var"), c, 1.0)?,
            num_batches_tracked: store.counter(&format!("{name}.num_batches_tracked"))?,
            momentum: 0.1,
            eps: 1e-5,
        })
    }

    /// Normalises with batch statistics (and updates the running ones) when `train`, else with the running ones.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.normalise(x, train, false)
    }

    /// [`BatchNorm2d::forward`] then ReLU, as one op.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.normalise(x, train, true)
    }

    fn normalise(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if crate::ops::candle_default_ops() {
            let y = self.forward_candle_ops(x, train)?;
            return if relu { y.relu() } else { Ok(y) };
        }
        let (n, c, h, w) = x.dims4()?;
        if train {
            self.count_batch();
            let (y, state) =
                crate::ops::batch_norm_train(x, &self.gamma, &self.beta, self.eps, relu)?;
            // Running statistics move outside autograd, from the batch's mean and unbiased variance.
            let count = (n * h * w) as f64;
            let unbiased: Vec<f64> = state
                .var
                .iter()
                .map(|v| v * count / (count - 1.0).max(1.0))
                .collect();
            let m = self.momentum;
            let dev = x.device();
            let dtype = self.gamma.dtype();
            {
                let mut rm = self.running_mean.lock().unwrap();
                let batch_mean = Tensor::from_vec(state.mean, c, dev)?.to_dtype(dtype)?;
                *rm = ((&*rm * (1.0 - m))? + (batch_mean * m)?)?;
                let mut rv = self.running_var.lock().unwrap();
                let batch_var = Tensor::from_vec(unbiased, c, dev)?.to_dtype(dtype)?;
                *rv = ((&*rv * (1.0 - m))? + (batch_var * m)?)?;
            }
            return Ok(y);
        }
        let rm = self.running_mean.lock().unwrap().clone();
        let rv = self.running_var.lock().unwrap().clone();
        let scale = self.gamma.broadcast_div(&(rv + self.eps)?.sqrt()?)?;
        let shift = (&self.beta - (rm * &scale)?)?;
        crate::ops::channel_affine(x, &scale, &shift, relu)
    }
}
impl BatchNorm2d {
    /// Counts one training-mode pass (PyTorch's `num_batches_tracked`).
    fn count_batch(&self) {
        self.num_batches_tracked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The same normalisation on candle's own ops (the reference the benchmarks compare against).
    pub fn forward_candle_ops(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let shape = (1, c, 1, 1);
        let (mean, var) = if train {
            self.count_batch();
            let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred
                .sqr()?
                .mean_keepdim(0)?
                .mean_keepdim(2)?
                .mean_keepdim(3)?;
            let count = (n * h * w) as f64;
            let unbiased = (var.detach() * (count / (count - 1.0).max(1.0)))?.reshape(c)?;
            let m = self.momentum;
            {
                let mut rm = self.running_mean.lock().unwrap();
                *rm = ((&*rm * (1.0 - m))? + (mean.detach().reshape(c)? * m)?)?;
                let mut rv = self.running_var.lock().unwrap();
                *rv = ((&*rv * (1.0 - m))? + (unbiased * m)?)?;
            }
            (mean, var)
        } else {
            (
                self.running_mean.lock().unwrap().reshape(shape)?,
                self.running_var.lock().unwrap().reshape(shape)?,
            )
        };
        let xhat = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + self.eps)?.sqrt()?)?;
        xhat.broadcast_mul(&self.gamma.reshape(shape)?)?
            .broadcast_add(&self.beta.reshape(shape)?)
    }
}

/// Mean over the spatial axes: (n, c, h, w) -> (n, c).
pub fn global_average_pool(x: &Tensor) -> Result<Tensor> {
    x.flatten_from(2)?.mean(D::Minus1)
}
