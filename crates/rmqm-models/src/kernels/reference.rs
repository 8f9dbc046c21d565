//! Convolutions by their definition, in f64, for the kernels' tests.

use super::conv::ConvGeometry;

/// Input, weight and output gradient of `g`'s sizes, fixed values in [-1.2, 1.2] or so.
pub fn operands(g: &ConvGeometry) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let x = (0..g.n * g.in_size())
        .map(|i| ((i * 37 % 17) as f64 - 8.0) / 7.0)
        .collect();
    let w = (0..g.c_out * g.ckk())
        .map(|i| ((i * 11 % 13) as f64 - 6.0) / 5.0)
        .collect();
    let dy = (0..g.n * g.out_size())
        .map(|i| ((i * 5 % 19) as f64 - 9.0) / 4.0)
        .collect();
    (x, w, dy)
}

/// Calls `visit(x index, weight index, y index)` for every multiply-add of the convolution.
fn each_term(g: &ConvGeometry, mut visit: impl FnMut(usize, usize, usize)) {
    let (ho, wo) = (g.ho(), g.wo());
    for b in 0..g.n {
        for o in 0..g.c_out {
            for i in 0..ho {
                for j in 0..wo {
                    for c in 0..g.c_in {
                        for ki in 0..g.kh {
                            for kj in 0..g.kw {
                                let ii = (i * g.stride + ki) as isize - g.padding as isize;
                                let jj = (j * g.stride + kj) as isize - g.padding as isize;
                                if ii >= 0 && jj >= 0 && (ii as usize) < g.h && (jj as usize) < g.w
                                {
                                    visit(
                                        ((b * g.c_in + c) * g.h + ii as usize) * g.w + jj as usize,
                                        ((o * g.c_in + c) * g.kh + ki) * g.kw + kj,
                                        ((b * g.c_out + o) * ho + i) * wo + j,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Direct convolution by definition: `(n, c_out, ho, wo)`.
pub fn naive_conv(g: &ConvGeometry, x: &[f64], w: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; g.n * g.out_size()];
    each_term(g, |xi, wi, yi| y[yi] += x[xi] * w[wi]);
    y
}

/// The input gradient by definition: `(n, c_in, h, w)`.
pub fn naive_input_grad(g: &ConvGeometry, dy: &[f64], w: &[f64]) -> Vec<f64> {
    let mut dx = vec![0.0; g.n * g.in_size()];
    each_term(g, |xi, wi, yi| dx[xi] += dy[yi] * w[wi]);
    dx
}

/// The weight gradient by definition: `(c_out, c_in, kh, kw)`.
pub fn naive_weight_grad(g: &ConvGeometry, x: &[f64], dy: &[f64]) -> Vec<f64> {
    let mut dw = vec![0.0; g.c_out * g.ckk()];
    each_term(g, |xi, wi, yi| dw[wi] += dy[yi] * x[xi]);
    dw
}
