#!/usr/bin/env python3
"""Per-kernel table from an `ncu --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum,
dram__bytes_write.sum` log: total and mean time per kernel name, and the DRAM bandwidth it
reached (bytes moved / time), slowest kernels first. Used by scripts/gpu-check train
(GPU_TRAIN_NCU=1) to see which training kernels run far from the memory roofline."""
import collections
import csv
import re
import signal
import sys

UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3, "second": 1.0,
         "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def main(path):
    try:
        with open(path, errors="replace") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        sys.exit(f"ncu_kernel_table.py: cannot read {path}: {e.strerror}")
    start = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
    if start is None:
        print(f"{path}: no ncu rows")
        return
    hdr, rows = rows[start], rows[start:]
    ki, ni, vi, ui, ii = (hdr.index(h) for h in ("Kernel Name", "Metric Name", "Metric Value", "Metric Unit", "ID"))
    per_launch = collections.defaultdict(dict)
    names = {}
    for r in rows[1:]:
        if len(r) != len(hdr):
            continue
        name = re.sub(r"\(.*", "", r[ki]).split("::")[-1]
        m = re.search(r"<(.*?)>", r[ki])
        names[r[ii]] = name + (f"<{m.group(1)}>" if m else "")
        per_launch[r[ii]][r[ni]] = float(r[vi].replace(",", "")) * UNITS.get(r[ui], 1.0)
    t = collections.defaultdict(float)
    b = collections.defaultdict(float)
    n = collections.Counter()
    for launch, metrics in per_launch.items():
        k = names[launch]
        t[k] += metrics.get("gpu__time_duration.sum", 0.0)
        b[k] += metrics.get("dram__bytes_read.sum", 0.0) + metrics.get("dram__bytes_write.sum", 0.0)
        n[k] += 1
    total = sum(t.values())
    print(f"== {path.split('/')[-1]}: {sum(n.values())} launches, {total * 1e3:.2f} ms")
    for k in sorted(t, key=lambda k: -t[k]):
        bw = b[k] / t[k] / 1e12 if t[k] > 0 else 0.0
        print(f"  {t[k] * 1e3:8.3f} ms {n[k]:5d}x {t[k] / n[k] * 1e6:9.1f} us avg {bw:5.2f} TB/s  {k[:90]}")


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet under `| head`
    if len(sys.argv) != 2:
        sys.exit("usage: ncu_kernel_table.py NCU_CSV")
    main(sys.argv[1])
