#!/usr/bin/env python3
"""The path a user without rmqm takes, for `make bench`'s comparison: read a trajectory file with
pyarrow and compute the reference-convention metrics as the authors' public code does, with pandas
per image (pct_change of the distance series, mean of |.|, an image with any inf/NaN dropped).
Prints the summary and the wall time, to set beside
`manifold-stats FILE --convention reference` on the same file:

    python3 pipelines/bench_pandas.py out/bench/traj-10000x101x512.parquet

Needs pyarrow, numpy and pandas; it is not a dependency of rmqm."""
import argparse
import math
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trajectory")
    args = ap.parse_args()
    t0 = time.perf_counter()
    table = pq.read_table(args.trajectory, columns=["image_id", "step", "embedding"])
    emb = table["embedding"].combine_chunks()
    dim = len(emb[0])
    values = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(table), dim)
    frame = pd.DataFrame(
        {"image_id": table["image_id"].to_numpy(), "step": table["step"].to_numpy()}
    )
    frame["row"] = np.arange(len(frame))
    mean_d0, mean_dp, spike_orig, spike_prev = [], [], [], []
    for _, rows in frame.sort_values(["image_id", "step"]).groupby("image_id", sort=True):
        phi = values[rows["row"].to_numpy()].astype(np.float64)
        phi /= np.linalg.norm(phi, axis=1, keepdims=True)
        d0 = np.linalg.norm(phi - phi[0], axis=1)[1:]
        dp = np.linalg.norm(np.diff(phi, axis=0), axis=1)
        mean_d0.append(d0.mean())
        mean_dp.append(dp.mean())
        for series, out in ((d0, spike_orig), (dp, spike_prev)):
            s = pd.Series(series).pct_change().iloc[1:]
            if np.isfinite(s.to_numpy()).all():
                out.append(s.abs().mean())
    d = float(np.mean(mean_d0)) + float(np.mean(mean_dp))
    d_rc, p_rc = float(np.mean(spike_orig)), float(np.mean(spike_prev))
    rmqm = math.log(1 + d + 1 / d_rc + 1 / p_rc)
    seconds = time.perf_counter() - t0
    print(
        f"pyarrow + pandas: {len(mean_d0)} images, distance term {d:.6f}, D_RC {d_rc:.6f}, "
        f"P_RC {p_rc:.6f}, RMQM {rmqm:.6f} (reference convention) in {seconds:.2f} s"
    )


if __name__ == "__main__":
    main()
