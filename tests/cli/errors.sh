#!/usr/bin/env bash
# Bad input: a clear message naming the file or flag, exit code 1, never a crash,
# and nothing half-written on disk.
source "$(dirname "$0")/lib.bash"

expect_ok "$TERN" synth --shape tiny -o "$WORK/t.gguf"

expect_fail "$WORK/none.gguf" "$TERN" info -m "$WORK/none.gguf"
printf 'NOTAGGUF' >"$WORK/magic.bin"
expect_fail "magic.bin" "$TERN" info -m "$WORK/magic.bin"
for cut in 3 20 100 1000 50000; do
  head -c $cut "$WORK/t.gguf" >"$WORK/trunc$cut.gguf"
  expect_fail "trunc$cut.gguf" "$TERN" info -m "$WORK/trunc$cut.gguf"
done
# The same through --no-mmap (the file read into memory, then parsed).
expect_fail "$WORK/none.gguf" "$TERN" logits -m "$WORK/none.gguf" --tokens 1 -o "$WORK/x.npy" --no-mmap
expect_fail "$WORK" "$TERN" logits -m "$WORK" --tokens 1 -o "$WORK/x.npy" --no-mmap
for cut in 20 1000 50000; do
  expect_fail "trunc$cut.gguf" "$TERN" logits -m "$WORK/trunc$cut.gguf" --tokens 1 -o "$WORK/x.npy" --no-mmap
done
# Flip bytes inside the header: any error is fine, a crash is not.
for off in 8 16 24 40 64; do
  cp "$WORK/t.gguf" "$WORK/flip.gguf"
  printf '\xff\xff\xff\xff' | dd of="$WORK/flip.gguf" bs=1 seek=$off conv=notrunc 2>/dev/null
  "$TERN" info -m "$WORK/flip.gguf" >/dev/null 2>&1
  rc=$?
  [ $rc -eq 0 ] || [ $rc -eq 1 ] && ok || bad "byte flip at $off exited $rc"
done

expect_fail "outside the vocabulary" "$TERN" logits -m "$WORK/t.gguf" --tokens 1,99999 -o "$WORK/x.npy"
expect_fail "--tokens" "$TERN" logits -m "$WORK/t.gguf" --tokens 1,abc -o "$WORK/x.npy"
long=$(seq -s, 1 5000)
expect_fail "context length" "$TERN" logits -m "$WORK/t.gguf" --tokens "$long" -o "$WORK/x.npy"
[ ! -e "$WORK/x.npy" ] && ok || bad "a failed logits run left $WORK/x.npy"
expect_fail "unknown output type" "$TERN" convert "$WORK/t.gguf" "$WORK/o.gguf" --type q4_0
[ ! -e "$WORK/o.gguf" ] && ok || bad "a failed convert left o.gguf"
expect_fail "overwrite the input" "$TERN" convert "$WORK/t.gguf" "$WORK/t.gguf"
expect_fail "--shape" "$TERN" synth --shape 1,2 -o "$WORK/s.gguf"
expect_fail "multiple of 256" "$TERN" synth --shape 128,384,1,2,1,300 -o "$WORK/s.gguf" --type tq2_0
expect_fail "activation" "$TERN" info -m "$WORK/t.gguf" --activation swiglu
expect_fail "backend" "$TERN" logits -m "$WORK/t.gguf" --tokens 1 -o "$WORK/x.npy" --backend tpu
expect_fail "invalid UTF-8" "$TERN" logits -m "$WORK/t.gguf" -p $'\xff\xfe' -o "$WORK/x.npy"
expect_fail "required" "$TERN" logits --tokens 1 -o "$WORK/x.npy"
ls "$WORK" | grep -q '\.tmp\.' && bad "temporary files left behind" || ok
finish
