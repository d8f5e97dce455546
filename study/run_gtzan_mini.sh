#!/usr/bin/env bash
# The SE study on gtzan-mini, end to end and resumable: run it again after an interruption and it goes on
# where it stopped (finished rows of the CSV are kept; a cut-short fold resumes after its last epoch).
# Results: study/results/gtzan_mini.csv (one row per variant x seed x fold) and study/results/gtzan_mini.md.
# Costs hours on 2 CPU cores; `nice` keeps it out of the way. Extra arguments go to the `run` step,
# e.g. `bash study/run_gtzan_mini.sh --variants svm,se_r16` to run a subset.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORK=study/work/gtzan            # index, feature store, tuning, training state (git-ignored)
STUDY=study/gtzan_mini.yaml

nice -n 15 "$PY" -m study.compare prepare --study "$STUDY" --work "$WORK"
nice -n 15 "$PY" -m study.compare tune --study "$STUDY" --work "$WORK"
nice -n 15 "$PY" -m study.compare run --study "$STUDY" --work "$WORK" \
  --out study/results/gtzan_mini.csv --summary study/results/gtzan_mini.md "$@"
