#!/usr/bin/env bash
# --cache-type f16 (CPU KV cache as F16): runs in every command that takes it, prefill and
# token-by-token decode give the same logits file, it differs from the F32 cache, and bad
# values are refused.
source "$(dirname "$0")/lib.bash"

expect_ok "$TERN" synth --shape tiny -o "$WORK/t.gguf" --seed 5
check_engine_option --cache-type f16
expect_ok "$TERN" bench -m "$WORK/t.gguf" -p 8 -n 4 -r 1 -t 2 --cache-type f16

expect_fail "--cache-type" "$TERN" generate -m "$WORK/t.gguf" -p "Hello" -n 2 --cache-type q8_0
expect_fail "--cache-type" "$TERN" logits -m "$WORK/t.gguf" --tokens 1 -o "$WORK/x.npy" --cache-type ""
finish
