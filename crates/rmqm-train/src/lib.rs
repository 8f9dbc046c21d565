//! Training for rmqm: the five methods' losses (cross-entropy, triplet-entropy, semihard
//! triplet-supervised, triplet-ss, NT-Xent), seeded augmentations, Nesterov SGD and Adam as PyTorch
//! defines them, and the training loop with gradient accumulation.

pub mod augment;
pub mod losses;
pub mod optim;
pub mod semihard;
mod trainer;
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx512f",
    target_feature = "avx512vl"
))]
mod warp_lanes;

pub use augment::{Augmentation, augment_batch, augment_image};
pub use losses::{
    BatchEmbeddings, BatchInput, batch_all_triplet, cross_entropy, embedding_loss, method_loss,
    ntxent, semihard_triplet, semihard_triplets,
};
pub use optim::{Adam, NesterovSgd, Optimizer};
pub use trainer::{StepLog, TrainOptions, batch_tensor, train};
