//! Every loader and every error, on fixtures built here (no test reads ../shared).

use flate2::Compression;
use flate2::write::GzEncoder;
use rmqm_data::*;
use std::io::Write;
use std::path::Path;

fn idx_images(n: usize, rows: usize, cols: usize) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        v.extend_from_slice(&(d as u32).to_be_bytes());
    }
    v.extend((0..n * rows * cols).map(|i| (i % 256) as u8));
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    v.extend_from_slice(labels);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn idx_gzip_and_raw_load_identically() {
    let root = tempfile::tempdir().unwrap();
    let labels = [3u8, 1, 4, 1, 5];
    write(
        &root.path().join("mnist/train-images-idx3-ubyte.gz"),
        &gz(&idx_images(5, 28, 28)),
    );
    write(
        &root.path().join("mnist/train-labels-idx1-ubyte.gz"),
        &gz(&idx_labels(&labels)),
    );
    write(
        &root.path().join("kmnist/t10k-images-idx3-ubyte"),
        &idx_images(5, 28, 28),
    );
    write(
        &root.path().join("kmnist/t10k-labels-idx1-ubyte"),
        &idx_labels(&labels),
    );
    let a = load(
        Dataset::Mnist,
        root.path(),
        "train",
        &LoadOptions::default(),
    )
    .unwrap();
    let b = load(
        Dataset::Kmnist,
        root.path(),
        "test",
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(a.len(), 5);
    assert_eq!((a.channels, a.height, a.width), (1, 28, 28));
    assert_eq!(a.labels, vec![3, 1, 4, 1, 5]);
    assert_eq!(a.ids, vec![0, 1, 2, 3, 4]);
    assert_eq!(a.pixels, b.pixels);
    assert_eq!(a.pixels[1], 1.0 / 255.0);
    assert_eq!(a.pixels[255], 1.0);
    assert!(a.pixels.iter().all(|&p| (0.0..=1.0).contains(&p)));
}

#[test]
fn idx_errors_name_the_file_and_the_fault() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("mnist");
    // Missing folder.
    let e = load(
        Dataset::Mnist,
        root.path(),
        "train",
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, DataError::Missing { .. }), "{e}");
    // Missing file.
    write(&dir.join("train-images-idx3-ubyte"), &idx_images(3, 2, 2));
    let e = load(
        Dataset::Mnist,
        root.path(),
        "train",
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("train-labels-idx1-ubyte"), "{e}");
    // Count mismatch.
    write(&dir.join("train-labels-idx1-ubyte"), &idx_labels(&[1, 2]));
    let e = load(
        Dataset::Mnist,
        root.path(),
        "train",
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DataError::CountMismatch {
                n_images: 3,
                n_labels: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("train-images-idx3-ubyte"));
    // Wrong magic: a labels file where images are expected.
    write(&dir.join("train-images-idx3-ubyte"), &idx_labels(&[1, 2]));
    let e = load(
        Dataset::Mnist,
        root.path(),
        "train",
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, DataError::BadMagic { found: 0x801, .. }), "{e}");
    // Truncated data.
    let mut short = idx_images(3, 2, 2);
    short.truncate(short.len() - 1);
    write(&dir.join("train-images-idx3-ubyte"), &short);
    let e = load(
        Dataset::Mnist,
        root.path(),
        "train",
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Truncated {
                expected: 12,
                found: 11,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("train-images-idx3-ubyte"));
    // Corrupt gzip.
    std::fs::remove_file(dir.join("train-images-idx3-ubyte")).unwrap();
    let mut bad = gz(&idx_images(3, 2, 2));
    let l = bad.len();
    bad.truncate(l / 2);
    write(&dir.join("train-images-idx3-ubyte.gz"), &bad);
    let e = load(
        Dataset::Mnist,
        root.path(),
        "train",
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("gzip"), "{e}");
    // Unknown split.
    let e = load(
        Dataset::Mnist,
        root.path(),
        "validation",
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, DataError::Request(_)), "{e}");
}

fn cifar_record(label_bytes: &[u8], fill: u8) -> Vec<u8> {
    let mut r = label_bytes.to_vec();
    r.extend(std::iter::repeat_n(fill, 3072));
    r
}

