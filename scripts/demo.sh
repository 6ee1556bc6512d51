#!/usr/bin/env bash
# No-download demo: installs dependencies, builds, writes a small random-weight BitNet
# model and runs it (model summary, logits, speed). Pass a real model with MODEL=path.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
MODEL=${MODEL:-}
if [ -z "$MODEL" ]; then
  MODEL=/tmp/tern-demo.gguf
  ./build/tern synth --shape 1024,2816,8,16,4,32000 -o "$MODEL" --seed 1
fi
./build/tern info -m "$MODEL"
./build/tern logits -m "$MODEL" -p "The capital of France is" -o /tmp/tern-demo-logits.npy
./build/tern bench -m "$MODEL" -p 64 -n 16 -r 2
