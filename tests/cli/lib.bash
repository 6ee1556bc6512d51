# Helpers for the CLI tests: each test script sources this with $1 = tern binary.
set -u
TERN="$1"
FIXTURES="${2:-}"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FAILED=0
PASSED=0

ok() { PASSED=$((PASSED + 1)); }
bad() { echo "FAIL: $*" >&2; FAILED=$((FAILED + 1)); }

# expect_fail "needle" cmd...: exit code exactly 1 (not a crash) and stderr contains needle.
expect_fail() {
  local needle="$1"; shift
  "$@" >"$WORK/out" 2>"$WORK/err"
  local rc=$?
  if [ $rc -ne 1 ]; then bad "expected exit 1, got $rc: $* ($(head -c 300 "$WORK/err"))"; return; fi
  if ! grep -qF -- "$needle" "$WORK/err"; then bad "stderr lacks '$needle': $* -> $(head -c 300 "$WORK/err")"; return; fi
  ok
}

# expect_ok cmd...: exit 0.
expect_ok() {
  if ! "$@" >"$WORK/out" 2>"$WORK/err"; then bad "failed: $* -> $(head -c 300 "$WORK/err")"; return 1; fi
  ok
}

same_file() {
  if cmp -s "$1" "$2"; then ok; else bad "$1 and $2 differ"; fi
}

# check_engine_option OPT VALUE: on the tiny model $WORK/t.gguf, the engine option runs in
# generate, logits and perplexity; prefill and token-by-token decode give the same logits
# file; and that file differs from the default's.
check_engine_option() {
  local opt="$1" val="$2"
  expect_ok "$TERN" generate -m "$WORK/t.gguf" -p "Hello" -n 4 --temp 0 -t 2 "$opt" "$val"
  expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/opt.npy" "$opt" "$val"
  expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/optb.npy" "$opt" "$val" --batch 1 -t 1
  same_file "$WORK/opt.npy" "$WORK/optb.npy"
  expect_ok "$TERN" logits -m "$WORK/t.gguf" --tokens 1,2,3,300,7 -o "$WORK/default.npy"
  cmp -s "$WORK/opt.npy" "$WORK/default.npy" && bad "$opt $val gave the default's logits" || ok
  printf 'The quick brown fox jumps over the lazy dog. %.0s' 1 2 3 4 5 >"$WORK/p.txt"
  expect_ok "$TERN" perplexity -m "$WORK/t.gguf" -f "$WORK/p.txt" -c 16 -t 2 "$opt" "$val"
  grep -q "Final estimate" "$WORK/out" && ok || bad "perplexity $opt $val printed no estimate"
}

finish() {
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}
