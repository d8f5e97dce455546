"""Training: tf.data over the memory-mapped feature store, early stopping on validation clip accuracy,
best-model bundle, per-epoch DVCLive metrics, and resume after an interruption.

Resume works at epoch granularity: after every epoch the full model (optimizer included) and the loop's
state (epoch, best score, patience counter) are saved atomically in ``state_dir``, the model files under
names carrying their epoch and ``state.json``, written last, naming them; a new run with the same parameters
continues from there (an epoch cut short is run again), on the batches and dropout masks the uninterrupted run
would have drawn, so it ends with the same weights. Different parameters start over, and so does a smaller
``train.epochs`` or ``train.patience`` than the saved run already went past.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import augment
from .augment import RecordingConditions, mel_centre_frequencies
from .config import ModelConfig, Params, TrainConfig, from_dict
from .corpus import is_builtin_corpus
from .errors import ConfigError, DatasetError, ModelError, OutputError
from .feature_store import FeatureStore
from .features import floor_db
from .fileio import atomic_path, read_json_object, write_json
from .interrupts import interrupts_noted, raise_if_interrupted
from .metrics import aggregate_clips, cross_entropy

STATE_FILE = "state.json"
LAST_MODEL = "last.keras"  # the names of states written before the files carried their epoch
BEST_WEIGHTS = "best.weights.h5"
#: ``last-<epoch>.keras`` and ``best-<epoch>.weights.h5``, each written under a new name; ``state.json``, written
#: last, names the pair that belongs to it (a kill between the files leaves the previous epoch's state whole)
CHECKPOINT = re.compile(r"(last|best)-\d+\.(keras|weights\.h5)")


# --------------------------------------------------------------------------------------------------
# Data


def standardization_stats(segments: np.ndarray, rows: np.ndarray, chunk: int = 512,
                          transform: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[float, float]:
    """Mean and std of the training segments, computed in chunks (the store is never fully loaded).

    ``transform``: the model's front end (:func:`genre_se.model.front_end`), so the statistics describe
    what the model's standardisation layer receives.
    """
    total = total_sq = 0.0
    count = 0
    for i in range(0, len(rows), chunk):
        block = np.asarray(segments[np.sort(rows[i : i + chunk])], dtype=np.float32)
        if transform is not None:
            block = transform(block)
        block = np.asarray(block, dtype=np.float64)
        total += block.sum()
        total_sq += np.square(block).sum()
        count += block.size
    if count == 0:
        raise DatasetError("no training segments: the train split is empty")
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
    return float(mean), std if std > 1e-6 else 1.0


def make_dataset(
    store: FeatureStore,
    rows: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    n_classes: int,
    spec_augment: bool = False,
    mixup_alpha: float = 0.0,
    gain_db: float = 0.0,
    floor_db: float = -100.0,
    eq_tilt_db: float = 0.0,
    compression: float = 0.0,
    noise_snr_db: list | tuple | None = None,
    pitch_shift_semitones: float = 0.0,
    time_stretch: float = 0.0,
    mel_hz: np.ndarray | None = None,
    lowpass_hz: list | tuple | None = None,
    lowpass_slope_db: float = TrainConfig.lowpass_slope_db,
    epochs: tuple[int, int] = (0, 1),
):
    """A tf.data pipeline reading batches of segments from the memmap (shuffled, batched, prefetched).

    ``epochs = (first, stop)``: the pipeline yields epochs ``first .. stop - 1`` one after the other (fit it with
    ``steps_per_epoch``, :func:`steps_per_epoch`). Every random draw (the shuffle order, each augmentation) is
    a stateless function of ``seed``, the epoch and the batch's place in it, never of how many times the
    dataset was iterated: a training resumed at epoch ``first`` sees the very batches of the run it continues,
    and the draws do not depend on the parallelism of the maps.

    Augmentations apply in this order: random gain (``gain_db``, values kept >= ``floor_db``), the recording
    conditions (EQ tilt, low-pass, compression, noise, pitch shift, time stretch: :class:`RecordingConditions`),
    SpecAugment masking, mixup. With every switch off the batches are the stored segments, bit for bit.
    ``mel_hz`` (the mel band centre frequencies, :func:`mel_centre_frequencies`) is needed by the pitch shift
    and the low-pass, and colours the noise (white without it). :func:`training_dataset` passes everything from a
    TrainConfig.
    """
    import tensorflow as tf

    segments = store.segments
    targets = store.label_indices  # originals and augmented copies
    shape = store.input_shape
    first, stop = (int(e) for e in epochs)
    if not 0 <= first < stop:
        raise ValueError(f"epochs must be (first, stop) with 0 <= first < stop, got {epochs!r}")

    def load(batch_rows):
        order = np.sort(batch_rows)  # sorted reads are sequential on disk
        x = np.asarray(segments[order], dtype=np.float32)
        y = np.eye(n_classes, dtype=np.float32)[targets[order]]
        return x, y

    def load_tf(batch_rows, key):
        # stateless: the same rows give the same batch. A stateful py-func would make op determinism's tf.data
        # rewrite (make_deterministic) turn every map of the pipeline sequential and drop the prefetch, and its
        # ParallelMap -> Map conversion keeps the `use_unbounded_threadpool` attr that MapDataset lacks, so
        # TensorFlow logged an E-level "NodeDef mentions attribute use_unbounded_threadpool" line on every training
        x, y = tf.numpy_function(load, [batch_rows], [tf.float32, tf.float32], stateful=False)
        x.set_shape((None, *shape))
        y.set_shape((None, n_classes))
        return x, y, key

    rows_t = tf.constant(np.asarray(rows, dtype=np.int64))
    n_batches = steps_per_epoch(len(rows), batch_size)

    def one_epoch(epoch):
        epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
        order = rows_t
        if shuffle:
            order = tf.gather(rows_t, tf.argsort(tf.random.stateless_uniform(tf.shape(rows_t), epoch_seed)))
        # one int64 key per batch; the batch's augmentations draw from it statelessly (see genre_se.augment.draw_seed)
        keys = tf.random.stateless_uniform([n_batches], epoch_seed + tf.constant([0, 1 << 32], tf.int64),
                                           minval=None, maxval=None, dtype=tf.int64)
        return tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(order).batch(batch_size),
                                    tf.data.Dataset.from_tensor_slices(keys)))

    ds = tf.data.Dataset.range(first, stop).flat_map(one_epoch)
    ds = ds.map(load_tf, num_parallel_calls=tf.data.AUTOTUNE)
    if gain_db > 0:
        ds = ds.map(lambda x, y, k: (augment.random_gain(x, k, gain_db, floor_db), y, k),
                    num_parallel_calls=tf.data.AUTOTUNE)
    recording = RecordingConditions(eq_tilt_db=eq_tilt_db, compression=compression, noise_snr_db=noise_snr_db,
                                    pitch_shift_semitones=pitch_shift_semitones, time_stretch=time_stretch,
                                    floor_db=floor_db, mel_hz=mel_hz, lowpass_hz=lowpass_hz,
                                    lowpass_slope_db=lowpass_slope_db)
    if recording.active:
        recording.check(shape[0])
        ds = ds.map(lambda x, y, k: (recording(x, k), y, k), num_parallel_calls=tf.data.AUTOTUNE)
    if spec_augment:
        ds = ds.map(lambda x, y, k: (augment.spec_augment(x, k), y, k), num_parallel_calls=tf.data.AUTOTUNE)
    if mixup_alpha > 0:
        ds = ds.map(lambda x, y, k: (*augment.mixup(x, y, k, mixup_alpha), k), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.map(lambda x, y, k: (x, y)).prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Batches in one epoch of ``n_rows`` segments (the last one may be short)."""
    return max(1, -(-int(n_rows) // int(batch_size)))


def training_dataset(store: FeatureStore, rows: np.ndarray, train_cfg: TrainConfig, *, seed: int, n_classes: int,
                     epochs: tuple[int, int] = (0, 1)):
    """The shuffled, augmented training pipeline exactly as a TrainConfig describes it (the train stage, CV
    folds and tuning trials all train on this): epochs ``first .. stop - 1`` of it (:func:`make_dataset`).

    Returns
    -------
    (dataset, steps_per_epoch): fit with ``steps_per_epoch`` so each epoch ends where the next one's batches
    begin.
    """
    feats = store.features
    needs_mel = (train_cfg.pitch_shift_semitones > 0 or train_cfg.noise_snr_db is not None
                 or train_cfg.lowpass_hz is not None)
    if train_cfg.waveform_augment:
        copies = store.copies_of(rows, train_cfg.waveform_augment)
        missing = set(train_cfg.waveform_augment) - set(store.augmented["augment"] if store.augmented is not None else [])
        if missing:
            raise DatasetError(f"train.waveform_augment asks for {sorted(missing)} copies but the feature store "
                               f"{store.root} has none; run `genre-se features` again (dvc repro does)")
        rows = np.concatenate([np.asarray(rows, dtype=np.int64), copies])
    dataset = make_dataset(
        store, rows, train_cfg.batch_size, shuffle=True, seed=seed, n_classes=n_classes,
        spec_augment=train_cfg.spec_augment, mixup_alpha=train_cfg.mixup_alpha,
        gain_db=train_cfg.gain_db, floor_db=floor_db(feats),
        eq_tilt_db=train_cfg.eq_tilt_db, compression=train_cfg.compression_amount,
        noise_snr_db=train_cfg.noise_snr_db, pitch_shift_semitones=train_cfg.pitch_shift_semitones,
        time_stretch=train_cfg.time_stretch, mel_hz=mel_centre_frequencies(feats) if needs_mel else None,
        lowpass_hz=train_cfg.lowpass_hz, lowpass_slope_db=train_cfg.lowpass_slope_db, epochs=epochs,
    )
    return dataset, steps_per_epoch(len(rows), train_cfg.batch_size)


def predict_rows(model, store: FeatureStore, rows: np.ndarray, batch_size: int = 128):
    """``model``'s outputs (the softmax; the embedding for :func:`genre_se.model.embedding_model`) for the given
    store rows, in the order given, read in batches. A model with several outputs gives a list, one array per
    output (one forward pass taps them all)."""
    out = []
    for i in range(0, len(rows), batch_size):
        x = np.asarray(store.segments[rows[i : i + batch_size]], dtype=np.float32)
        y = model(x, training=False)
        out.append([np.asarray(o) for o in y] if isinstance(y, (list, tuple)) else np.asarray(y))
    if out and isinstance(out[0], list):
        return [np.concatenate(parts) for parts in zip(*out)]
    return np.concatenate(out) if out else np.zeros((0, len(store.labels)), np.float32)


def clip_scores(model, store: FeatureStore, rows: np.ndarray, batch_size: int = 128) -> dict:
    """Segment loss/accuracy and clip accuracy (mean of segment probabilities) on some rows; all NaN when the
    probabilities are not finite (diverged weights), whose argmax of label 0 would score the share of label-0
    clips as clip accuracy, a score the model never earned."""
    probs = predict_rows(model, store, rows, batch_size)
    if not np.isfinite(probs).all():
        return {"loss": float("nan"), "accuracy": float("nan"), "clip_accuracy": float("nan")}
    labels = store.table["label_index"].to_numpy()[rows]
    clips = aggregate_clips(store.table["clip_id"].to_numpy()[rows], probs, labels)
    return {
        "loss": cross_entropy(probs, labels),
        "accuracy": float((probs.argmax(axis=1) == labels).mean()),
        "clip_accuracy": float((clips["pred"] == clips["label"]).mean()),
    }


# --------------------------------------------------------------------------------------------------
# The loop

PLATEAU_FACTOR = 0.5


def scheduled_learning_rate(cfg: TrainConfig, epoch: int, current: float) -> float:
    """The rate for 0-based ``epoch``: constant, cosine decay from ``learning_rate`` over ``epochs`` (a
    function of the epoch alone, so a resumed run continues the same curve), or, for ``plateau``,
    ``current`` (the loop halves it after ``lr_decay_patience`` epochs without improvement)."""
    if cfg.lr_schedule == "cosine":
        return float(cfg.learning_rate * 0.5 * (1.0 + np.cos(np.pi * epoch / cfg.epochs)))
    if cfg.lr_schedule == "plateau":
        return float(current)
    return float(cfg.learning_rate)


def plateau_decay(cfg: TrainConfig, current: float, wait: int) -> float:
    """``current`` halved when the epochs without improvement reach a multiple of ``lr_decay_patience``."""
    if cfg.lr_schedule == "plateau" and wait > 0 and wait % cfg.lr_decay_patience == 0:
        return float(current * PLATEAU_FACTOR)
    return float(current)


@dataclass
class TrainResult:
    model: object
    mean: float
    std: float
    best_epoch: int
    best_score: float
    epochs_run: int
    resumed_from: int
    # seconds spent fitting over every session of this run (an interrupted run's earlier epochs included; states
    # written before this was recorded count from their resume)
    train_seconds: float = 0.0


#: train.* settings added after resumable states were first written: left out of the state key at their default,
#: so an interrupted run of an older configuration still resumes
LATE_TRAIN_FIELDS = {name: getattr(TrainConfig, name) for name in ("lowpass_hz", "lowpass_slope_db")}


def _state_key(model_cfg: ModelConfig, train_cfg: TrainConfig, store: FeatureStore, rows, seed: int) -> str:
    """Identifies a run; epochs and patience are left out so a run can be resumed with a longer budget, and
    ``calibrate`` (it only acts after training)."""
    resumable = ("patience",) if train_cfg.lr_schedule == "cosine" else ("epochs", "patience")  # cosine spans epochs
    resumable += ("calibrate",)
    model_fields = {k: v for k, v in model_cfg.__dict__.items()
                    if k not in ("fusion", "classifier")}  # the SVMs are fitted afterwards
    loop = {k: v for k, v in train_cfg.__dict__.items()
            if k not in resumable and not (k in LATE_TRAIN_FIELDS and v == LATE_TRAIN_FIELDS[k])}
    parts = [model_fields, loop, store.features.to_dict(), len(store.segments),
             np.asarray(rows).tolist()[:50], len(rows), seed]
    if store.content_digest:  # other audio or labels of the same counts: a new run (stores before it: as before)
        parts.append(store.content_digest)
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def enable_determinism() -> None:
    """Same seed, same weights: TensorFlow's deterministic kernels and input pipelines for this process (it
    cannot be switched off again; ``train.deterministic: false`` only leaves it off where nothing turned it on)."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def train_model(
    store: FeatureStore,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    train_rows: np.ndarray,
    valid_rows: np.ndarray,
    seed: int,
    state_dir: str | Path,
    live=None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train an SE-CNN on some store rows with early stopping on the validation rows; resumable.

    Parameters
    ----------
    live : dvclive.Live, optional
        Receives per-epoch metrics (``train/loss``, ``val/loss``, ``val/clip_accuracy``, ...).
    log : callable, optional
        Gets one line per epoch (the CLI prints it to stderr).

    Returns
    -------
    TrainResult with the model holding the best epoch's weights.
    """
    import keras

    from .model import build_model, front_end

    if len(train_rows) == 0:
        raise DatasetError("the train split has no segments")
    state_dir = Path(state_dir)
    _check_state_dir(state_dir)
    n_classes = len(store.labels)
    monitor_max = train_cfg.monitor == "val_clip_accuracy"
    key = _state_key(model_cfg, train_cfg, store, train_rows, seed)
    state = _load_state(state_dir, key, train_cfg, log)

    keras.utils.set_random_seed(seed)
    if train_cfg.deterministic:
        enable_determinism()
    if state is not None:
        model = keras.saving.load_model(state_dir / state.get("last_file", LAST_MODEL), safe_mode=True, compile=True)
        mean, std = state["mean"], state["std"]
        _restore_seed_states(model, state.get("seed_states"))
        if log is not None:
            log(f"resuming after epoch {state['epoch']} (state in {state_dir})")
            if "seed_states" not in state:  # saved before the draws became functions of (seed, epoch)
                log("note: this state was saved by an earlier genre-se, whose input pipeline drew other batches; the "
                    "epochs from here on draw this version's, so the run will not match an uninterrupted one")
    else:
        shutil.rmtree(state_dir, ignore_errors=True)
        mean, std = standardization_stats(store.segments, train_rows,
                                          transform=front_end(model_cfg, store.features))
        model = build_model(model_cfg, store.input_shape, n_classes, mean=mean, std=std, features=store.features)
        model.compile(
            optimizer=keras.optimizers.Adam(train_cfg.learning_rate),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=train_cfg.label_smoothing),
            metrics=["accuracy"],
        )
        state = {"key": key, "epoch": 0, "best": None, "best_key": None, "best_epoch": 0, "wait": 0,
                 "mean": mean, "std": std, "waits": []}
    state.setdefault("lr", train_cfg.learning_rate)
    state.setdefault("train_seconds", 0.0)
    resumed_from, seconds_before = state["epoch"], state["train_seconds"]
    # epochs resumed_from .. the last: a resumed run sees the batches of the run it continues
    train_ds, steps = training_dataset(store, train_rows, train_cfg, seed=seed, n_classes=n_classes,
                                       epochs=(resumed_from, max(train_cfg.epochs, resumed_from + 1)))
    has_valid = len(valid_rows) > 0

    class Loop(keras.callbacks.Callback):
        """Validation clip metrics, learning-rate schedule, logging, checkpoints and early stopping, in one place."""

        def on_train_begin(self, logs=None):
            self.started = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.rate = scheduled_learning_rate(train_cfg, epoch, state["lr"])
            self.model.optimizer.learning_rate = self.rate

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            val = clip_scores(self.model, store, valid_rows) if has_valid else {}
            if not np.isfinite(float(logs.get("loss", 0.0))) or not np.isfinite(val.get("loss", 0.0)):
                # diverged weights do not recover: the epoch is not kept, and the state stays at the last finite
                # one (a rerun ends the same way, the draws being the same)
                diverged.append(epoch + 1)
                self.model.stop_training = True
                if log is not None:
                    log(f"epoch {epoch + 1}/{train_cfg.epochs}: the loss is not finite (training diverged); "
                        + (f"keeping epoch {state['best_epoch']}'s weights" if state["best_key"] is not None
                           else "no epoch to keep"))
                return
            score = _score(val, logs, monitor_max)
            improved = state["best_key"] is None or score > tuple(state["best_key"])
            state["epoch"] = epoch + 1
            state["train_seconds"] = seconds_before + time.perf_counter() - self.started
            if improved:
                state.update(best=_reported(val, logs, monitor_max), best_key=list(score), best_epoch=epoch + 1,
                             wait=0, best_file=f"best-{epoch + 1}.weights.h5")
                with atomic_path(state_dir / state["best_file"], suffix=".weights.h5") as tmp:
                    self.model.save_weights(tmp)
            else:
                state["wait"] += 1
                state["lr"] = plateau_decay(train_cfg, state["lr"], state["wait"])
            if "waits" in state:  # the patience counter after every epoch (a state of an older version has none)
                state["waits"].append(state["wait"])
            state["last_file"] = f"last-{epoch + 1}.keras"
            state["seed_states"] = [v.numpy().tolist() for v in _seed_state_variables(self.model)]
            with atomic_path(state_dir / state["last_file"], suffix=".keras") as tmp:
                self.model.save(tmp)
            write_json(state_dir / STATE_FILE, state)  # the commit: until here the previous epoch's state holds
            _prune_checkpoints(state_dir, state)
            if live is not None:
                live.step = epoch  # the epoch, not a counter: a resumed run continues the same curve
                live.log_metric("train/loss", float(logs.get("loss", np.nan)))
                live.log_metric("train/accuracy", float(logs.get("accuracy", np.nan)))
                live.log_metric("train/learning_rate", self.rate)
                for name, value in val.items():
                    live.log_metric(f"val/{name}", value)
                live.next_step()
            if log is not None:
                shown = " ".join(f"val_{k}={v:.4f}" for k, v in val.items())
                log(f"epoch {epoch + 1}/{train_cfg.epochs}: loss={logs.get('loss', float('nan')):.4f} {shown}"
                    f"{' *' if improved else ''}")
            raise_if_interrupted()  # a Ctrl-C dropped somewhere (a weakref callback): stop here, the state saved
            if state["wait"] >= train_cfg.patience:
                self.model.stop_training = True

    state_dir.mkdir(parents=True, exist_ok=True)
    diverged: list[int] = []
    if state["epoch"] < train_cfg.epochs and state["wait"] < train_cfg.patience:
        with interrupts_noted():  # a Ctrl-C dropped in a weakref callback surfaces at the next epoch end
            model.fit(train_ds, epochs=train_cfg.epochs, initial_epoch=state["epoch"], steps_per_epoch=steps,
                      callbacks=[Loop()], shuffle=False, verbose=0)
    if diverged and state["best_key"] is None:
        raise ModelError(f"training diverged in epoch {diverged[0]} (the loss is NaN or infinite) before any epoch "
                         f"ended with a finite one; try a lower train.learning_rate (now {state['lr']:g})")
    model.load_weights(state_dir / state.get("best_file", BEST_WEIGHTS))
    return TrainResult(model, mean, std, state["best_epoch"], state["best"], state["epoch"], resumed_from,
                       float(state["train_seconds"]))


def _seed_state_variables(model) -> list:
    """The state of every random layer's seed generator (dropout's): Keras saves none of them with a model, so
    a loaded model would draw its first epoch's dropout masks again; the train state keeps them instead."""
    return [v for v in model.non_trainable_variables if v.path.split("/")[-1] == "seed_generator_state"]


def _restore_seed_states(model, states: list | None) -> None:
    """Put back the seed generator states the train state saved (:func:`_seed_state_variables`)."""
    variables = _seed_state_variables(model)
    if states is None or len(states) != len(variables):  # a state of an older version: fresh dropout draws
        return
    for variable, value in zip(variables, states):
        variable.assign(np.asarray(value, dtype=variable.dtype))


def _score(val: dict, logs: dict, monitor_max: bool) -> tuple[float, float]:
    """Higher is better. Clip accuracy moves in coarse steps on small validation sets, so ties are
    broken by the validation loss; without a validation split, the training loss decides."""
    if not val:
        return (-float(logs["loss"]), 0.0)
    if monitor_max:
        return (val["clip_accuracy"], -val["loss"])
    return (-val["loss"], val["clip_accuracy"])


def _reported(val: dict, logs: dict, monitor_max: bool) -> float:
    """The monitored value itself, for logs and the bundle."""
    if not val:
        return float(logs["loss"])
    return val["clip_accuracy"] if monitor_max else val["loss"]


def _check_state_dir(state_dir: Path) -> None:
    """The state folder is deleted when training starts afresh and when the stage ends: refuse one that holds
    anything but a training state (or atomic_path's leftover temporaries), so a wrong --state deletes no files."""
    if not state_dir.exists():
        return
    if not state_dir.is_dir():
        raise OutputError(f"{state_dir}: exists and is not a folder; cannot keep the training state there")
    ours = (STATE_FILE, LAST_MODEL, BEST_WEIGHTS)
    others = [p.name for p in state_dir.iterdir()
              if p.name not in ours and not any(p.name.startswith(f".{name}.") for name in ours)
              and not CHECKPOINT.fullmatch(p.name.lstrip(".").split(".tmp-")[0])]
    if others:
        raise OutputError(f"{state_dir}: holds {others[0]!r}, not a training state; refusing to delete it: choose "
                          "another --state folder or remove it yourself")


def _load_state(state_dir: Path, key: str, train_cfg: TrainConfig | None = None,
                log: Callable[[str], None] | None = None) -> dict | None:
    """The saved loop state if it belongs to this very run (same params, data and seed), else None.

    ``train_cfg``: also None when the state went on past where a run of these ``train.epochs`` and
    ``train.patience`` stops (both are left out of the key so that a longer budget resumes): it holds a
    model trained longer than this run's, which a resume could only hand on."""
    try:
        state = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        return None
    if not (state_dir / state.get("last_file", LAST_MODEL)).exists() or \
            not (state_dir / state.get("best_file", BEST_WEIGHTS)).exists():
        return None
    if train_cfg is not None and (past := _trained_past(state, train_cfg)):
        if log is not None:
            log(f"{state_dir}: the interrupted run trained {past}; starting afresh")
        return None
    return state


def _trained_past(state: dict, cfg: TrainConfig) -> str | None:
    """Why a saved state went on past where a run of ``cfg`` stops, or None."""
    epoch = int(state.get("epoch", 0))
    if epoch > cfg.epochs:
        return f"{epoch} epochs, more than train.epochs: {cfg.epochs}"
    waits = state.get("waits")
    if isinstance(waits, list) and len(waits) == epoch:
        stop = next((i + 1 for i, wait in enumerate(waits) if wait >= cfg.patience), None)
        if stop is not None and stop < epoch:
            return f"{epoch} epochs, where train.patience: {cfg.patience} stops after epoch {stop}"
    return None


def _prune_checkpoints(state_dir: Path, state: dict) -> None:
    """Remove the checkpoint files the state just written no longer names."""
    keep = {state.get("last_file", LAST_MODEL), state.get("best_file", BEST_WEIGHTS)}  # an older state's names
    for path in state_dir.iterdir():
        if path.name not in keep and (CHECKPOINT.fullmatch(path.name) or path.name in (LAST_MODEL, BEST_WEIGHTS)):
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# The stage


def _best_params(best_params_path: str | Path | None) -> dict:
    if best_params_path is None or not Path(best_params_path).exists():
        return {}
    best = read_json_object(best_params_path, ConfigError)  # the tune stage's output: a corrupt one is named
    for section in ("model", "train"):
        if not isinstance(best.get(section, {}), dict):
            raise ConfigError(f"{best_params_path}: {section!r} must be a mapping of parameters")
    return best


def _tuned(params: Params, best: dict, section: str) -> dict:
    """The tune stage's choices for ``section`` in ``best`` (a read best_params.json); none from a search
    (``"source": "tune"``) while ``tune.enabled`` is false, which means "train with params.yaml's values": a
    best_params.json left by an earlier search (the default path) applied its r, dropout and learning rate
    without a word."""
    if not params.tune.enabled and best.get("source") == "tune":
        return {}
    return best.get(section, {})


def _resolved(cls, base, section: str, params: Params, best_params_path):
    """``base`` (a params.yaml section) with :func:`_tuned`'s choices applied, checked as ``cls``; a tuned value
    that does not fit names the file it came from."""
    tuned = _tuned(params, _best_params(best_params_path), section)
    try:
        return from_dict(cls, {**base.__dict__, **tuned}, section)
    except ConfigError as exc:
        if not tuned:
            raise
        raise ConfigError(f"{best_params_path}: {exc} (the tune stage's choices do not fit params.yaml; run "
                          "`genre-se tune` again)") from None


def _ratios_source(params: Params, best_params_path: str | Path | None) -> str:
    """Where the trained r comes from, in words: the tune stage's file, or params.yaml and why."""
    if not params.model.se:
        return "model.se is false: no SE blocks"
    best = _best_params(best_params_path)
    if _tuned(params, best, "model").get("reduction_ratios") is not None:
        if best.get("source") == "params":  # the stage's pass-through, tuning off
            return f"model.reduction_ratios, passed through {best_params_path}; tune.enabled is false"
        return f"tuned: {best_params_path}"
    if not params.tune.enabled:
        return "model.reduction_ratios; tune.enabled is false"
    if best_params_path is None:  # the caller asked for params.yaml's (the CV, the study)
        return "model.reduction_ratios"
    return (f"model.reduction_ratios: no tuned value in {best_params_path}; run `genre-se tune` first to "
            "train with the tuned r")


def resolve_model_config(params: Params, best_params_path: str | Path | None) -> ModelConfig:
    """params.model with the tune stage's choices (``best_params.json``: ``{"model": {...}}``) applied."""
    return _resolved(ModelConfig, params.model, "model", params, best_params_path)


def resolve_train_config(params: Params, best_params_path: str | Path | None) -> TrainConfig:
    """params.train with a tuned learning rate (``{"train": {...}}``) applied."""
    return _resolved(TrainConfig, params.train, "train", params, best_params_path)


def calibration_record(model, store: FeatureStore, valid_rows: np.ndarray, fit: bool | float, uncertain_below: float,
                       log: Callable[[str], None] | None = None, svm=None, embedding_svm=None) -> dict:
    """The bundle's ``extra["calibration"]``: a temperature fitted on the validation clips (clip-level NLL of
    the mean of temperature-scaled segment probabilities, as prediction computes it) with the clip ECE
    before and after. Without validation clips (``train.fit_all``) or with ``fit`` false, ``T = 1``.

    ``fit`` a number (``train.calibrate: 1.6``): that temperature, fitted elsewhere (the recipe's out-of-fold
    clips, ``study/ensemble.py``), recorded with ``fit_on: "fixed"``; the ECE before and after still describe the
    validation clips where there are some.

    ``svm`` (``model.fusion: svm``): the temperature scales the fused clip distribution (the mean of the CNN's,
    untempered, and the SVM's), so it is fitted on the validation clips' fused distributions.

    ``embedding_svm`` (``model.classifier: svm``): the temperature scales the head's clip distributions.

    Either way ``cnn_temperature`` is the softmax's own segment temperature, fitted on the same clips (the given
    one for ``fit`` a number, 1 where ``temperature`` is 1): prediction applies it when the CNN answers alone
    (``--softmax``, ``--no-fusion``), since the head's temperature was fitted on another distribution. Without
    a head or fusion it is ``temperature``.
    """
    import dataclasses

    import pandas as pd

    from .calibration import T_MAX, T_MIN, Calibration, calibrate

    fixed = None if isinstance(fit, bool) else float(fit)
    if len(valid_rows) == 0:
        # nothing held out: T = 1 (fit_on null), or the given one; the softmax's likewise
        record = Calibration(uncertain_below=uncertain_below, cnn_temperature=1.0) if fixed is None else \
            Calibration(temperature=fixed, uncertain_below=uncertain_below, fit_on="fixed", cnn_temperature=fixed)
        if log is not None and fit is True:
            log("calibration: no validation clips (train.fit_all, or an empty valid split), temperature 1")
        return record.to_dict()
    codes, uniques = pd.factorize(store.table["clip_id"].to_numpy()[valid_rows], sort=False)
    first = np.zeros(len(uniques), dtype=np.intp)
    first[codes[::-1]] = np.arange(len(codes))[::-1]
    labels = store.table["label_index"].to_numpy()[valid_rows][first]
    softmax = predict_rows(model, store, valid_rows)  # the softmax's segments
    # the softmax's own temperature, for when it answers alone
    cnn = calibrate(softmax, codes, labels, uncertain_below=uncertain_below, fit=fit is True, fit_on="val",
                    temperature=fixed)
    if svm is not None:  # one "segment" per clip: the fused distribution
        from .calibration import clip_distributions
        from .fusion import fuse, svm_clip_distributions

        probs = fuse(clip_distributions(softmax, codes, len(uniques)),
                     svm_clip_distributions(svm, store, [str(c) for c in uniques]))
    elif embedding_svm is not None:  # one "segment" per clip: the head's distribution (same clip order)
        from .embedding_svm import embedding_svm_distributions

        _, probs = embedding_svm_distributions(embedding_svm, model, store, valid_rows)
    headed = svm is not None or embedding_svm is not None
    record = cnn if not headed else calibrate(probs, np.arange(len(uniques)), labels, uncertain_below=uncertain_below,
                                              fit=fit is True, fit_on="val", temperature=fixed)
    record = dataclasses.replace(record, cnn_temperature=cnn.temperature)
    if log is not None:
        how = "given" if fixed is not None else "fitted"
        alone = (f"; the softmax alone: temperature {cnn.temperature:.3f}, clip ECE {cnn.ece_before:.3f} -> "
                 f"{cnn.ece_after:.3f}") if headed else ""
        log(f"calibration on {record.n_clips} validation clips: temperature {record.temperature:.3f} ({how}), "
            f"clip ECE {record.ece_before:.3f} -> {record.ece_after:.3f}{alone}")
        if fixed is None and not all(T_MIN * 1.001 < t < T_MAX / 1.001 for t in (record.temperature, cnn.temperature)):
            log("calibration: the temperature is at the edge of its search range; the validation split is "
                "probably too small to calibrate on")
    return record.to_dict()


def familiarity_of(model, store: FeatureStore, train_rows: np.ndarray, valid_rows: np.ndarray,
                   quantile: float | None, log: Callable[[str], None] | None = None):
    """The bundle's familiarity statistics (:mod:`genre_se.familiarity`): the training segments' embeddings,
    the threshold from the validation clips. None when ``quantile`` is None or nothing is held out
    (``train.fit_all``: no clip the model has not seen to say how far new in-domain clips lie)."""
    from .familiarity import fit_familiarity
    from .model import embedding_model

    if quantile is None or len(valid_rows) == 0:
        if log is not None and quantile is not None:
            log("familiarity: no validation clips (train.fit_all, or an empty valid split), no unfamiliar flag in "
                "the bundle")
        return None
    embed = embedding_model(model)
    clip_ids = store.table["clip_id"].to_numpy()[valid_rows]
    valid = predict_rows(embed, store, valid_rows)
    reference = [valid[clip_ids == clip] for clip in dict.fromkeys(clip_ids)]
    stats = fit_familiarity(predict_rows(embed, store, train_rows), reference, quantile)
    if log is not None:
        log(f"familiarity: {stats.n_segments} training segments; a file is unfamiliar beyond distance "
            f"{stats.threshold:.1f} (the {quantile:.2f} quantile of {stats.n_reference} validation clips)")
    return stats


def save_bundle_familiarity(bundle_dir: str | Path, stats) -> None:
    """Store ``stats`` in the bundle, tied to its ``model.keras`` (predict refuses them for another model)."""
    from .bundle import MODEL_FILE
    from .familiarity import save_familiarity
    from .fileio import file_sha1

    save_familiarity(bundle_dir, dataclasses.replace(stats, model_sha1=file_sha1(Path(bundle_dir) / MODEL_FILE)))


def _bundle_and_its_store(bundle_dir: Path, store_dir: str | Path):
    """The bundle (Keras) and the feature store it was trained on, refused unless features and labels match."""
    from .bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    store = FeatureStore.open(store_dir)
    ours = {k: v for k, v in dataclasses.asdict(store.features).items() if k != "workers"}  # workers: speed only
    theirs = {k: v for k, v in bundle.features.items() if k != "workers"}
    if ours != theirs:
        raise ModelError(f"{store_dir}: its features {ours} are not the bundle's {theirs}")
    if list(store.labels) != list(bundle.labels):
        raise ModelError(f"{store_dir}: its labels {list(store.labels)} are not the bundle's {bundle.labels}")
    return bundle, store


def add_fusion(bundle_dir: str | Path, store_dir: str | Path, seed: int | None = None,
               log: Callable[[str], None] | None = None) -> Path:
    """Give a trained bundle the fusion SVM (``model.fusion: svm``) without training its CNN again: the SVM on
    the clip statistics of the store's training clips (every clip for a ``train.fit_all`` bundle), the
    temperature refitted on the fused validation distributions, as the train stage would have done
    (``genre-se fusion``). The store must be the bundle's own, built with ``model.fusion: svm``.
    """
    return _add_svm(bundle_dir, store_dir, seed, log, "fusion")


def add_embedding_svm(bundle_dir: str | Path, store_dir: str | Path, seed: int | None = None,
                      log: Callable[[str], None] | None = None) -> Path:
    """Give a trained bundle the SVM head on its embeddings (``model.classifier: svm``) without training its
    network again: fitted on the mean embeddings of the store's training clips (every clip for a
    ``train.fit_all`` bundle), the temperature refitted on the head's validation distributions, as the train
    stage would have done (``genre-se classifier``). The store must be the bundle's own.
    """
    return _add_svm(bundle_dir, store_dir, seed, log, "classifier")


def _add_svm(bundle_dir: str | Path, store_dir: str | Path, seed: int | None, log, kind: str) -> Path:
    from .bundle import META_FILE, read_bundle_meta
    from .fileio import write_text

    bundle_dir = Path(bundle_dir)
    bundle, store = _bundle_and_its_store(bundle_dir, store_dir)
    other = "classifier" if kind == "fusion" else "fusion"
    if bundle.model_config.get(other, "none") not in ("none", "softmax"):
        raise ModelError(f"{bundle_dir}: the bundle has {other}: svm; the embedding SVM and late fusion are "
                         "either-or")
    recipe = bundle.extra.get("train_config") or {}
    if recipe.get("fit_all"):
        train_rows, valid_rows = np.arange(len(store.table)), np.zeros(0, dtype=np.int64)
    else:
        train_rows, valid_rows = store.rows("train"), store.rows("valid")
    seed = int(bundle.extra.get("seed", 0) if seed is None else seed)
    old = bundle.extra.get("calibration") or {}
    if kind == "fusion":
        from .fusion import fit_store_svm, save_svm

        svm = fit_store_svm(store, train_rows, seed)
        heads, record = {"svm": svm}, _fusion_record(svm)
    else:
        from .embedding_svm import fit_embedding_svm, save_embedding_svm as save_svm

        svm = fit_embedding_svm(bundle.model, store, train_rows, seed)
        heads, record = {"embedding_svm": svm}, _classifier_record(svm)
    calibration = calibration_record(bundle.model, store, valid_rows, recipe.get("calibrate", True),
                                     old.get("uncertain_below", 0.4), log, **heads)
    save_svm(bundle_dir, svm)
    meta = read_bundle_meta(bundle_dir)
    meta["model_config"][kind] = "svm"
    meta.setdefault("extra", {}).update({"calibration": calibration, kind: record})
    write_text(bundle_dir / META_FILE, json.dumps(meta, indent=2, allow_nan=False) + "\n")
    return bundle_dir


def _classifier_record(svm) -> dict:
    return {"kind": "svm", "rule": "SVM of the clip's mean embedding, then T",
            "n_parameters": svm.n_parameters, "n_support_vectors": int(len(svm.support_vectors))}


def _fusion_record(svm) -> dict:
    return {"kind": "svm", "rule": "mean of the CNN's clip distribution and the SVM's, then T",
            "n_parameters": svm.n_parameters, "n_support_vectors": int(len(svm.support_vectors))}


def add_familiarity(bundle_dir: str | Path, store_dir: str | Path, quantile: float = 0.95,
                    log: Callable[[str], None] | None = None) -> Path:
    """Fit familiarity statistics for an existing bundle from the feature store it was trained on (its train
    and valid splits, as the train stage uses them) and store them in the bundle: ``genre-se familiarity``,
    for bundles trained before the train stage wrote them. The store must be the bundle's own (same features).
    """
    from .bundle import META_FILE, read_bundle_meta
    from .fileio import write_text

    bundle_dir = Path(bundle_dir)
    bundle, store = _bundle_and_its_store(bundle_dir, store_dir)
    stats = familiarity_of(bundle.model, store, store.rows("train"), store.rows("valid"), quantile, log)
    if stats is None:
        raise ModelError(f"{store_dir}: no validation clips to set the threshold on")
    save_bundle_familiarity(bundle_dir, stats)
    meta = read_bundle_meta(bundle_dir)
    meta.setdefault("extra", {})["familiarity"] = stats.record()
    write_text(bundle_dir / META_FILE, json.dumps(meta, indent=2, allow_nan=False) + "\n")
    return bundle_dir


def run_train(
    params: Params,
    store_dir: str | Path = "data/features",
    bundle_dir: str | Path = "models/bundle",
    state_dir: str | Path = "models/train-state",
    live_dir: str | Path = "dvclive",
    best_params_path: str | Path | None = "models/best_params.json",
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """The `genre-se train` stage: train on the train split, early-stop on valid, write the bundle.

    ``train.fit_all`` trains on every clip of the store instead (the final model, once cross-validation has
    chosen the recipe and the number of epochs); with no validation clips the epoch with the lowest training
    loss is kept, and the evaluate stage's test-split numbers are no longer held out (its k-fold CV still is).
    """
    from dvclive import Live

    from .bundle import save_bundle
    from .litert import export_litert

    store = FeatureStore.open(store_dir)
    model_cfg = resolve_model_config(params, best_params_path)
    train_cfg = resolve_train_config(params, best_params_path)
    if log is not None:
        log(f"reduction ratios {model_cfg.reduction_ratios} ({_ratios_source(params, best_params_path)})")
    if train_cfg.fit_all:  # the final model: every clip, no held-out split; the lowest training loss is kept
        train_rows, valid_rows = np.arange(len(store.table)), np.zeros(0, dtype=np.int64)
    else:
        train_rows, valid_rows = store.rows("train"), store.rows("valid")
    # DVCLive continues its curves only when the loop resumes this very run: an abandoned run of other params or
    # data starts afresh, and so must the curves (dvc.yaml keeps dvclive/ between runs)
    resuming = _load_state(Path(state_dir), _state_key(model_cfg, train_cfg, store, train_rows, params.seed),
                           train_cfg) is not None
    with Live(str(live_dir), resume=resuming, save_dvc_exp=False, dvcyaml=False) as live:
        result = train_model(
            store, model_cfg, train_cfg, train_rows=train_rows, valid_rows=valid_rows,
            seed=params.seed, state_dir=state_dir, live=live, log=log,
        )
    svm = None
    if model_cfg.fusion == "svm":
        from .fusion import fit_store_svm

        svm = fit_store_svm(store, train_rows, params.seed)
        if log is not None:
            log(f"fusion: SVM on {len(svm.support_vectors)} support vectors of "
                f"{int(store.table.iloc[train_rows]['clip_id'].nunique())} training clips")
    head = None
    if model_cfg.classifier == "svm":
        from .embedding_svm import fit_embedding_svm

        head = fit_embedding_svm(result.model, store, train_rows, params.seed)
        if log is not None:
            log(f"classifier: SVM on the mean embeddings of {int(store.table.iloc[train_rows]['clip_id'].nunique())} "
                f"training clips, {len(head.support_vectors)} support vectors")
    extra = {
        "best_epoch": result.best_epoch,
        "monitor": params.train.monitor,
        "best_score": result.best_score,
        "train_clips": int(store.table.iloc[train_rows]["clip_id"].nunique()),
        "seed": params.seed,
        "train_config": dataclasses.asdict(train_cfg),  # the recipe, for provenance (MODEL.md, predict --format json)
        # features_sha1: the store's values and tables, so two bundles can be told to have learned the same data
        "training_data": {"root": str(params.data.root), "builtin_corpus": is_builtin_corpus(params.data.root),
                          "features_sha1": store.content_digest},
        "calibration": calibration_record(result.model, store, valid_rows, train_cfg.calibrate,
                                          params.predict.uncertain_below, log, svm=svm, embedding_svm=head),
    }
    if svm is not None:
        extra["fusion"] = _fusion_record(svm)
    if head is not None:
        extra["classifier"] = _classifier_record(head)
    familiarity = familiarity_of(result.model, store, train_rows, valid_rows, params.predict.unfamiliar_quantile,
                                 log)
    if familiarity is not None:
        extra["familiarity"] = familiarity.record()
    write_svm = None
    if svm is not None or head is not None:
        from .embedding_svm import save_embedding_svm
        from .fusion import save_svm

        def write_svm(staging):
            if svm is not None:
                save_svm(staging, svm)
            if head is not None:
                save_embedding_svm(staging, head)
    save_bundle(bundle_dir, result.model, store.labels, store.features, model_cfg, extra=extra, write_files=write_svm)
    if familiarity is not None:  # tied to the model.keras just written
        save_bundle_familiarity(bundle_dir, familiarity)
    # the LiteRT export makes `genre-se predict` start without TensorFlow; before the state is removed, so
    # a failed export is retried by a rerun without training again
    export = export_litert(bundle_dir)
    if log is not None:
        log(f"LiteRT export: max |p_litert - p_keras| = {export['parity']['max_abs_diff']['genre']:.1e}")
    shutil.rmtree(state_dir, ignore_errors=True)  # finished: the next run starts fresh
    return result
