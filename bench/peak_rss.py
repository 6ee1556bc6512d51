#!/usr/bin/env python3
"""Peak memory of a command: polls /proc/PID/status every 5 ms until it exits and prints the
largest VmRSS (resident total), RssAnon (heap, caches) and RssFile (mmapped files, the
model included) seen. Usage: bench/peak_rss.py build/tern bench -m MODEL -p 2040 -n 8 -r 1"""
import subprocess
import sys
import time

if len(sys.argv) < 2:
    sys.exit(__doc__)
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
best = {}
while p.poll() is None:
    try:
        with open(f"/proc/{p.pid}/status") as f:
            for line in f:
                key = line.split(":")[0]
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    best[key] = max(best.get(key, 0), int(line.split()[1]))
    except OSError:
        pass
    time.sleep(0.005)
print(" ".join(f"{k} {v / 1024:.1f} MB" for k, v in sorted(best.items())), f"(exit {p.returncode})")
sys.exit(p.returncode)
