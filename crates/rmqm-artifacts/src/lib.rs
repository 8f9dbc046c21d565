//! The Parquet / Arrow IPC artifact format: schemas, provenance metadata, atomic streaming writers and checked readers.
