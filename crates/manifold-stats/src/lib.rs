//! manifold-stats: D, D_RC, P_RC, RMQM and peer metrics from trajectories, streaming.
