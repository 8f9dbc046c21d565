//! Caltech-101 from its JPEG folders (`101_ObjectCategories/<class>/image_NNNN.jpg`), resized to
//! 32x32 RGB with [`crate::RESIZE_FILTER`]; greyscale images are repeated over three channels.
//! `BACKGROUND_Google` is excluded unless asked for.

use crate::{DataError, ImageSet, resize_rgb};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Loads every Caltech-101 image under `dir` (the `caltech101/` folder holding
/// `101_ObjectCategories/`, or that folder itself). Classes are numbered in sorted folder order;
/// ids follow sorted (class, file) order. The publisher has no split: the single split is `all`.
pub fn load_caltech101(
    dir: &Path,
    size: usize,
    include_background: bool,
) -> Result<ImageSet, DataError> {
    let root = if dir.join("101_ObjectCategories").is_dir() {
        dir.join("101_ObjectCategories")
    } else {
        dir.to_path_buf()
    };
    if !root.is_dir() {
        return Err(DataError::Missing {
            path: root,
            what: "Caltech-101 folder 101_ObjectCategories/".into(),
        });
    }
    let mut classes: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| DataError::io(&root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter(|p| include_background || p.file_name().is_none_or(|n| n != "BACKGROUND_Google"))
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::Format {
            path: root,
            reason: "no class folders found".into(),
        });
    }
    let mut files = Vec::new();
    let mut class_names = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        class_names.push(class.file_name().unwrap().to_string_lossy().to_string());
        let mut images: Vec<PathBuf> = std::fs::read_dir(class)
            .map_err(|e| DataError::io(class, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| {
                    let x = x.to_string_lossy().to_ascii_lowercase();
                    x == "jpg" || x == "jpeg" || x == "png"
                })
            })
            .collect();
        images.sort();
        files.extend(images.into_iter().map(|p| (p, label as i32)));
    }
    let decoded: Result<Vec<Vec<f32>>, DataError> = files
        .par_iter()
        .map(|(path, _)| {
            let img = image::open(path)
                .map_err(|e| DataError::BadImage {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
                .to_rgb8();
            let (w, h) = (img.width() as usize, img.height() as usize);
            let rgb: Vec<f32> = img
                .into_raw()
                .into_iter()
                .map(|v| v as f32 / 255.0)
                .collect();
            Ok(resize_rgb(&rgb, w, h, size, size))
        })
        .collect();
    let decoded = decoded?;
    let n = decoded.len();
    Ok(ImageSet {
        dataset: "caltech101".into(),
        split: "all".into(),
        channels: 3,
        height: size,
        width: size,
        pixels: decoded.concat(),
        labels: files.iter().map(|(_, l)| *l).collect(),
        ids: (0..n as u32).collect(),
        class_names,
    })
}
