//! alter: sequentially stronger alterations (white noise, PGD) of test images, as a Parquet/IPC stream.
