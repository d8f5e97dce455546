"""The `tune` stage: choose the SE reduction ratios; writes ``best_params.json`` for the train stage.

``tune.enabled: false`` passes the configured ``model.reduction_ratios`` through unchanged. The
Bayesian search (keras-tuner) is not built yet, so asking for it is an error rather than a silent no-op.
"""

from __future__ import annotations

from pathlib import Path

from .config import Params
from .errors import ConfigError
from .fileio import write_json


def run_tune(params: Params, out_path: str | Path = "models/best_params.json") -> dict:
    """Write the reduction ratios the train stage will use."""
    if params.tune.enabled:
        raise ConfigError(
            "tune.enabled: the Bayesian search over reduction ratios is not implemented yet; "
            "set tune.enabled: false to train with model.reduction_ratios"
        )
    best = {"source": "params", "model": {"reduction_ratios": params.model.reduction_ratios}}
    write_json(out_path, best)
    return best
