//! Small dense linear algebra shared by metrics and probes: blocked parallel matrix products and symmetric eigenvalues.
