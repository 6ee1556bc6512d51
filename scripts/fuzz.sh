#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for
# FUZZ_SECONDS (default 60) from the seed corpus in tests/fuzz_corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${FUZZ_SECONDS:-60}
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTERN_FUZZ=ON -DTERN_CUDA=OFF \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target fuzz_gguf fuzz_safetensors
for f in gguf safetensors; do
  corpus=$(mktemp -d)
  cp tests/fuzz_corpus/$f/* "$corpus"/
  echo "fuzzing $f for ${SECS}s"
  ./build-fuzz/fuzz_$f -max_total_time="$SECS" -rss_limit_mb=2048 -max_len=65536 "$corpus" 2>&1 | tail -n 3
  rm -rf "$corpus"
done
