#!/usr/bin/env python3
"""Sums an Nsight Compute CSV (`ncu --csv --metrics gpu__time_duration.sum`) by kernel name.

    python3 gpu/kernels.py NCU.csv [TOP]

Prints the window's kernel count and total GPU time, then the TOP (default 15) kernel names
by time: calls, total microseconds, share of the window, mean microseconds per call.
gpu/profile.sh runs it on the GPU machine; the test `gpu_kernels_summary` (tests/it) runs it
on a CSV in ncu's format.
"""
import csv
import sys
from collections import defaultdict

SCALE_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: gpu/kernels.py NCU.csv [TOP]")
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    with open(sys.argv[1], newline="") as f:
        # ncu prints its own lines (==PROF== ...) before the CSV's header.
        lines = [line for line in f if line.startswith('"')]
    rows = list(csv.DictReader(lines))
    calls = defaultdict(int)
    total = defaultdict(float)
    for row in rows:
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = row.get("Metric Unit", "")
        if unit not in SCALE_US:
            sys.exit(f"{sys.argv[1]}: unknown time unit {unit!r} for {row.get('Kernel Name')!r}")
        value = float(row["Metric Value"].replace(",", ""))
        name = row["Kernel Name"]
        calls[name] += 1
        total[name] += value * SCALE_US[unit]
    n = sum(calls.values())
    if n == 0:
        sys.exit(f"{sys.argv[1]}: no gpu__time_duration.sum rows")
    window = sum(total.values())
    print(f"kernels={n} gpu_us={window:.1f}")
    for name, us in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        short = name if len(name) <= 90 else name[:87] + "..."
        print(f"{calls[name]:6d} {us:12.1f} us {100 * us / window:5.1f}% {us / calls[name]:10.2f} us/call  {short}")


if __name__ == "__main__":
    main()
