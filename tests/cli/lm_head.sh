#!/usr/bin/env bash
# --lm-head: int8 runs end to end in every command that takes it, is deterministic
# across prefill and decode, differs from the exact head, and bad values are refused.
source "$(dirname "$0")/lib.bash"

expect_ok "$TERN" synth --shape tiny -o "$WORK/t.gguf" --seed 5
expect_ok "$TERN" generate -m "$WORK/t.gguf" -p "Hello" -n 4 --temp 0 -t 2 --lm-head f16
# The int8 head is per row: prefill and token-by-token decode give the same file.
check_engine_option --lm-head int8

expect_fail "--lm-head" "$TERN" generate -m "$WORK/t.gguf" -p "Hello" -n 2 --lm-head bogus
expect_fail "--lm-head" "$TERN" logits -m "$WORK/t.gguf" --tokens 1 -o "$WORK/x.npy" --lm-head int4
expect_fail "--lm-head" "$TERN" perplexity -m "$WORK/t.gguf" -f "$WORK/p.txt" --lm-head ""
finish
