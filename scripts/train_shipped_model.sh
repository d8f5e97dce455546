#!/usr/bin/env bash
# Train the model shipped inside the package, with the project's own stages, from configs/shipped-gtzan-mini.yaml
# (71 GTZAN clips of ../shared/data/gtzan-mini only), and install it into genre_se/pretrained/gtzan-mini.
#   bash scripts/train_shipped_model.sh                       # the shipped recipe
#   WORK=models/try INSTALL=0 bash scripts/train_shipped_model.sh -S model.input_norm=dataset   # a variant
# Extra arguments are -S KEY=VALUE overrides for every stage. About 10-20 minutes on 2 CPU cores.
# GENRE_SE: the command to run (default: this checkout's .venv/bin/genre-se, else genre-se on the PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${GENRE_SE:-}" ]; then
  if [ -x .venv/bin/genre-se ]; then GENRE_SE=.venv/bin/genre-se; else GENRE_SE=genre-se; fi
fi
P=${PARAMS:-configs/shipped-gtzan-mini.yaml}
W=${WORK:-models/shipped}
mkdir -p "$W"
$GENRE_SE -q prepare --params "$P" "$@" --index "$W/index.csv" --errors "$W/prepare_errors.csv"
$GENRE_SE -q features --params "$P" "$@" --index "$W/index.csv" --out "$W/features" --errors "$W/features_errors.csv"
$GENRE_SE -q train --params "$P" "$@" --features "$W/features" --best-params "$W/none.json" --out "$W/bundle" \
  --state "$W/train-state" --live "$W/dvclive"
$GENRE_SE -q evaluate --params "$P" "$@" --features "$W/features" --model "$W/bundle" --reports "$W/reports"
if [ "${INSTALL:-1}" = 1 ]; then
  # into this checkout's package data, whichever installed genre_se the command imports
  $GENRE_SE -q install-model "$W/bundle" --target genre_se/pretrained/gtzan-mini
fi
