#!/usr/bin/env bash
# No-download demo: installs dependencies, builds, writes a small random-weight BitNet
# model and generates text with it (random weights: expect gibberish, at real speed).
# Pass a real model with MODEL=path (a GGUF or HF directory) for real text.
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
./build/tern generate -m "$MODEL" -p "The capital of France is" -n 32 --stats
