#!/usr/bin/env bash
# Rebuild the bundled model (deepmir_tasks/models/deepmir_default.*) with the recipe that produced it:
# simulate and preprocess the cohorts, train, mine the model's own mistakes on the training cohort,
# fine-tune on them, fine-tune with small-microbleed labels grown, calibrate the lesion rules and
# measure on the held-out test cohort. Hours of CPU; every stage resumes where it stopped.
#   bash scripts/rebuild_bundled_model.sh [WORK_DIR] [OUT.safetensors]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-work_tmp/bundled}
out=${2:-deepmir_tasks/models/deepmir_default.safetensors}
py=${PYTHON:-.venv/bin/python}
run() { echo "+ bundled $*" >&2; "$py" -m pipelines.bundled_model --work "$work" --out "$out" --threads 2 "$@"; }

run --stage data                                   # 16 training, 9 calibration, 10 test subjects
run --stage train --resume --steps 6000            # lesion-, vein- and calcification-centred patches
run --stage mine                                   # false positives and weak lesions on the training cohort
run --stage train --resume --steps 14000 --stop-at 9500 \
    --lesion-fraction 0.45 --mimic-fraction 0.25 --hard-fraction 0.15
run --stage train --resume --steps 18000 --grow-small-cmb 1
run --stage evaluate                               # lesion rules on the calibration cohort, figures on the test cohort
# a second held-out test cohort, scored with the rules as calibrated; figures pooled over both
run --work "$work-test2" --stage data --n-train 0 --n-val 0 --n-test 10 --test-seed 920000
run --work "$work-test2" --stage test --n-test 10 --test-seed 920000
