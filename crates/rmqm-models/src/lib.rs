//! Encoders for rmqm on candle: LeNet-5 (MNIST-like 28x28) and ResNet-18 (CIFAR 32x32), with
//! fast CPU custom ops, seeded initialisation, and safetensors save/load with the model's config
//! in the file's metadata.

pub mod config;
mod encoder;
pub mod kernels;
pub mod layers;
pub mod ops;
pub mod params;
pub mod testing;

pub use config::{Arch, Method, ModelConfig, OptimizerKind, dataset_normalisation};
pub use encoder::{Encoder, ModelFileError};
pub use params::ParamStore;

use candle_core::Device;

/// The device every tool computes on. Kept in one place so that a CUDA build can be added later.
pub fn device() -> Device {
    Device::Cpu
}
