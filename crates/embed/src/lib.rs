//! embed: push images or altered-image streams through an encoder and store embeddings/trajectories.
