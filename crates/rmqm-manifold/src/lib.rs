//! Manifold statistics: D, D_RC, P_RC, RMQM in both conventions, RankMe and alpha-ReQ, streaming.
