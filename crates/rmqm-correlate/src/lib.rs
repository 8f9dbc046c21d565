//! Correlation statistics, the RMQM ablation, tables and figures.
