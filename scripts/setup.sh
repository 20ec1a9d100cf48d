#!/usr/bin/env bash
# Create .venv and install DEEPMIR with its test dependencies from the lock (idempotent).
# Every package comes pinned with its hashes from requirements/lock.txt (refresh: bash scripts/lock.sh).
# DEEPMIR_TORCH_WHEELS: a folder or page of wheels holding torch's CPU build (default /opt/wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# The installer, itself hash-checked.
.venv/bin/python -m pip install -q --require-hashes --no-deps -r requirements/uv.txt
links=()
wheels="${DEEPMIR_TORCH_WHEELS:-/opt/wheels}"
if [ -e "$wheels" ] || [[ "$wheels" == http* ]]; then
  links=(--find-links "$wheels")
fi
# sync: exactly the lock, nothing more, nothing less (a stale package from an older lock is removed).
.venv/bin/python -m uv pip sync --quiet --python .venv/bin/python --require-hashes "${links[@]}" \
  requirements/lock.txt
.venv/bin/python -m uv pip install --quiet --python .venv/bin/python --no-deps --no-build-isolation -e .