#[test]
fn cifar10_and_cifar100_binary() {
    let root = tempfile::tempdir().unwrap();
    let c10 = root.path().join("cifar10/cifar-10-batches-bin");
    for i in 1..=5 {
        write(
            &c10.join(format!("data_batch_{i}.bin")),
            &[cifar_record(&[i as u8], 255), cifar_record(&[0], 0)].concat(),
        );
    }
    write(&c10.join("test_batch.bin"), &cifar_record(&[9], 51));
    write(&c10.join("batches.meta.txt"), b"airplane\nautomobile\n");
    let train = load(
        Dataset::Cifar10,
        root.path(),
        "train",
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(train.len(), 10);
    assert_eq!((train.channels, train.height, train.width), (3, 32, 32));
    assert_eq!(train.labels, vec![1, 0, 2, 0, 3, 0, 4, 0, 5, 0]);
    assert_eq!(train.image(0)[0], 1.0);
    assert_eq!(train.class_names[1], "automobile");
    let test = load(
        Dataset::Cifar10,
        root.path(),
        "test",
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(test.labels, vec![9]);
    assert!((test.pixels[100] - 0.2).abs() < 1e-6);

    let c100 = root.path().join("cifar100/cifar-100-binary");
    write(
        &c100.join("train.bin"),
        &[cifar_record(&[3, 99], 10), cifar_record(&[0, 7], 20)].concat(),
    );
    write(&c100.join("test.bin"), &cifar_record(&[1, 42], 30));
    let train = load(
        Dataset::Cifar100,
        root.path(),
        "train",
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(train.labels, vec![99, 7], "fine labels");
    // Truncated record and out-of-range label.
    write(&c100.join("test.bin"), &cifar_record(&[1, 42], 30)[..3000]);
    let e = load(
        Dataset::Cifar100,
        root.path(),
        "test",
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(e, DataError::Truncated { .. }) && e.to_string().contains("test.bin"),
        "{e}"
    );
    write(&c100.join("test.bin"), &cifar_record(&[1, 100], 30));
    let e = load(
        Dataset::Cifar100,
        root.path(),
        "test",
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("label 100"), "{e}");
    // Missing batch.
    std::fs::remove_file(c10.join("data_batch_3.bin")).unwrap();
    let e = load(
        Dataset::Cifar10,
        root.path(),
        "train",
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("data_batch_3.bin"), "{e}");
}

fn png_bytes(size: u32, stroke: bool) -> Vec<u8> {
    // Black strokes on white, like Omniglot: a black square in the middle when `stroke`.
    let img = image::GrayImage::from_fn(size, size, |x, y| {
        let inside =
            stroke && (x > size / 3 && x < 2 * size / 3 && y > size / 3 && y < 2 * size / 3);
        image::Luma([if inside { 0 } else { 255 }])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn omniglot_members() -> Vec<(String, Vec<u8>)> {
    let mut m = Vec::new();
    for (alphabet, chars) in [("Latin", 2), ("Greek", 1)] {
        for c in 1..=chars {
            for drawer in 1..=3 {
                m.push((
                    format!(
                        "images_background/{alphabet}/character{c:02}/{:04}_{drawer:02}.png",
                        c
                    ),
                    png_bytes(105, true),
                ));
            }
        }
    }
    m
}

#[test]
fn omniglot_zip_and_folder_agree() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("omniglot");
    std::fs::create_dir_all(&dir).unwrap();
    let file = std::fs::File::create(dir.join("images_background.zip")).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default();
    for (name, bytes) in omniglot_members() {
        zip.start_file(name, opts).unwrap();
        zip.write_all(&bytes).unwrap();
    }
    zip.finish().unwrap();
    let from_zip = load(
        Dataset::Omniglot,
        root.path(),
        "background",
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(from_zip.len(), 9);
    assert_eq!(
        (from_zip.channels, from_zip.height, from_zip.width),
        (1, 28, 28)
    );
    // Sorted: Greek (1 character) before Latin (2 characters).
    assert_eq!(from_zip.labels, vec![0, 0, 0, 1, 1, 1, 2, 2, 2]);
    assert_eq!(
        from_zip.class_names,
        vec![
            "Greek/character01",
            "Latin/character01",
            "Latin/character02"
        ]
    );
    // Inverted by default: background dark, stroke bright.
    let img = from_zip.image(0);
    assert!(
        img[0] < 0.01 && img[14 * 28 + 14] > 0.99,
        "{} {}",
        img[0],
        img[14 * 28 + 14]
    );
    let plain = load(
        Dataset::Omniglot,
        root.path(),
        "background",
        &LoadOptions {
            invert_omniglot: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(plain.image(0)[0] > 0.99);

    // Extracted folder gives the same set.
    let dir2 = tempfile::tempdir().unwrap();
    for (name, bytes) in omniglot_members() {
        write(&dir2.path().join("omniglot").join(name), &bytes);
    }
    let from_folder = load(
        Dataset::Omniglot,
        dir2.path(),
        "background",
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(from_folder, from_zip);

    // Errors: missing set, unreadable image, corrupt zip.
    let e = load(
        Dataset::Omniglot,
        root.path(),
        "evaluation",
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("images_evaluation.zip"), "{e}");
    write(
        &dir2
            .path()
            .join("omniglot/images_background/Latin/character01/0001_01.png"),
        b"not a png",
    );
    let e = load(
        Dataset::Omniglot,
        dir2.path(),
        "background",
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(e, DataError::BadImage { .. }) && e.to_string().contains("0001_01.png"),
        "{e}"
    );
    write(&dir.join("images_evaluation.zip"), b"PK\x03\x04 not really");
    let e = load(
        Dataset::Omniglot,
        root.path(),
        "evaluation",
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("zip"), "{e}");
}

#[test]
fn caltech101_jpegs_resized_grey_to_rgb_background_excluded() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("caltech101/101_ObjectCategories");
    let rgb = image::RgbImage::from_fn(60, 40, |_, _| image::Rgb([200, 20, 20]));
    let grey = image::GrayImage::from_fn(50, 50, |_, _| image::Luma([128]));
    for (class, n) in [("accordion", 2), ("airplanes", 1), ("BACKGROUND_Google", 2)] {
        for i in 0..n {
            let p = base.join(class).join(format!("image_{:04}.jpg", i + 1));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if class == "airplanes" {
                grey.save(&p).unwrap()
            } else {
                rgb.save(&p).unwrap()
            }
        }
    }
    let set = load(
        Dataset::Caltech101,
        root.path(),
        "all",
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(set.len(), 3);
    assert_eq!(set.class_names, vec!["accordion", "airplanes"]);
    assert_eq!(set.labels, vec![0, 0, 1]);
    assert_eq!((set.channels, set.height, set.width), (3, 32, 32));
    let red = set.image(0);
    assert!(red[0] > 0.7 && red[1024] < 0.2, "red plane first");
    let g = set.image(2);
    assert!(
        (g[0] - g[1024]).abs() < 0.02 && (g[0] - g[2048]).abs() < 0.02,
        "grey repeated on 3 channels"
    );
    let with_bg = load(
        Dataset::Caltech101,
        root.path(),
        "all",
        &LoadOptions {
            include_caltech_background: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(with_bg.len(), 5);
    write(&base.join("airplanes/image_0002.jpg"), b"\xff\xd8 broken");
    let e = load(
        Dataset::Caltech101,
        root.path(),
        "all",
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("image_0002.jpg"), "{e}");
}

#[test]
fn dataset_names_round_trip() {
    for d in Dataset::ALL {
        assert_eq!(d.name().parse::<Dataset>().unwrap(), d);
    }
    assert!("imagenet".parse::<Dataset>().is_err());
}

#[test]
fn image_set_select_and_keep_classes() {
    let set = ImageSet {
        dataset: "x".into(),
        split: "train".into(),
        channels: 1,
        height: 1,
        width: 2,
        pixels: vec![0.0, 0.1, 1.0, 1.1, 2.0, 2.1],
        labels: vec![5, 7, 5],
        ids: vec![10, 11, 12],
        class_names: vec![],
    };
    let s = set.select(&[2, 0]);
    assert_eq!(s.pixels, vec![2.0, 2.1, 0.0, 0.1]);
    assert_eq!(s.ids, vec![12, 10]);
    let k = set.keep_classes(&[7, 5]);
    assert_eq!(k.labels, vec![1, 0, 1]);
    let k = set.keep_classes(&[7]);
    assert_eq!((k.labels.clone(), k.ids.clone()), (vec![0], vec![11]));
}
