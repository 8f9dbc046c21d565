//! Plumbing every rmqm tool needs: input/output config, provenance, progress bars, summaries, error reporting.
