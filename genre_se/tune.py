"""The `tune` stage: Bayesian optimisation (keras-tuner) of the SE reduction ratios.

The reference paper tuned one reduction ratio r over [8, 32] (and kept 31.43). One r squeezes a 32-channel
block to a single hidden unit while a 256-channel block keeps eight, so the search can also choose one r per
block (``tune.mode: per_block``), and optionally the learning rate and the dropout rate.

* :class:`SEHyperModel` is a keras-tuner ``HyperModel`` over the project's :func:`~genre_se.model.build_model`;
  its ``fit`` trains with early stopping on the objective, computed each epoch on the validation clips
  (``val_clip_accuracy``, mean of segment probabilities per clip; not a Keras metric) or ``val_loss``.
* :class:`SETuner` is keras-tuner's ``BayesianOptimization``; every trial uses the same seeds (common random
  numbers, so trials differ by their hyperparameters only, whichever machine runs them).
* :func:`run_tune` writes ``best_params.json`` for the train stage, a trial table (CSV) and a PNG of the
  objective against r. ``tune.enabled: false`` passes ``model.reduction_ratios`` through.
* ``tune.references`` (default r = 16 and the plain CNN) are trained after the search under exactly the
  trials' protocol (split, seeds, epochs, early stopping), so the table says what the search bought.

The search lives in keras-tuner's project directory ``<project_root>/<search key>/``, outside the DVC outputs:
killing the stage and running it again continues the same search (an unfinished trial is run again), and
changing the search space, the data or anything else a trial's result depends on gives a new key, hence a
new search. ``tune.max_trials`` is not part of the key, so raising it extends a finished search.

Distributed tuning uses keras-tuner's own chief/worker mode (``KERASTUNER_TUNER_ID``, ``KERASTUNER_ORACLE_IP``,
``KERASTUNER_ORACLE_PORT``; see ``docs/tuning.md``): the chief serves the oracle and writes the outputs, the
workers run trials and write nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras_tuner
import numpy as np
import pandas as pd

from .config import FeatureConfig, ModelConfig, Params, TrainConfig, TuneConfig, from_dict
from .errors import ConfigError, DatasetError, GenreSEError, ModelError
from .feature_store import FeatureStore
from .fileio import atomic_path, write_csv, write_json, write_text
from .interrupts import interrupts_noted, raise_if_interrupted

#: objective name -> (key of :func:`genre_se.train.clip_scores`, direction)
OBJECTIVES = {"val_clip_accuracy": ("clip_accuracy", "max"), "val_loss": ("loss", "min")}
#: metrics every trial reports besides the objective (all end up in the trial table)
TRIAL_METRICS = ("val_clip_accuracy", "val_loss", "epochs", "best_epoch", "seconds")
#: The columns of the references table (:func:`run_references`, ``reports/tune_references.csv``)
REFERENCE_COLUMNS = ("reference", "se_hidden", *TRIAL_METRICS, "params")
#: execution k of a trial trains with seed ``params.seed + k * EXECUTION_SEED_STRIDE``
EXECUTION_SEED_STRIDE = 1000
CHIEF_POLL_SECONDS = 0.2
#: train.* settings a trial's training reads besides batch_size, spec_augment, mixup_alpha (see search_key)
TRIAL_TRAIN_KEYS = ("label_smoothing", "gain_db", "eq_tilt_db", "compression", "noise_snr_db",
                    "pitch_shift_semitones", "time_stretch", "lowpass_hz", "lowpass_slope_db", "waveform_augment")
#: every train.* setting a trial trains with (:func:`trial_train_config`); the train stage's own (epochs, patience,
#: monitor, lr_schedule, fit_all, calibrate) are not among them. dvc.yaml's tune stage lists exactly these, so
#: changing only the train stage's settings does not rerun the search
TRIAL_TRAIN_FIELDS = ("batch_size", "learning_rate", "spec_augment", "mixup_alpha", "deterministic",
                      *TRIAL_TRAIN_KEYS)


# --------------------------------------------------------------------------------------------------
# The search space


@dataclass(frozen=True)
class SearchSpace:
    """What a trial chooses (keras-tuner hyperparameter names and ranges) and how it becomes a model.

    Names: ``r`` (shared) or ``r_block1`` ... ``r_blockN`` (per block), then ``learning_rate`` and
    ``dropout`` when those are searched.
    """

    ratio_names: tuple
    ratio_bounds: tuple
    r_type: str = "float"
    learning_rate: tuple | None = None
    dropout: tuple | None = None

    @classmethod
    def from_params(cls, params: Params) -> "SearchSpace":
        """The space ``params.tune`` describes, checked against ``params.model`` (one bound per block)."""
        tune, n_blocks = params.tune, params.model.n_blocks
        if not params.model.se:
            raise ConfigError("tune.enabled: model.se is false, so there are no reduction ratios to tune")
        lows, highs = tune.r_bounds("tune")
        if tune.mode == "shared":
            names = ("r",)
        else:
            for key, given in (("tune.r_min", tune.r_min), ("tune.r_max", tune.r_max)):
                if isinstance(given, (list, tuple)) and len(given) != n_blocks:
                    raise ConfigError(
                        f"{key}: has {len(given)} entries but model.filters has {n_blocks} blocks "
                        "(give a scalar or one bound per block)"
                    )
            if len(lows) == 1:
                lows, highs = lows * n_blocks, highs * n_blocks
            names = tuple(f"r_block{i}" for i in range(1, n_blocks + 1))
        return cls(
            ratio_names=names,
            ratio_bounds=tuple(zip(lows, highs)),
            r_type=tune.r_type,
            learning_rate=None if tune.learning_rate is None else tuple(float(v) for v in tune.learning_rate),
            dropout=None if tune.dropout is None else tuple(float(v) for v in tune.dropout),
        )

    @property
    def shared(self) -> bool:
        return self.ratio_names == ("r",)

    @property
    def names(self) -> list[str]:
        """Every hyperparameter name, in table order."""
        extra = [n for n, rng in (("learning_rate", self.learning_rate), ("dropout", self.dropout)) if rng]
        return [*self.ratio_names, *extra]

    def declare(self, hp) -> dict:
        """Register the space on a keras-tuner ``HyperParameters`` and return this trial's values."""
        values = {}
        for name, (low, high) in zip(self.ratio_names, self.ratio_bounds):
            if self.r_type == "int":
                values[name] = hp.Int(name, int(low), int(high))
            else:
                values[name] = hp.Float(name, low, high)
        if self.learning_rate is not None:
            values["learning_rate"] = hp.Float("learning_rate", *self.learning_rate, sampling="log")
        if self.dropout is not None:
            values["dropout"] = hp.Float("dropout", *self.dropout)
        return values

    def ratios(self, values: dict):
        """``model.reduction_ratios`` for some trial values: a scalar (shared) or one per block."""
        cast = int if self.r_type == "int" else float
        ratios = [cast(values[name]) for name in self.ratio_names]
        return ratios[0] if self.shared else ratios

    def model_config(self, base: ModelConfig, values: dict) -> ModelConfig:
        """``base`` with the trial's reduction ratios (and dropout, when searched)."""
        changes = {"reduction_ratios": self.ratios(values)}
        if self.dropout is not None:
            changes["dropout"] = float(values["dropout"])
        return from_dict(ModelConfig, {**dataclasses.asdict(base), **changes}, "model")

    def learning_rate_for(self, values: dict, default: float) -> float:
        return float(values["learning_rate"]) if self.learning_rate is not None else float(default)

    def describe(self) -> dict:
        return {
            "ratios": {name: list(bounds) for name, bounds in zip(self.ratio_names, self.ratio_bounds)},
            "r_type": self.r_type,
            "learning_rate": self.learning_rate,
            "dropout": self.dropout,
        }


