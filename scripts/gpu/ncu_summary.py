#!/usr/bin/env python3
"""Per-kernel summary of an `ncu --csv --page raw` run with gpu__time_duration.sum,
dram__bytes_read.sum and launch__grid_size: count, mean time, DRAM read rate, share."""
import collections
import csv
import sys


def main(path):
    rows = list(csv.reader(open(path)))
    h = next(i for i, r in enumerate(rows) if r and r[0] == "ID")
    hdr = rows[h]
    data = [r for r in rows[h + 2:] if len(r) == len(hdr)]
    num = lambda x: float(x.replace(",", "") or 0)
    ki, ti = hdr.index("Kernel Name"), hdr.index("gpu__time_duration.sum")
    bi, gi = hdr.index("dram__bytes_read.sum"), hdr.index("launch__grid_size")
    agg = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for r in data:
        a = agg[(r[ki][:70], r[gi])]
        a[0] += 1
        a[1] += num(r[ti])
        a[2] += num(r[bi])
    tot = sum(a[1] for a in agg.values())
    print(f"{len(data)} kernels, {tot / 1e3:.1f} us in all (ns and bytes from ncu; GB/s = bytes/ns)")
    for (k, g), (n, t, b) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        print(f"{n:5d} x {t / n / 1e3:8.2f} us  grid {g:>7}  {b / max(t, 1):7.1f} GB/s  {100 * t / tot:5.1f}%  {k}")


if __name__ == "__main__":
    main(sys.argv[1])
