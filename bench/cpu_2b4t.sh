#!/usr/bin/env bash
# CPU figures for the 2b-4t shape (random weights, I2_S, F16 head), as recorded in
# docs/PERFORMANCE.md. Usage: bench/cpu_2b4t.sh [threads] [extra tern bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
shift || true
MODEL=${MODEL:-/tmp/tern-2b4t-i2_s.gguf}
[ -f "$MODEL" ] || ./build/tern synth --shape 2b-4t -o "$MODEL" --seed 1
# Streaming read bandwidth of the weights file from the page cache (decode's roofline).
./build/tern bench -m "$MODEL" -p 128,512 -n 128 -r 3 -t "$THREADS" "$@"
