#!/usr/bin/env bash
# tokenize / detokenize / generate / chat / perplexity end to end on the tiny fixture
# model (its own byte-level BPE tokenizer) and on synthetic models.
source "$(dirname "$0")/lib.bash"
M="$FIXTURES/tiny/hf_packed"
G="$FIXTURES/tiny/model-i2_s.gguf"

# tokenize / detokenize (ids from HF tokenizers, tests/fixtures/tiny/tokenizer_samples.json).
printf 'Hello world' | "$TERN" tokenize -m "$M" >"$WORK/ids" && ok || bad "tokenize failed"
[ "$(cat "$WORK/ids")" = "72 484 111 315 302" ] && ok || bad "tokenize gave $(cat "$WORK/ids")"
printf 'Hello world' | "$TERN" tokenize -m "$G" --add-bos >"$WORK/ids" && ok || bad "tokenize (gguf) failed"
[ "$(cat "$WORK/ids")" = "509 72 484 111 315 302" ] && ok || bad "tokenize --add-bos gave $(cat "$WORK/ids")"
printf 'Hello world' | "$TERN" tokenize -m "$M/tokenizer.json" >"$WORK/ids" && ok || bad "tokenize (tokenizer.json) failed"
printf '72, 484 111\n315 302' | "$TERN" detokenize -m "$M" >"$WORK/txt" && ok || bad "detokenize failed"
[ "$(cat "$WORK/txt")" = "Hello world" ] && ok || bad "detokenize gave '$(cat "$WORK/txt")'"
printf 'naïve café 🙂👍🏽 日本語\r\n  tabs\t\tend <|eot_id|>' >"$WORK/u.txt"
"$TERN" tokenize -m "$M" <"$WORK/u.txt" | "$TERN" detokenize -m "$M" >"$WORK/u2.txt"
same_file "$WORK/u.txt" "$WORK/u2.txt"
printf '<|eot_id|>' | "$TERN" tokenize -m "$M" >"$WORK/ids"
[ "$(cat "$WORK/ids")" = "511" ] && ok || bad "special token not matched: $(cat "$WORK/ids")"
printf '<|eot_id|>' | "$TERN" tokenize -m "$M" --no-special >"$WORK/ids"
[ "$(wc -w <"$WORK/ids")" -gt 1 ] && ok || bad "--no-special still matched the special token"
printf 'bad \xff\xfe utf8' >"$WORK/bad.txt"
expect_fail "invalid UTF-8" "$TERN" tokenize -m "$M" <"$WORK/bad.txt"
expect_fail "outside the vocabulary" sh -c "echo '1 2 99999' | '$TERN' detokenize -m '$M'"
expect_fail "not a token id" sh -c "echo '1 two 3' | '$TERN' detokenize -m '$M'"

# generate: greedy is deterministic, seeded sampling is reproducible, --stats lines.
expect_ok "$TERN" generate -m "$M" -p "Once upon a time" -n 12 --temp 0 --stats
grep -q "^Performance: .* TPS (.* ms/token), prefill .* tok/s (.* tokens)" "$WORK/out" && ok || bad "no Performance line: $(cat "$WORK/out")"
grep -q "^Model: BitNet b1.58 .*(2 layers, 256 dim" "$WORK/out" && ok || bad "no Model line"
grep -q "^Load: model [0-9.]* s, engine [0-9.]* s; first token [0-9.]* s after start" "$WORK/out" && ok || bad "no Load line"
tail -1 "$WORK/out" | grep -q "^Model: " && ok || bad "--stats must end with the Model line"
"$TERN" generate -m "$G" -p "Once upon a time" -n 16 --temp 0.9 --seed 42 >"$WORK/s1" 2>/dev/null
"$TERN" generate -m "$G" -p "Once upon a time" -n 16 --temp 0.9 --seed 42 >"$WORK/s2" 2>/dev/null
same_file "$WORK/s1" "$WORK/s2"
expect_ok "$TERN" generate -m "$M" -p "Hi" --chat --system "Be brief." -n 8 --top-k 5 --top-p 0.9 --min-p 0.1 --repeat-penalty 1.1
expect_ok "$TERN" generate -m "$M" -p "Once upon a time" -n 40 --temp 0 --stop "e"
grep -q "e" "$WORK/out" && bad "stop string was printed" || ok
expect_fail "does not fit" "$TERN" generate -m "$M" -p "$(printf 'word %.0s' $(seq 1 100))" -c 16
expect_fail "--top-p" "$TERN" generate -m "$M" -p "x" --top-p 1.5
expect_fail "--system needs --chat" "$TERN" generate -m "$M" -p "x" --system "s"

# chat: history, /reset, /exit, and a context that fills without crashing.
printf 'hello\nhow are you?\n/reset\nhi again\n/exit\n' | "$TERN" chat -m "$M" -n 6 --temp 0 >"$WORK/chat" 2>"$WORK/chat.err" && ok || bad "chat failed: $(cat "$WORK/chat.err")"
grep -q "conversation cleared" "$WORK/chat.err" && ok || bad "chat /reset not acknowledged"
long=$(printf 'word %.0s' $(seq 1 60))
printf 'one two three\n%s\nfour five six\nseven eight\nnine ten\n' "$long" | "$TERN" chat -m "$M" -c 48 -n 8 --temp 0 >"$WORK/chat" 2>"$WORK/chat.err" && ok || bad "chat with a small context crashed or failed: $(tail -3 "$WORK/chat.err")"
grep -q "too long" "$WORK/chat.err" && ok || bad "chat did not report the over-long message"

# perplexity, both modes.
head -c 3000 "$FIXTURES/text/ppl.txt" >"$WORK/ppl.txt" 2>/dev/null || printf 'The quick brown fox jumps over the lazy dog. %.0s' $(seq 1 60) >"$WORK/ppl.txt"
expect_ok "$TERN" perplexity -m "$M" -f "$WORK/ppl.txt" --ctx 64
grep -q "Final estimate: PPL = " "$WORK/out" && ok || bad "no Final estimate line"
expect_ok "$TERN" perplexity -m "$M" -f "$WORK/ppl.txt" --ctx 64 --stride 32
expect_fail "needs at least" "$TERN" perplexity -m "$M" -f "$WORK/ppl.txt" --ctx 4096
finish
