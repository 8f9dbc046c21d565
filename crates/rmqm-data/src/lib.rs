//! Dataset loaders for rmqm: IDX (MNIST, Fashion-MNIST, KMNIST), Omniglot, CIFAR-10/100 and
//! Caltech-101, all returned as f32 pixels in [0,1], NCHW, with integer labels and stable image ids
//! (the index of the image in the publisher's source order).
//!
//! Every loader names the file and the fault when it fails: missing file, wrong magic number,
//! truncated data, count mismatch between images and labels, unreadable image.

mod caltech;
mod cifar;
mod dataset;
mod error;
mod idx;
mod image_set;
mod omniglot;
mod resize;
mod split;

pub use caltech::load_caltech101;
pub use cifar::{CifarLayout, load_cifar10, load_cifar100, parse_cifar_records};
pub use dataset::{Dataset, LoadOptions, default_data_dir, load};
pub use error::DataError;
pub use idx::{IdxImages, load_idx_pair, read_idx_images, read_idx_labels};
pub use image_set::{ImageSet, Selection};
pub use omniglot::load_omniglot;
pub use resize::{RESIZE_FILTER, resize_grey, resize_rgb};
pub use split::{SplitIndices, stratified_split};
