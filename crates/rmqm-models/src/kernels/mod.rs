//! Plain CPU kernels behind the custom ops, one module per family: gemm (row-major products on
//! strided views), convolution as im2col + gemm (forward, input gradient, weight gradient) and
//! 3x3 convolution by Winograd's F(4x4, 3x3),
//! the fused convolution + ReLU + 2x2 max pool of LeNet (whose input gradient folds its columns
//! back in AVX-512 lanes where the build has them), 2x2 max pooling with a first-maximum
//! gradient, dense layers, batch norm, and the element-wise ReLU kernels. Generic over f32
//! (training, inference) and f64 (gradient checks). Work is split over images across cores; each
//! gemm inside runs on one core.
//!
//! Every public kernel checks the lengths of its slices on entry (a panic, never a read past the
//! end or uninitialised output). Backward kernels that return several gradients return them as
//! one flat vector laid out by a [`GradLayout`].

mod activation;
mod batch_norm;
mod conv;
mod conv_lanes;
mod conv_pool;
mod dense;
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
mod fold_lanes;
mod gemm;
mod pool;
#[cfg(test)]
mod reference;
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
mod wgrad_lanes;
mod winograd;

pub use self::gemm::{Accum, MatRef, gemm_rm, row_invariant_rows};
pub use activation::{add_relu, relu_mask};
pub use batch_norm::{
    BatchNormState, batch_norm_backward, batch_norm_forward, batch_norm_grad_layout,
    channel_affine, channel_stats, channel_sums,
};
pub use conv::{
    ConvGeometry, IM2COL_SLACK, accumulate_weight_grad, col2im_add, conv2d_forward,
    conv2d_input_grad, conv2d_weight_grad, im2col,
};
pub use conv_pool::{
    NO_GRADIENT, conv_relu_pool_backward, conv_relu_pool_forward, conv_relu_pool_grad_layout,
};
pub use dense::{dense_grad_layout, linear_backward, linear_forward};
pub use pool::{max_pool2x2_backward, max_pool2x2_forward};

use std::mem::MaybeUninit;
use std::ops::Range;

/// Element types the kernels run on.
pub trait Real:
    candle_core::WithDType
    + Default
    + PartialOrd
    + std::ops::AddAssign
    + std::ops::Mul<Output = Self>
    + std::ops::Sub<Output = Self>
    + Send
    + Sync
{
    /// `if take_a { a } else { b }` computed with bit masks, so that the compiler emits no branch
    /// (for choices as unpredictable as the winner of a pooling window).
    fn select(take_a: bool, a: Self, b: Self) -> Self;
    /// `self * a + b` rounded once: the gemm microkernel's own step, so that a direct kernel
    /// summing in the gemm's order gets the gemm's result bit for bit.
    fn mul_add(self, a: Self, b: Self) -> Self;
}
impl Real for f32 {
    #[inline(always)]
    fn select(take_a: bool, a: f32, b: f32) -> f32 {
        let mask = (take_a as u32).wrapping_neg();
        f32::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
    }
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32) -> f32 {
        f32::mul_add(self, a, b)
    }
}
impl Real for f64 {
    #[inline(always)]
    fn select(take_a: bool, a: f64, b: f64) -> f64 {
        let mask = (take_a as u64).wrapping_neg();
        f64::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
    }
    #[inline(always)]
    fn mul_add(self, a: f64, b: f64) -> f64 {
        f64::mul_add(self, a, b)
    }
}

/// A vector of `n` elements that `write` fills completely before anything reads them; skips
/// zeroing memory that is about to be overwritten (a measurable share of small-model time).
///
/// # Safety
/// `write` must initialise every element of the slice it is given (or panic): the vector is
/// returned with length `n` whatever `write` did.
pub(crate) unsafe fn vec_written_by<T: Real>(
    n: usize,
    write: impl FnOnce(&mut [MaybeUninit<T>]),
) -> Vec<T> {
    // SAFETY: the caller's contract for `write` is this function's own (see `# Safety`).
    unsafe { vec_written_by_reserving(n, 0, write) }
}

