//! correlate: RMQM vs downstream performance, ablation, tables and figures.
