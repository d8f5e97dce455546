#!/usr/bin/env bash
# The SE study on gtzan-mini, end to end and resumable: run it again after an interruption and it goes on
# where it stopped (finished rows of the CSV are kept; a cut-short fold resumes after its last epoch).
# Results: study/results/gtzan_mini.csv (one row per variant x seed x fold) and study/results/gtzan_mini.md.
# Costs hours on 2 CPU cores; `nice` keeps it out of the way. Extra arguments go to the `run` step,
# e.g. `bash study/run_gtzan_mini.sh --variants svm,se_r16` to run a subset.
# PYTHON=... picks the interpreter (default: the project's .venv, else python3). SKIP_TUNE=1 keeps the
# study/work/gtzan/best_params.json that is there (se_tuned's r) instead of running the tune step, e.g. to rerun
# se_tuned at the committed rows' r (study/README.md, "Reproduce and finish the study").
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
WORK=study/work/gtzan            # index, feature store, tuning, training state (git-ignored)
STUDY=study/gtzan_mini.yaml

if [[ ${SKIP_TUNE:-0} == 1 && ! -f $WORK/best_params.json ]]; then
  echo "run_gtzan_mini.sh: SKIP_TUNE=1 but $WORK/best_params.json is missing (write it, or run the tune step)" >&2
  exit 2
fi
nice -n 15 "$PY" -m study.compare prepare --study "$STUDY" --work "$WORK"
if [[ ${SKIP_TUNE:-0} == 1 ]]; then
  echo "run_gtzan_mini.sh: SKIP_TUNE=1, se_tuned takes its r from $WORK/best_params.json as it is" >&2
else
  nice -n 15 "$PY" -m study.compare tune --study "$STUDY" --work "$WORK"
fi
nice -n 15 "$PY" -m study.compare run --study "$STUDY" --work "$WORK" \
  --out study/results/gtzan_mini.csv --summary study/results/gtzan_mini.md "$@"
