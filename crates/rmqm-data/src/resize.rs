//! Image resizing for datasets whose native size differs from the encoder's input.

use image::imageops::{self, FilterType};
use image::{ImageBuffer, Luma, Rgb};

/// The filter used for every resize: a triangle (bilinear) kernel whose support widens with the
/// downscale factor, so it averages the covered area (antialiased, like PIL's BILINEAR that
/// torchvision's `Resize` uses).
pub const RESIZE_FILTER: FilterType = FilterType::Triangle;

/// Resizes a single-channel f32 image (row-major, `w*h` values) to `new_w x new_h`.
pub fn resize_grey(pixels: &[f32], w: usize, h: usize, new_w: usize, new_h: usize) -> Vec<f32> {
    if (w, h) == (new_w, new_h) {
        return pixels.to_vec();
    }
    let buf: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(w as u32, h as u32, pixels.to_vec())
            .expect("pixel count matches w*h");
    let out = imageops::resize(&buf, new_w as u32, new_h as u32, RESIZE_FILTER);
    out.into_raw()
        .into_iter()
        .map(|v| v.clamp(0.0, 1.0))
        .collect()
}

/// Resizes an interleaved RGB f32 image (`w*h*3` values) and returns it channel-major (3, new_h, new_w).
pub fn resize_rgb(interleaved: &[f32], w: usize, h: usize, new_w: usize, new_h: usize) -> Vec<f32> {
    let buf: ImageBuffer<Rgb<f32>, Vec<f32>> =
        ImageBuffer::from_raw(w as u32, h as u32, interleaved.to_vec())
            .expect("pixel count matches w*h*3");
    let out = if (w, h) == (new_w, new_h) {
        buf
    } else {
        imageops::resize(&buf, new_w as u32, new_h as u32, RESIZE_FILTER)
    };
    let raw = out.into_raw();
    let plane = new_w * new_h;
    let mut chw = vec![0.0f32; 3 * plane];
    for p in 0..plane {
        for c in 0..3 {
            chw[c * plane + p] = raw[p * 3 + c].clamp(0.0, 1.0);
        }
    }
    chw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_image_stays_constant_and_averages_area() {
        let img = vec![0.25f32; 105 * 105];
        let out = resize_grey(&img, 105, 105, 28, 28);
        assert_eq!(out.len(), 28 * 28);
        assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-5));
        // A checkerboard averages to about one half after a 4x downscale.
        let board: Vec<f32> = (0..112 * 112)
            .map(|i| ((i / 112 + i % 112) % 2) as f32)
            .collect();
        let out = resize_grey(&board, 112, 112, 28, 28);
        let mean = out.iter().sum::<f32>() / out.len() as f32;
        assert!((mean - 0.5).abs() < 0.02);
        assert!(out[14 * 28 + 14] > 0.3 && out[14 * 28 + 14] < 0.7);
    }

    #[test]
    fn rgb_is_returned_channel_major() {
        let mut img = vec![0.0f32; 4 * 4 * 3];
        for p in 0..16 {
            img[p * 3] = 1.0; // red everywhere
        }
        let out = resize_rgb(&img, 4, 4, 2, 2);
        assert_eq!(&out[..4], &[1.0; 4]);
        assert_eq!(&out[4..], &[0.0; 8]);
    }
}
