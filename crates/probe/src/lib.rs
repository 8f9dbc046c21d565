//! probe: k-NN and linear-probe accuracy on frozen embeddings.
