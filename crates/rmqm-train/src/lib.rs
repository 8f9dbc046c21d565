//! Training: the five methods' losses, augmentations, optimizers (Nesterov SGD, Adam) and the training loop.
