//! Alterations: seeded counter-based white noise and PGD walks.