/// [`vec_written_by`] with room for `extra` more elements (appended later without a reallocation).
///
/// # Safety
/// As [`vec_written_by`]: `write` must initialise every element of the slice it is given.
pub(crate) unsafe fn vec_written_by_reserving<T: Real>(
    n: usize,
    extra: usize,
    write: impl FnOnce(&mut [MaybeUninit<T>]),
) -> Vec<T> {
    let mut v = Vec::with_capacity(n + extra);
    write(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: the capacity is at least n, and `write` initialised elements 0..n (this function's
    // contract); had it panicked, v would have been dropped with length 0.
    unsafe { v.set_len(n) };
    v
}

/// `v` as f32 when `T` is f32 (where a kernel hands f32 work to its SIMD code), else None.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) fn as_f32<T: Real>(v: &[T]) -> Option<&[f32]> {
    // SAFETY: T is f32 (checked through its dtype), so the slice reinterprets in place.
    (T::DTYPE == candle_core::DType::F32).then(|| unsafe { &*(v as *const [T] as *const [f32]) })
}

/// [`as_f32`] for a slice to write.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) fn as_f32_mut<T: Real>(v: &mut [T]) -> Option<&mut [f32]> {
    // SAFETY: as `as_f32`.
    (T::DTYPE == candle_core::DType::F32).then(|| unsafe { &mut *(v as *mut [T] as *mut [f32]) })
}

/// [`as_f32`] for output not yet written (`MaybeUninit<f32>` has f32's layout).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
pub(crate) fn as_f32_uninit<T: Real>(v: &mut [MaybeUninit<T>]) -> Option<&mut [MaybeUninit<f32>]> {
    // SAFETY: as `as_f32`; MaybeUninit<T> has T's layout.
    (T::DTYPE == candle_core::DType::F32)
        .then(|| unsafe { &mut *(v as *mut [MaybeUninit<T>] as *mut [MaybeUninit<f32>]) })
}

/// Which of an op's three gradients to compute: with respect to its input, its weight (batch
/// norm: gamma) and its bias (batch norm: beta). An argument that does not track gradients gets
/// none: no weight gradients during PGD, no image gradient during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// The input's gradient.
    pub input: bool,
    /// The weight's (gamma's) gradient.
    pub weight: bool,
    /// The bias's (beta's) gradient.
    pub bias: bool,
}

/// Where the gradients sit in one flat vector `[input | weight | bias]` that holds only the parts
/// asked for: a backward kernel writes the vector in this layout and the op cuts it into
/// tensors with the same layout, made by one function per family ([`dense_grad_layout`],
/// [`batch_norm_grad_layout`], [`ConvGeometry::grad_layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GradLayout {
    want: Want,
    sizes: [usize; 3],
}

impl GradLayout {
    /// The layout of the parts in `want`, whose full sizes are `sizes` (input, weight, bias).
    pub fn new(want: Want, sizes: [usize; 3]) -> Self {
        GradLayout { want, sizes }
    }

    /// The parts held.
    pub fn want(&self) -> Want {
        self.want
    }

    /// The elements of each part held (0 for a part not asked for).
    pub fn lens(&self) -> [usize; 3] {
        let w = [self.want.input, self.want.weight, self.want.bias];
        std::array::from_fn(|i| if w[i] { self.sizes[i] } else { 0 })
    }

    /// Elements of the whole flat vector.
    pub fn total(&self) -> usize {
        self.lens().iter().sum()
    }

    /// Where each part lies in the flat vector: input, weight, bias; `None` for a part not held.
    pub fn ranges(&self) -> [Option<Range<usize>>; 3] {
        let w = [self.want.input, self.want.weight, self.want.bias];
        let lens = self.lens();
        let mut start = 0;
        std::array::from_fn(|i| {
            let r = start..start + lens[i];
            start = r.end;
            w[i].then_some(r)
        })
    }

    /// `flat` (exactly [`GradLayout::total`] elements) cut into its input, weight and bias parts
    /// (empty for a part not held).
    pub fn split_mut<'a, T>(&self, flat: &'a mut [T]) -> [&'a mut [T]; 3] {
        assert_eq!(flat.len(), self.total(), "flat gradient length");
        let [a, b, _] = self.lens();
        let (input, rest) = flat.split_at_mut(a);
        let (weight, bias) = rest.split_at_mut(b);
        [input, weight, bias]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grad_layout_holds_the_wanted_parts_in_order() {
        let want = Want {
            input: true,
            weight: false,
            bias: true,
        };
        let layout = GradLayout::new(want, [6, 4, 2]);
        assert_eq!(layout.lens(), [6, 0, 2]);
        assert_eq!(layout.total(), 8);
        assert_eq!(layout.ranges(), [Some(0..6), None, Some(6..8)]);
        let mut flat = [0u8; 8];
        let [input, weight, bias] = layout.split_mut(&mut flat);
        assert_eq!((input.len(), weight.len(), bias.len()), (6, 0, 2));
        let none = GradLayout::new(
            Want {
                input: false,
                weight: false,
                bias: false,
            },
            [3, 3, 3],
        );
        assert_eq!((none.total(), none.ranges()), (0, [None, None, None]));
    }
}
