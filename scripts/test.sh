#!/usr/bin/env bash
# Set up, start what the tests need (headless Chromium, a one-node SLURM cluster), run the suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f scripts/install_chromium.sh ]; then
  bash scripts/install_chromium.sh || echo "warning: Chromium could not be installed; browser tests will say so"
fi
if [ -f scripts/slurm/start_cluster.sh ]; then
  bash scripts/slurm/start_cluster.sh || echo "warning: the SLURM cluster did not start; slurm tests will say so"
fi
exec .venv/bin/python -m pytest "$@"
