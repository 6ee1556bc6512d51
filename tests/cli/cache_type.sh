#!/usr/bin/env bash
# --cache-type f16 (CPU KV cache as F16): runs in every command that takes it, prefill and
# token-by-token decode give the same logits file, it differs from the F32 cache, and bad
# values are refused.
source "$(dirname "$0")/lib.bash"

expect_ok "$TERN" synth --shape tiny -o "$WORK/t.gguf" --seed 5

expect_ok "$TERN" generate -m "$WORK/t.gguf" -p "Hello" -n 4 --temp 0 -t 2 --cache-type f16
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/h.npy" --cache-type f16
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/hb.npy" --cache-type f16 --batch 1 -t 1
same_file "$WORK/h.npy" "$WORK/hb.npy"
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/f.npy"
cmp -s "$WORK/h.npy" "$WORK/f.npy" && bad "--cache-type f16 gave the F32 cache's logits" || ok

printf 'The quick brown fox jumps over the lazy dog. %.0s' 1 2 3 4 5 >"$WORK/p.txt"
expect_ok "$TERN" perplexity -m "$WORK/t.gguf" -f "$WORK/p.txt" -c 16 -t 2 --cache-type f16
grep -q "Final estimate" "$WORK/out" && ok || bad "perplexity --cache-type f16 printed no estimate"
expect_ok "$TERN" bench -m "$WORK/t.gguf" -p 8 -n 4 -r 1 -t 2 --cache-type f16

expect_fail "--cache-type" "$TERN" generate -m "$WORK/t.gguf" -p "Hello" -n 2 --cache-type q8_0
expect_fail "--cache-type" "$TERN" logits -m "$WORK/t.gguf" --tokens 1 -o "$WORK/x.npy" --cache-type ""
finish
