#!/usr/bin/env python3
"""Sums the time of each grid stage from a make log (the tools' one-line summaries).

Usage: python3 pipelines/stage_times.py grid.log [wall_seconds]

Each tool ends with a line "tool: ... in N s". A piped walk (embed | manifold-stats for noise and
augment, alter | embed | manifold-stats for PGD, or alter --emit embeddings | manifold-stats) is
counted once, by manifold-stats' time (the tools of a pipe run
alongside); the embeddings of the
downstream sets by embed's time; the rest by their own tool. Prints a Markdown table of seconds and
shares; with wall_seconds, the share of the wall time the summaries account for.
"""
import re
import sys

def stage(line):
    tool = line.split(":", 1)[0]
    if tool == "train-encoder":
        return "train-encoder (7 epochs)" if " for 0 epochs" not in line else "random-init baselines"
    if tool == "manifold-stats":
        m = re.search(r"wrote \S+-(noise|pgd-reference|pgd|augment)\.parquet", line)
        return f"walk: {m.group(1)} (piped, manifold-stats' time)" if m else "manifold-stats (other)"
    if tool == "embed":
        # Piped walks are counted by manifold-stats; embeddings of a dataset split write a file.
        if " rows of - " in line or "altered/" in line:
            return None
        return "embed downstream sets"
    if tool == "alter":
        return "alter: shared altered images (augment; noise without NOISE_EMIT)" if "wrote -" not in line else None
    return tool

def main():
    totals = {}
    for line in open(sys.argv[1], errors="replace"):
        m = re.search(r" in ([0-9.]+) s(, peak memory|$)", line.strip())
        if not m or ":" not in line or line.startswith(("/", "make", " ")):
            continue
        name = stage(line)
        if name:
            totals[name] = totals.get(name, 0.0) + float(m.group(1))
    total = sum(totals.values())
    print("| stage | seconds | share |\n|---|---|---|")
    for name, secs in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {secs:,.0f} | {100 * secs / total:.1f}% |")
    print(f"| all summaries | {total:,.0f} | 100% |")
    if len(sys.argv) > 2:
        wall = float(sys.argv[2])
        print(f"\nWall time {wall:,.0f} s; the summaries account for {100 * total / wall:.1f}% of it.")

if __name__ == "__main__":
    main()
