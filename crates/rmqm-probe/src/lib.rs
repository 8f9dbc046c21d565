//! Downstream probes on frozen embeddings: exact blocked k-NN and a deterministic linear probe.
