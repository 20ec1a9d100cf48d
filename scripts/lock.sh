#!/usr/bin/env bash
# Refresh the locks: every transitive package pinned with its hashes (uv pip compile).
#   bash scripts/lock.sh            re-resolve within pyproject.toml's ranges (newest releases)
#   bash scripts/lock.sh -P NAME    upgrade one package only
# Then run `bash scripts/test.sh` before committing requirements/.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
if ! command -v uv >/dev/null || [ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  python3 -m pip install -q "uv==$UV_VERSION"
fi
# The installer itself, pinned with the hashes of every platform's wheel.
echo "uv==$UV_VERSION" | uv pip compile - --quiet --generate-hashes --no-header \
  --output-file requirements/uv.txt
# The environment: the CPU build of torch (no CUDA libraries), Python 3.11 on x86-64 Linux.
# DEEPMIR_TORCH_WHEELS: a folder or page of wheels holding torch's CPU build (pip's find-links).
uv pip compile pyproject.toml requirements/build.in --extra test --quiet --generate-hashes \
  --constraint requirements/constraints.txt \
  --find-links "${DEEPMIR_TORCH_WHEELS:-/opt/wheels}" \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --custom-compile-command "bash scripts/lock.sh" \
  --output-file requirements/lock.txt "$@"
