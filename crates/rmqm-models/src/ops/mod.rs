//! candle custom ops over the CPU kernels, one module per family: convolution (+bias, +ReLU), the
//! fused convolution + ReLU + 2x2 max pool, 2x2 max pooling, dense layers (+bias, +ReLU), batch
//! norm (+ReLU) and the residual add + ReLU. Each has a backward pass that computes only the
//! gradients the graph needs (an argument that does not track gradients gets none: no weight
//! gradients during PGD, no image gradient during training).
//!
//! The ops use the kernels, never the reverse. Every op's CPU forward runs its kernel through
//! one dtype dispatch (`Map`, private), which picks the element type once for all of them.

mod activation;
mod batch_norm;
mod conv;
mod conv_pool;
mod dense;
mod pool;

pub use activation::{AddReluOp, add_relu};
pub use batch_norm::{BatchNormOp, ChannelAffineOp, batch_norm_train, channel_affine};
pub use conv::{Conv2dOp, conv2d};
pub use conv_pool::{ConvReluPoolOp, conv2d_relu_pool};
pub use dense::{LinearOp, linear, linear_by};
pub use pool::{MaxPool2x2, max_pool2x2};

use crate::kernels::{GradLayout, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor, WithDType, bail};
use std::sync::atomic::{AtomicBool, Ordering};

/// The contiguous elements of a custom op's input, or an error naming `what`.
fn slice<'a, T: Real>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: input must be contiguous"),
    }
}

/// The four dimensions of an NCHW input, or an error naming `what`.
fn dims4(l: &Layout, what: &str) -> Result<(usize, usize, usize, usize)> {
    match l.dims() {
        &[a, b, c, d] => Ok((a, b, c, d)),
        d => bail!("{what}: expected a 4-d tensor, got shape {d:?}"),
    }
}

/// A kernel call on `N` inputs, written once for every element type: [`Map::map`] takes the
/// inputs' contiguous elements and runs [`Map::f`] for their dtype (f32 or f64), as candle's own
/// `Map1`/`Map2` do for its CPU ops. Implemented by small structs holding what the kernel needs
/// besides the inputs (geometry, flags), built by each op's forward.
trait Map<const N: usize> {
    /// The op's name, in errors.
    const NAME: &'static str;
    /// The inputs' names, in errors.
    const INPUTS: [&'static str; N];

    /// Runs the kernel on the inputs' elements.
    fn f<T: Real>(&self, inputs: [&[T]; N]) -> Result<Vec<T>>;

    /// Runs the kernel on candle storages, in their dtype.
    fn map(&self, inputs: [(&CpuStorage, &Layout); N]) -> Result<CpuStorage> {
        match inputs[0].0.dtype() {
            DType::F32 => Ok(f32::to_cpu_storage_owned(
                self.f(slices(inputs, Self::INPUTS)?)?,
            )),
            DType::F64 => Ok(f64::to_cpu_storage_owned(
                self.f(slices(inputs, Self::INPUTS)?)?,
            )),
            d => bail!("{}: unsupported dtype {d:?}", Self::NAME),
        }
    }
}

/// Each input's contiguous elements, as `T`.
fn slices<'a, T: Real, const N: usize>(
    inputs: [(&'a CpuStorage, &Layout); N],
    names: [&str; N],
) -> Result<[&'a [T]; N]> {
    let mut out: [&[T]; N] = [&[]; N];
    for (o, ((s, l), what)) in out.iter_mut().zip(inputs.into_iter().zip(names)) {
        *o = slice(s, l, what)?;
    }
    Ok(out)
}

/// The parts of a flat gradient `[input | weight | bias]` that `layout` holds, each reshaped to
/// its argument's shape (`None` for a part not held).
fn unpack(flat: &Tensor, layout: &GradLayout, shapes: [&Shape; 3]) -> Result<[Option<Tensor>; 3]> {
    let [a, b, c] = layout.ranges();
    let part = |r: Option<std::ops::Range<usize>>, shape: &Shape| {
        r.map(|r| flat.narrow(0, r.start, r.len())?.reshape(shape))
            .transpose()
    };
    Ok([
        part(a, shapes[0])?,
        part(b, shapes[1])?,
        part(c, shapes[2])?,
    ])
}

static CANDLE_DEFAULT: AtomicBool = AtomicBool::new(false);

/// Routes convolution, pooling and dense layers through candle's own ops instead of these kernels,
/// so benchmarks can compare the two on the same models. (candle's `max_pool2d` backward is wrong
/// in 0.11.1: use this for timing only.)
pub fn use_candle_default_ops(on: bool) {
    CANDLE_DEFAULT.store(on, Ordering::Relaxed);
}

/// True while [`use_candle_default_ops`] is on.
pub fn candle_default_ops() -> bool {
    CANDLE_DEFAULT.load(Ordering::Relaxed)
}
