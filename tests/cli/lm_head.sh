#!/usr/bin/env bash
# --lm-head: int8 runs end to end in every command that takes it, is deterministic
# across prefill and decode, differs from the exact head, and bad values are refused.
source "$(dirname "$0")/lib.bash"

expect_ok "$TERN" synth --shape tiny -o "$WORK/t.gguf" --seed 5

expect_ok "$TERN" generate -m "$WORK/t.gguf" -p "Hello" -n 4 --temp 0 -t 2 --lm-head int8
expect_ok "$TERN" generate -m "$WORK/t.gguf" -p "Hello" -n 4 --temp 0 -t 2 --lm-head f16

# The int8 head is per row: prefill and token-by-token decode give the same file.
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/i8.npy" --lm-head int8
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/i8b.npy" --lm-head int8 --batch 1 -t 1
same_file "$WORK/i8.npy" "$WORK/i8b.npy"
expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/f16.npy"
cmp -s "$WORK/i8.npy" "$WORK/f16.npy" && bad "--lm-head int8 gave the exact head's logits" || ok

printf 'The quick brown fox jumps over the lazy dog. %.0s' 1 2 3 4 5 >"$WORK/p.txt"
expect_ok "$TERN" perplexity -m "$WORK/t.gguf" -f "$WORK/p.txt" -c 16 -t 2 --lm-head int8
grep -q "Final estimate" "$WORK/out" && ok || bad "perplexity --lm-head int8 printed no estimate"

expect_fail "--lm-head" "$TERN" generate -m "$WORK/t.gguf" -p "Hello" -n 2 --lm-head bogus
expect_fail "--lm-head" "$TERN" logits -m "$WORK/t.gguf" --tokens 1 -o "$WORK/x.npy" --lm-head int4
expect_fail "--lm-head" "$TERN" perplexity -m "$WORK/t.gguf" -f "$WORK/p.txt" --lm-head ""
finish