def trial_train_config(train: TrainConfig) -> TrainConfig:
    """The TrainConfig a trial (and a reference) trains with: ``train``'s :data:`TRIAL_TRAIN_FIELDS`, every other
    setting at its default. Built, not trusted: a trial cannot depend on a setting dvc.yaml does not list."""
    return TrainConfig(**{name: getattr(train, name) for name in TRIAL_TRAIN_FIELDS})


def search_key(params: Params, space: SearchSpace, store: FeatureStore) -> str:
    """A short hash of everything a trial's result depends on: the keras-tuner project name.

    Left out: ``tune.max_trials`` (raising it extends a search), ``tune.enabled``, the train stage's own
    epochs/patience/monitor, the model settings the search overrides, and ``model.fusion`` (the SVM is fitted
    after training; trials never see it, and searches made before it existed keep their key).
    """
    tune = {k: v for k, v in dataclasses.asdict(params.tune).items()
            if k in ("objective", "epochs", "patience", "executions_per_trial", "initial_points")}
    model = {k: v for k, v in dataclasses.asdict(params.model).items()
             if k not in ("reduction_ratios", "fusion") and not (k == "dropout" and space.dropout is not None)}
    # trials train on train.* augmentations and loss too; those added later count only when switched on, so
    # searches made before they existed keep their key
    defaults = dataclasses.asdict(TrainConfig())
    train = {k: v for k, v in dataclasses.asdict(trial_train_config(params.train)).items()
             if k in ("batch_size", "spec_augment", "mixup_alpha")
             or (k in TRIAL_TRAIN_KEYS and v != defaults[k])
             or (k == "learning_rate" and space.learning_rate is None)}
    try:
        table_digest = hashlib.sha1((store.root / "segments.csv").read_bytes()).hexdigest()
    except OSError as exc:
        raise DatasetError(f"{store.root / 'segments.csv'}: cannot read ({exc.strerror})") from None
    data = {"features": store.features.to_dict(), "shape": list(store.segments.shape), "table": table_digest}
    if store.content_digest:  # the values too: segments.csv stays the same when only the audio changed
        data["content"] = store.content_digest
    blob = json.dumps([space.describe(), tune, model, train, params.seed, data], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# HyperModel and tuner


class SEHyperModel(keras_tuner.HyperModel):
    """The SE-CNN as a keras-tuner HyperModel: ``build`` uses the project's ``build_model``.

    ``fit`` trains for up to ``tune.epochs`` epochs, scores the validation clips after each one and stops
    after ``tune.patience`` epochs without improvement; it returns the objective's best epoch's metrics.
    """

    def __init__(
        self,
        space: SearchSpace,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        tune_cfg: TuneConfig,
        input_shape: tuple,
        n_classes: int,
        mean: float,
        std: float,
        features: FeatureConfig | None = None,
    ) -> None:
        super().__init__(name="se_cnn")
        self.space, self.model_cfg, self.train_cfg, self.tune_cfg = space, model_cfg, train_cfg, tune_cfg
        self.input_shape, self.n_classes, self.mean, self.std = tuple(input_shape), n_classes, mean, std
        self.features = features

    def declare_hyperparameters(self, hp) -> None:
        self.space.declare(hp)

    def build(self, hp):
        from .model import build_model

        values = self.space.declare(hp)
        cfg = self.space.model_config(self.model_cfg, values)
        model = build_model(cfg, self.input_shape, self.n_classes, mean=self.mean, std=self.std,
                            features=self.features)
        learning_rate = self.space.learning_rate_for(values, self.train_cfg.learning_rate)
        return self._compile(model, learning_rate)

    def _compile(self, model, learning_rate: float):
        """Compiled as the train stage compiles (Adam, cross-entropy with ``train.label_smoothing``)."""
        import keras

        loss = keras.losses.CategoricalCrossentropy(label_smoothing=self.train_cfg.label_smoothing)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"])
        return model

    def build_fixed(self, cfg: ModelConfig):
        """A reference model (fixed settings, e.g. r = 16 or no SE), compiled like every trial's."""
        from .model import build_model

        model = build_model(cfg, self.input_shape, self.n_classes, mean=self.mean, std=self.std,
                            features=self.features)
        return self._compile(model, self.train_cfg.learning_rate)

    def fit(self, hp, model, *args, store: FeatureStore, train_rows, valid_rows, seed: int, **kwargs) -> dict:
        import keras

        from .train import clip_scores, training_dataset

        score_key, direction = OBJECTIVES[self.tune_cfg.objective]
        patience = self.tune_cfg.patience
        history: list[dict] = []

        def best_index() -> int:
            """The best epoch, a diverged one never (np.argmax/argmin take a NaN for the best); all diverged: the
            last, whose NaN objective keras-tuner records as a failed trial."""
            scores = np.array([h[score_key] for h in history], dtype=np.float64)
            if np.isnan(scores).all():
                return len(scores) - 1
            return int(np.nanargmax(scores) if direction == "max" else np.nanargmin(scores))

        class ValidationEarlyStopping(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                raise_if_interrupted()
                scores = clip_scores(self.model, store, valid_rows)  # all NaN for diverged weights
                if not np.isfinite(scores["loss"]):  # such weights do not recover: the epoch scores nothing
                    self.model.stop_training = True
                history.append(scores)
                if len(history) - 1 - best_index() >= patience:
                    self.model.stop_training = True

        # the train stage's pipeline: every augmentation switch of params.train (epochs/patience are tune's)
        dataset, steps = training_dataset(store, train_rows, self.train_cfg, seed=seed, n_classes=self.n_classes,
                                          epochs=(0, self.tune_cfg.epochs))
        model.fit(dataset, epochs=self.tune_cfg.epochs, steps_per_epoch=steps, callbacks=[ValidationEarlyStopping()],
                  shuffle=False, verbose=0)
        best = best_index()
        return {
            "val_clip_accuracy": history[best]["clip_accuracy"],
            "val_loss": history[best]["loss"],
            "epochs": len(history),
            "best_epoch": best + 1,
        }


class SETuner(keras_tuner.BayesianOptimization):
    """keras-tuner's BayesianOptimization, running each trial ``executions_per_trial`` times with fixed seeds.

    The objective and the other metrics are averaged over the executions; ``seconds`` is the trial's wall
    time. ``log`` gets a line when a trial starts and when it ends (on the machine that runs it).
    """

    def __init__(self, hypermodel: SEHyperModel, tune_cfg: TuneConfig, seed: int, directory, project_name: str,
                 log: Callable[[str], None] | None = None) -> None:
        _, direction = OBJECTIVES[tune_cfg.objective]
        super().__init__(
            hypermodel=hypermodel,
            objective=keras_tuner.Objective(tune_cfg.objective, direction),
            max_trials=tune_cfg.max_trials,
            num_initial_points=tune_cfg.initial_points,
            seed=oracle_seed(seed),
            directory=str(directory),
            project_name=project_name,
            overwrite=False,
        )
        self.executions = tune_cfg.executions_per_trial
        self.base_seed = seed
        self.log = log
        self.trials_run: list[str] = []

    def run_trial(self, trial, *args, store: FeatureStore, train_rows, valid_rows, **kwargs) -> dict:

        hp = trial.hyperparameters
        self._say(f"trial {trial.trial_id} started on {self.tuner_id}: {_format_values(hp.values)}")
        metrics, _ = self.run_executions(lambda: self.hypermodel.build(hp), store=store, train_rows=train_rows,
                                         valid_rows=valid_rows)
        self.trials_run.append(trial.trial_id)
        self._say(f"trial {trial.trial_id} done: {_format_values(metrics)}")
        return metrics

    def run_executions(self, build: Callable, **fit_data) -> tuple[dict, object]:
        """Train ``build()`` once per execution seed under the trials' protocol; metrics averaged over the
        executions plus the wall time, and the last model. Trials and references both come through here."""
        import keras

        started = time.perf_counter()
        runs, model = [], None
        for execution in range(self.executions):
            seed = self.base_seed + EXECUTION_SEED_STRIDE * execution
            keras.backend.clear_session()
            raise_if_interrupted()  # a Ctrl-C that landed in one of clear_session's weakref callbacks
            keras.utils.set_random_seed(seed)
            if self.hypermodel.train_cfg.deterministic:
                from .train import enable_determinism

                enable_determinism()
            model = build()
            runs.append(self.hypermodel.fit(None, model, seed=seed, **fit_data))
        metrics = {name: float(np.mean([run[name] for run in runs])) for name in runs[0]}
        metrics["seconds"] = round(time.perf_counter() - started, 3)
        return metrics, model

    def _say(self, line: str) -> None:
        if self.log is not None:
            self.log(line)


def initial_points(tune_cfg, space: SearchSpace) -> int:
    """Random trials before the Gaussian process proposes any (keras-tuner's rule when
    ``tune.initial_points`` is null: three per dimension, at least 3)."""
    return int(tune_cfg.initial_points or max(3 * len(space.names), 3))


def oracle_seed(seed: int) -> int:
    """The oracle's seed for ``params.seed``: a hash of it, in [1, 2**31).

    keras-tuner draws trial k's random hyperparameters with ``seed + k``, so with the seed itself seed 43's trial k
    was seed 42's trial k + 1 (searches over neighbouring seeds were not independent replicates); and it takes
    ``seed or random.randint(1, 10000)``, so seed 0 gave every run other trials. Never 0.
    """
    import hashlib

    digest = hashlib.sha256(f"genre-se tune oracle {int(seed)}".encode()).digest()
    return 1 + int.from_bytes(digest[:8], "big") % (2**31 - 1)


def _format_values(values: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


# --------------------------------------------------------------------------------------------------
# Distributed mode


def distributed_role() -> str:
    """``single``, ``chief`` or ``worker``, from keras-tuner's ``KERASTUNER_*`` environment variables."""
    from keras_tuner.src.distribute import utils as dist_utils

    try:
        if not dist_utils.has_chief_oracle():
            return "single"
    except RuntimeError as exc:  # KERASTUNER_ORACLE_IP without a port or a tuner id
        raise ConfigError(f"distributed tuning: {exc}") from None
    return "chief" if dist_utils.is_chief_oracle() else "worker"


def _serve_as_chief(tuner: SETuner) -> None:
    """Serve the oracle to the workers over gRPC until every trial is done and every worker was told to stop.

    keras-tuner's own ``oracle_chief.start_server`` (used by ``search`` on the chief) checks for the end only
    every 20 s and never stops its server; this is the same servicer with a prompt, clean exit.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    tuner.save()
    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(tuner.oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if not port:
        raise ConfigError(
            f"KERASTUNER_ORACLE_PORT: the chief cannot listen on {address} (port in use, or not an address "
            "of this machine)"
        )
    server.start()
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(tuner.oracle)):
            time.sleep(CHIEF_POLL_SECONDS)
    finally:
        server.stop(grace=2)


# --------------------------------------------------------------------------------------------------
# Results


def _metric(trial, name: str) -> float:
    if name == "objective":
        return np.nan if trial.score is None else float(trial.score)
    if not trial.metrics.exists(name):
        return np.nan
    value = trial.metrics.get_last_value(name)
    return np.nan if value is None else float(value)


def _se_hidden(space: SearchSpace, model_cfg: ModelConfig, values: dict) -> str:
    from .model import se_hidden_units

    try:
        ratios = space.model_config(model_cfg, values).per_block("reduction_ratios")
    except (ConfigError, KeyError):
        return ""
    return "-".join(str(se_hidden_units(f, r)) for f, r in zip(model_cfg.filters, ratios))


def trial_columns(space: SearchSpace | None) -> list[str]:
    names = space.names if space is not None else []
    return ["trial", "status", *names, "se_hidden", "objective", *TRIAL_METRICS]


def trial_table(oracle, space: SearchSpace, model_cfg: ModelConfig) -> pd.DataFrame:
    """One row per trial in trial order: id, status, every hyperparameter, SE widths, objective, metrics."""
    rows = []
    for trial_id in sorted(oracle.trials, key=int):
        trial = oracle.trials[trial_id]
        values = trial.hyperparameters.values
        row = {"trial": int(trial_id), "status": str(trial.status)}
        row.update({name: values.get(name) for name in space.names})
        row["se_hidden"] = _se_hidden(space, model_cfg, values)
        row.update({name: _metric(trial, name) for name in ("objective", *TRIAL_METRICS)})
        rows.append(row)
    table = pd.DataFrame(rows, columns=trial_columns(space))
    for name in ("epochs", "best_epoch"):  # whole numbers unless averaged over several executions
        values = table[name].dropna()
        if len(values) and (values == values.round()).all():
            table[name] = table[name].astype("Int64")
    return table


def best_params(table: pd.DataFrame, space: SearchSpace, params: Params, key: str) -> dict:
    """``best_params.json`` from the best completed trial (ties: the earliest trial)."""
    done = table[table["status"] == "COMPLETED"].dropna(subset=["objective"])
    if done.empty:
        raise ModelError(f"tune: no trial of search {key} completed; see its trial table for the statuses")
    _, direction = OBJECTIVES[params.tune.objective]
    order = done["objective"].to_numpy()
    row = done.iloc[int(np.argmax(order) if direction == "max" else np.argmin(order))]
    values = {name: row[name] for name in space.names}
    values = {k: (int(v) if space.r_type == "int" and k in space.ratio_names else float(v)) for k, v in values.items()}
    model = {"reduction_ratios": space.ratios(values)}
    if space.dropout is not None:
        model["dropout"] = values["dropout"]
    best = {"source": "tune", "model": model}
    if space.learning_rate is not None:
        best["train"] = {"learning_rate": values["learning_rate"]}
    best.update(
        trial=int(row["trial"]),
        objective={"name": params.tune.objective, "value": float(row["objective"])},
        se_hidden=row["se_hidden"],
        search=key,
        trials_completed=int(len(done)),
    )
    return best


def plot_objective(table: pd.DataFrame, space: SearchSpace | None, objective: str, path: str | Path,
                   note: str | None = None, references: pd.DataFrame | None = None) -> None:
    """Objective against r (one panel per block in per-block mode), best trial starred; or just ``note``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if space is None:
        fig, ax = plt.subplots(figsize=(5, 1.6))
        ax.axis("off")
        ax.text(0.5, 0.5, note or "", ha="center", va="center", wrap=True)
    else:
        done = table[table["status"] == "COMPLETED"].dropna(subset=["objective"])
        _, direction = OBJECTIVES[objective]
        best = done.iloc[int(done["objective"].argmax() if direction == "max" else done["objective"].argmin())]
        n = len(space.ratio_names)
        fig, axes = plt.subplots(1, n, figsize=(1.0 + 3.2 * n, 3.4), sharey=True, squeeze=False)
        for ax, name, (low, high) in zip(axes[0], space.ratio_names, space.ratio_bounds):
            ax.scatter(done[name], done["objective"], c=done["trial"], cmap="viridis", s=30, zorder=2)
            ax.scatter([best[name]], [best["objective"]], marker="*", s=220, color="crimson", zorder=3,
                       label=f"best (trial {int(best['trial'])})")
            for r, value, trial in zip(done[name], done["objective"], done["trial"]):
                ax.annotate(str(int(trial)), (r, value), textcoords="offset points", xytext=(4, 4), fontsize=7)
            for i, ref in enumerate([] if references is None else references.itertuples()):
                ax.axhline(getattr(ref, objective), color=f"C{i + 1}", linestyle="--", linewidth=1,
                           label=f"{ref.reference} (reference)")
            pad = 0.04 * (high - low)
            ax.set_xlim(low - pad, high + pad)
            ax.set_xlabel(name)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(objective)
        axes[0][0].legend(fontsize=8, loc="best")
        fig.suptitle(f"{objective} per trial ({len(done)} completed)")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# The stage


@dataclass
class TuneResult:
    """What :func:`run_tune` did. ``best`` and ``table`` are None on a worker (the chief writes them)."""

    best: dict | None
    table: pd.DataFrame | None
    role: str
    tuner_id: str
    project_dir: Path | None = None
    trials_run: list = field(default_factory=list)
    trials_before: int = 0
    references: pd.DataFrame | None = None


def _remove_outputs(out_path, trials_path, plot_path) -> None:
    """The last run's results go before a search: a search that then failed or was killed left them in place,
    and the train stage took that earlier search's best_params.json for this one's (outside DVC, which removes
    a stage's outputs itself). The search's own state (keras-tuner's project folder) stays, so it resumes."""
    paths = [out_path, plot_path, trials_path, None if trials_path is None else references_path(trials_path)]
    for path in paths:
        if path is not None:
            Path(path).unlink(missing_ok=True)


def _write_outputs(best: dict, table: pd.DataFrame, references: pd.DataFrame | None, out_path, trials_path,
                   plot_path, plot) -> None:
    """The stage's results, ``best_params.json`` last; the references table is a declared output (dvc.yaml), so
    it is written with its header only where no reference was trained (``tune.references: []``, tuning off)."""
    if trials_path is not None:
        write_csv(references_path(trials_path),
                  references if references is not None else pd.DataFrame(columns=list(REFERENCE_COLUMNS)))
        write_csv(trials_path, table)
    if plot_path is not None:
        plot(plot_path)
    write_json(out_path, best)  # last: its presence means the stage finished


def _passthrough(params: Params, out_path, trials_path, plot_path) -> TuneResult:
    best = {"source": "params", "model": {"reduction_ratios": params.model.reduction_ratios}}
    table = pd.DataFrame(columns=trial_columns(None))
    note = f"search disabled (tune.enabled: false)\nreduction ratios from params: {params.model.reduction_ratios}"
    _write_outputs(best, table, None, out_path, trials_path, plot_path,
                   lambda path: plot_objective(table, None, params.tune.objective, path, note=note))
    return TuneResult(best, table, "single", "tuner0")


@contextlib.contextmanager
def _keras_tuner_saves_atomic():
    """keras-tuner writes its project files (oracle.json, trial.json, tuner0.json) in place: a Ctrl-C or a kill
    landing in a save (every trial's start and end) left an empty or cut file, and the search could not resume:
    every finished trial was lost. For the duration, its JSON goes through :func:`genre_se.fileio.write_text`
    (temporary file, then rename); remote paths (``gs://``) are left to keras-tuner."""
    from keras_tuner.src import utils as kt_utils

    original = kt_utils.save_json

    def save_json(path, obj):
        if "://" in str(path):
            return original(path, obj)
        text = json.dumps(obj)
        write_text(path, text)
        return text

    kt_utils.save_json = save_json
    try:
        yield
    finally:
        kt_utils.save_json = original


@contextlib.contextmanager
def _keras_tuner_quiet():
    """keras-tuner prints progress and failed trials' tracebacks (we report through ``log`` and errors), and
    its Gaussian process warns about length scales on few, flat points."""
    from keras_tuner.src import config as kt_config

    saved_debug = kt_config.DEBUG
    kt_config.DEBUG = False
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _keras_tuner_saves_atomic():
            warnings.filterwarnings("ignore", message=".*close to the specified (lower|upper) bound")
            warnings.filterwarnings("ignore", message="All-NaN (slice|axis) encountered")  # a diverged trial's metrics
            yield
    finally:
        kt_config.DEBUG = saved_debug


def _first_and_last_line(text: str) -> str:
    """keras-tuner's failure messages are tracebacks: keep the headline and the exception line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def _open_tuner(hypermodel: SEHyperModel, params: Params, project_root, key: str, role: str, log) -> SETuner:
    """The tuner on project ``<project_root>/<key>``, reloading the search found there."""
    project_dir = Path(project_root) / key
    tuner_file_existed = _tuner_file(project_dir).exists()  # keras-tuner reloads only when the tuner's own file exists
    tuner = SETuner(hypermodel, params.tune, params.seed, project_root, key, log=log)
    if role != "worker" and not tuner_file_existed and (project_dir / "oracle.json").exists():
        tuner.oracle.reload()  # killed during its first trial, or last run as a chief: the same search
    return tuner


def _tuner_file(project_dir: Path) -> Path:
    """This process's tuner state file in a keras-tuner project (one per tuner id)."""
    return project_dir / f"{os.environ.get('KERASTUNER_TUNER_ID', 'tuner0')}.json"


def _search(tuner: SETuner, role: str, **fit_data) -> None:
    """Run trials (single machine, worker) or hand them out (chief; nothing to do if the search is done)."""
    if role != "chief":
        tuner.search(verbose=0, **fit_data)
    elif tuner.oracle.remaining_trials() > 0 or tuner.oracle._retry_queue:
        _serve_as_chief(tuner)


def reference_label(ref) -> str:
    return "no_se" if ref == "no_se" else f"r={float(ref):g}"


def run_references(hypermodel: SEHyperModel, tuner: SETuner, project_dir: Path, refs: list, log=None,
                   **fit_data) -> pd.DataFrame:
    """Train each reference under the trials' protocol (same seeds and executions); one row each.

    Results are kept in ``<project_dir>/references.json`` so a resumed or re-run stage does not train them again.
    """

    from .model import se_hidden_units

    cache_path = project_dir / "references.json"
    try:  # a cache: one cut short by a crash is trained again, not a traceback
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except (OSError, ValueError):
        cache = {}
    cache = cache if isinstance(cache, dict) else {}
    rows = []
    for ref in refs:
        label = reference_label(ref)
        cfg = (dataclasses.replace(hypermodel.model_cfg, se=False) if ref == "no_se"
               else dataclasses.replace(hypermodel.model_cfg, reduction_ratios=float(ref)))
        # the search key leaves out what the search varies (train.learning_rate, model.dropout), yet a reference
        # trains at the fixed values: a cached one of other values is trained again
        protocol = hashlib.sha1(json.dumps([dataclasses.asdict(cfg), hypermodel.train_cfg.learning_rate],
                                           sort_keys=True, default=str).encode()).hexdigest()[:16]
        if cache.get(label, {}).get("protocol") != protocol:
            metrics, model = tuner.run_executions(lambda cfg=cfg: hypermodel.build_fixed(cfg), **fit_data)
            metrics["params"] = int(model.count_params())
            metrics["se_hidden"] = ("" if ref == "no_se" else "-".join(
                str(se_hidden_units(f, float(ref))) for f in hypermodel.model_cfg.filters))
            cache[label] = {**metrics, "protocol": protocol}
            write_json(cache_path, cache)
            if log is not None:
                log(f"reference {label} done: {_format_values(metrics)}")
        rows.append({"reference": label, **{k: v for k, v in cache[label].items() if k != "protocol"}})
    return pd.DataFrame(rows, columns=list(REFERENCE_COLUMNS))


def _completed(oracle) -> int:
    return sum(1 for t in oracle.trials.values() if str(t.status) == "COMPLETED")


def run_tune(
    params: Params,
    store_dir: str | Path = "data/features",
    out_path: str | Path = "models/best_params.json",
    trials_path: str | Path | None = "reports/tune_trials.csv",
    plot_path: str | Path | None = "reports/tune_objective.png",
    project_root: str | Path = "models/tuning",
    log: Callable[[str], None] | None = None,
) -> TuneResult:
    """The `genre-se tune` stage: search (or resume, or serve/work for a distributed search), then write results.

    Parameters
    ----------
    project_root : path
        Parent of keras-tuner's project directories, one per search key; keep it out of DVC outputs.
    log : callable, optional
        Progress lines (resume state, each trial's start and end on the machine that runs it).
    """
    if not params.tune.enabled:
        return _passthrough(params, out_path, trials_path, plot_path)
    from .model import front_end
    from .train import standardization_stats

    role = distributed_role()
    if role != "worker":  # this search's results replace the last one's: a failed or killed search leaves none
        _remove_outputs(out_path, trials_path, plot_path)
    space = SearchSpace.from_params(params)
    store = FeatureStore.open(store_dir)
    train_rows, valid_rows = store.rows("train"), store.rows("valid")
    if len(train_rows) == 0 or len(valid_rows) == 0:
        raise DatasetError(
            f"{store_dir}: tuning needs train and valid segments (train {len(train_rows)}, valid "
            f"{len(valid_rows)}); set data.val_fraction > 0"
        )
    key = search_key(params, space, store)
    mean, std = standardization_stats(store.segments, train_rows, transform=front_end(params.model, store.features))
    hypermodel = SEHyperModel(space, params.model, trial_train_config(params.train), params.tune,
                              store.input_shape, len(store.labels), mean, std, features=store.features)
    project_dir = Path(project_root) / key
    with _keras_tuner_quiet():
        try:
            resuming = (project_dir / "oracle.json").exists() or _tuner_file(project_dir).exists()
            try:
                tuner = _open_tuner(hypermodel, params, project_root, key, role, log)
            except (ValueError, OSError) as exc:  # keras-tuner writes its JSON in place: a crash can cut it
                if not resuming:  # a new search: not a project file's fault
                    raise ModelError(f"{project_dir}: cannot start the search ({_first_and_last_line(str(exc))})"
                                     ) from exc
                raise ModelError(f"{project_dir}: cannot resume the search, a project file is corrupt or unreadable "
                                 f"({_first_and_last_line(str(exc))}); remove the folder to search afresh") from exc
            before = 0 if role == "worker" else _completed(tuner.oracle)
            if role != "worker" and log is not None:
                log(f"search {project_dir} ({role}): {before} of {params.tune.max_trials} trials completed")
                random_trials = initial_points(params.tune, space)
                if random_trials >= params.tune.max_trials:
                    log(f"note: all {params.tune.max_trials} trials are random: the Gaussian process starts after "
                        f"{random_trials} (tune.initial_points); raise tune.max_trials above {random_trials} for "
                        "a Bayesian search")
            with interrupts_noted():
                _search(tuner, role, store=store, train_rows=train_rows, valid_rows=valid_rows)
        except GenreSEError:
            raise
        except RuntimeError as exc:  # keras-tuner: too many failed trials, or an unreadable project
            raise ModelError(f"{project_dir}: tuning failed: {_first_and_last_line(str(exc))}") from exc
    if role == "worker":
        return TuneResult(None, None, role, tuner.tuner_id, project_dir, tuner.trials_run)
    if _completed(tuner.oracle) == 0:
        failures = [t.message for t in tuner.oracle.trials.values() if t.message]
        if failures:
            reason = failures[-1].strip().splitlines()[-1]
        elif tuner.oracle.trials:  # keras-tuner fails a trial whose objective is NaN without a message
            reason = f"every trial's {params.tune.objective} was NaN (training diverged; try a lower learning rate)"
        else:
            reason = "no trial ran"
        raise ModelError(f"{project_dir}: no trial completed: {reason}")
    table = trial_table(tuner.oracle, space, params.model)
    best = best_params(table, space, params, key)
    references = None
    if params.tune.references:
        with _keras_tuner_quiet(), interrupts_noted():
            references = run_references(hypermodel, tuner, project_dir, params.tune.references, log,
                                        store=store, train_rows=train_rows, valid_rows=valid_rows)
        best["references"] = {row.reference: {params.tune.objective: getattr(row, params.tune.objective),
                                              "epochs": row.epochs} for row in references.itertuples()}
    _write_outputs(best, table, references, out_path, trials_path, plot_path,
                   lambda path: plot_objective(table, space, params.tune.objective, path, references=references))
    return TuneResult(best, table, role, tuner.tuner_id, project_dir, tuner.trials_run, before, references)


def references_path(trials_path: str | Path) -> Path:
    """``reports/tune_trials.csv`` -> ``reports/tune_references.csv``."""
    trials_path = Path(trials_path)
    return trials_path.with_name(trials_path.name.replace("trials", "references")
                                 if "trials" in trials_path.name else f"{trials_path.stem}_references.csv")
