//! train-encoder: train an encoder with one of the five methods and save it as safetensors.
