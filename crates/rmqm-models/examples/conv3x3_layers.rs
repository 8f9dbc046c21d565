//! Times the 3x3 stride-1 convolutions of ResNet-18's four stages one op at a time (forward,
//! input gradient, weight gradient; f32, 128 images), the per-layer figures of README's
//! performance section: `RAYON_NUM_THREADS=2 cargo run --release -p rmqm-models --example
//! conv3x3_layers [REPEATS]` prints each op's median over REPEATS runs (default 5).

use rmqm_models::kernels::{ConvGeometry, conv2d_forward, conv2d_input_grad, conv2d_weight_grad};
use std::time::Instant;

/// Images per op, as in a training batch.
const IMAGES: usize = 128;

/// ResNet-18's stages on 32x32 images: channels and image side.
const STAGES: [(usize, usize); 4] = [(64, 32), (128, 16), (256, 8), (512, 4)];

/// Milliseconds of one call of `op`.
fn time_ms<R>(op: impl FnOnce() -> R) -> (f64, R) {
    let start = Instant::now();
    let result = op();
    (start.elapsed().as_secs_f64() * 1e3, result)
}

/// The median of `values` (sorted in place).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Deterministic values in [-0.5, 0.5).
fn values(len: usize, step: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (i * step % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn main() {
    let repeats: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("REPEATS: a whole number"))
        .unwrap_or(5)
        .max(1);
    for (channels, side) in STAGES {
        let g = ConvGeometry {
            n: IMAGES,
            c_in: channels,
            h: side,
            w: side,
            c_out: channels,
            kh: 3,
            kw: 3,
            stride: 1,
            padding: 1,
        };
        let x = values(IMAGES * channels * side * side, 7919);
        let weight = values(channels * channels * 9, 104_729);
        let (mut forward, mut input, mut weights) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..repeats {
            let (ms, y) = time_ms(|| conv2d_forward(&g, &x, &weight, None, false));
            forward.push(ms);
            input.push(time_ms(|| conv2d_input_grad(&g, &y, &weight)).0);
            weights.push(time_ms(|| conv2d_weight_grad(&g, &x, &y, false)).0);
        }
        println!(
            "{channels} channels {side}x{side}: forward {:.1} ms, input gradient {:.1} ms, weight gradient {:.1} ms",
            median(&mut forward),
            median(&mut input),
            median(&mut weights)
        );
    }
}
