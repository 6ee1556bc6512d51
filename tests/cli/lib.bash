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

finish() {
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}
