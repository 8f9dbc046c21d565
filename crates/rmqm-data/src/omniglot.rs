//! Omniglot, from the two original zips (`images_background.zip`, `images_evaluation.zip`) or their
//! extracted folders. Images are 105x105 black strokes on white; they are resized to 28x28 with
//! [`crate::RESIZE_FILTER`] and, by default, inverted so strokes are bright like MNIST.

use crate::{DataError, ImageSet, resize_grey};
use rayon::prelude::*;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One image found in the archive or folder: its path relative to the set root and its bytes.
struct Member {
    alphabet: String,
    character: String,
    name: String,
    bytes: Vec<u8>,
}

fn split_member_path(rel: &str) -> Option<(String, String, String)> {
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    // <set>/<Alphabet>/<characterNN>/<file>.png
    if parts.len() == 4 && parts[3].to_ascii_lowercase().ends_with(".png") {
        Some((
            parts[1].to_string(),
            parts[2].to_string(),
            parts[3].to_string(),
        ))
    } else {
        None
    }
}

fn read_zip(path: &Path) -> Result<Vec<Member>, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut archive =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| DataError::Format {
            path: path.into(),
            reason: format!("not a readable zip archive: {e}"),
        })?;
    let mut members = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| DataError::Format {
            path: path.into(),
            reason: format!("zip entry {i}: {e}"),
        })?;
        if entry.is_dir() {
            continue;
        }
        let name = entry
            .name()
            .map_err(|e| DataError::Format {
                path: path.into(),
                reason: format!("zip entry {i} name: {e}"),
            })?
            .to_string();
        let Some((alphabet, character, file)) = split_member_path(&name) else {
            continue;
        };
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| DataError::BadImage {
                path: path.join(&name),
                reason: format!("cannot read from the archive: {e}"),
            })?;
        members.push(Member {
            alphabet,
            character,
            name: file,
            bytes,
        });
    }
    Ok(members)
}

fn read_folder(root: &Path) -> Result<Vec<Member>, DataError> {
    let mut members = Vec::new();
    let read_dir = |p: &Path| -> Result<Vec<PathBuf>, DataError> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| DataError::io(p, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        Ok(v)
    };
    for alphabet in read_dir(root)?.into_iter().filter(|p| p.is_dir()) {
        for character in read_dir(&alphabet)?.into_iter().filter(|p| p.is_dir()) {
            for file in read_dir(&character)? {
                let name = file.file_name().unwrap().to_string_lossy().to_string();
                if !name.to_ascii_lowercase().ends_with(".png") {
                    continue;
                }
                let bytes = std::fs::read(&file).map_err(|e| DataError::io(&file, e))?;
                members.push(Member {
                    alphabet: alphabet.file_name().unwrap().to_string_lossy().to_string(),
                    character: character.file_name().unwrap().to_string_lossy().to_string(),
                    name,
                    bytes,
                });
            }
        }
    }
    Ok(members)
}

/// Loads an Omniglot set (`background` or `evaluation`) from `dir` (the `omniglot/` folder holding
/// `images_<set>.zip` or the extracted `images_<set>/`). Class = (alphabet, character), numbered in
/// sorted order; image ids follow the sorted path order. `invert` makes strokes bright (1.0).
pub fn load_omniglot(
    dir: &Path,
    set: &str,
    size: usize,
    invert: bool,
) -> Result<ImageSet, DataError> {
    if set != "background" && set != "evaluation" {
        return Err(DataError::Request(format!(
            "omniglot has splits background and evaluation, not {set:?}"
        )));
    }
    let zip_path = dir.join(format!("images_{set}.zip"));
    let folder = dir.join(format!("images_{set}"));
    let (source, mut members) = if folder.is_dir() {
        (folder.clone(), read_folder(&folder)?)
    } else if zip_path.is_file() {
        (zip_path.clone(), read_zip(&zip_path)?)
    } else {
        return Err(DataError::Missing {
            path: zip_path,
            what: format!("Omniglot {set} set (the zip or the extracted folder images_{set}/)"),
        });
    };
    if members.is_empty() {
        return Err(DataError::Format {
            path: source,
            reason: "no <Alphabet>/<character>/<image>.png found".into(),
        });
    }
    members.sort_by(|a, b| {
        (&a.alphabet, &a.character, &a.name).cmp(&(&b.alphabet, &b.character, &b.name))
    });
    let mut class_names: Vec<String> = Vec::new();
    let mut labels = Vec::with_capacity(members.len());
    for m in &members {
        let class = format!("{}/{}", m.alphabet, m.character);
        if class_names.last() != Some(&class) {
            class_names.push(class);
        }
        labels.push(class_names.len() as i32 - 1);
    }
    let decoded: Result<Vec<Vec<f32>>, DataError> = members
        .par_iter()
        .map(|m| {
            let member_path = source.join(&m.alphabet).join(&m.character).join(&m.name);
            let img = image::load_from_memory(&m.bytes)
                .map_err(|e| DataError::BadImage {
                    path: member_path,
                    reason: e.to_string(),
                })?
                .to_luma8();
            let (w, h) = (img.width() as usize, img.height() as usize);
            let grey: Vec<f32> = img
                .into_raw()
                .into_iter()
                .map(|v| {
                    let x = v as f32 / 255.0;
                    if invert { 1.0 - x } else { x }
                })
                .collect();
            Ok(resize_grey(&grey, w, h, size, size))
        })
        .collect();
    let decoded = decoded?;
    let n = decoded.len();
    Ok(ImageSet {
        dataset: "omniglot".into(),
        split: set.into(),
        channels: 1,
        height: size,
        width: size,
        pixels: decoded.concat(),
        labels,
        ids: (0..n as u32).collect(),
        class_names,
    })
}
