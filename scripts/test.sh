#!/usr/bin/env bash
# The whole test suite: install deps, build, run every unit and CLI test (ctest),
# then fuzz the GGUF and safetensors readers briefly. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/fetch-tokenizer.sh
bash scripts/build.sh
(cd build && ctest --output-on-failure -j "$(nproc)")
FUZZ_SECONDS=${FUZZ_SECONDS:-30} bash scripts/fuzz.sh
