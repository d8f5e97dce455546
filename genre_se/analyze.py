"""Class-wise SE excitations: does a block gate its channels differently for different genres?

Hu et al. (SENet, 2018, Fig. 6) plot, for each SE block, the mean excitation of every channel over the
images of one class: early blocks give nearly the same curve for every class (general features), later
ones differ by class (specialised features). :func:`class_excitations` computes the same on held-out clips:
every segment's gates (``model.excitations``), averaged per clip (so a clip counts once however long it
is), then per genre. :func:`plot_excitations` draws one panel per block and one line per genre.
``genre-se analyze`` and ``notebooks/se_excitations.ipynb`` are thin over these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DatasetError, ModelError
from .fileio import atomic_path, write_csv

SPLITS = ("train", "valid", "test", "all")


@dataclass
class ClassExcitations:
    """Mean SE gates per block and genre, plus the per-clip means they were averaged from.

    Attributes
    ----------
    labels : list of str
        Genres, the row order of every ``means`` array.
    blocks : list of str
        SE layer names (``block1_se``, ...), in block order.
    means : list of ndarray
        One ``(n_genres, channels)`` array per block: the genre's mean gate per channel (NaN for a genre
        without clips in the rows).
    clip_means : list of ndarray
        One ``(n_clips, channels)`` array per block: a clip's gates averaged over its segments.
    clip_labels : ndarray
        Label index of each clip (rows of ``clip_means``).
    clip_ids : list of str
    control : ClassExcitations, optional
        The same clips through an untrained copy of the model (:func:`untrained_copy`): what the gates show
        about genre without any learning, since the input's genre differences reach them through any weights.
    """

    labels: list
    blocks: list
    means: list
    clip_means: list
    clip_labels: np.ndarray
    clip_ids: list
    control: ClassExcitations | None = None

    @property
    def clips_per_genre(self) -> np.ndarray:
        return np.bincount(self.clip_labels, minlength=len(self.labels))

    def summary(self, permutations: int = 200, seed: int = 0) -> pd.DataFrame:
        """One row per block: channels, mean gate, genre spread and eta squared against its chance level.

        ``genre_spread`` is the mean over channels of the standard deviation of the genre means (how far
        apart the lines of a panel are; it grows with how much the gates vary at all, and an untrained gate
        barely moves). ``eta_squared`` is the share of the clip-to-clip variance of the
        gates that genre explains, averaged over channels (0: class-agnostic, 1: fully class-specific).
        With few clips per genre it is large by chance alone (about (genres - 1) / (clips - 1)), so
        ``eta_squared_chance`` is its mean over ``permutations`` shuffles of the clip labels and
        ``eta_squared_excess`` the difference: what the genre explains beyond chance, learned or not (the genre
        differences of the input reach the gates through any weights: compare an untrained copy). NaN when there are
        no more clips than genres (every clip its own group: 1 whatever the gates), and for a block whose
        gates do not vary at all (a dead SE bottleneck: every hidden ReLU off, the gates a constant).

        ``nearest_genre``: the share of clips whose genre is the nearest genre centroid of the gates (each
        channel standardised over the clips, the clip itself left out of its genre's centroid), over the
        ``nearest_genre_clips`` clips whose genre has another clip; ``nearest_genre_chance`` its mean over the
        same label shuffles. Unlike the spreads and eta squared it asks whether the gates as a whole point to the
        genre, one clip at a time, so it can be pooled over models that share no channels (the fold models).
        """
        present = self.clips_per_genre > 0
        measurable = too_few_clips(self.clip_labels) is None
        rng = np.random.default_rng(seed)
        shuffles = [rng.permutation(self.clip_labels) for _ in range(permutations)] if measurable else []
        rows = []
        for name, means, clips in zip(self.blocks, self.means, self.clip_means):
            eta = _eta_squared(clips, self.clip_labels) if measurable else float("nan")
            chance = float(np.mean([_eta_squared(clips, s) for s in shuffles])) if measurable else float("nan")
            hits = nearest_genre_hits(clips, self.clip_labels)
            nearest_chance = [np.mean(nearest_genre_hits(clips, s)) for s in shuffles] if len(hits) else []
            rows.append({
                "block": name,
                "channels": means.shape[1],
                "mean_excitation": float(np.mean(clips)),
                "genre_spread": float(np.mean(np.std(means[present], axis=0))),
                "eta_squared": eta,
                "eta_squared_chance": chance,
                "eta_squared_excess": eta - chance,
                "nearest_genre": float(np.mean(hits)) if len(hits) else float("nan"),
                "nearest_genre_chance": float(np.mean(nearest_chance)) if nearest_chance else float("nan"),
                "nearest_genre_clips": len(hits),
            })
        table = pd.DataFrame(rows)
        if self.control is not None:  # beside each statistic, the untrained copy's: only the difference is learned
            untrained = self.control.summary(permutations, seed)
            table["genre_spread_untrained"] = untrained["genre_spread"].to_numpy()
            table["eta_squared_excess_untrained"] = untrained["eta_squared_excess"].to_numpy()
            table["nearest_genre_untrained"] = untrained["nearest_genre"].to_numpy()
        return table

    def to_frame(self) -> pd.DataFrame:
        """Long table: block, genre, channel, excitation, clips (for CSV / DVC plots)."""
        parts = []
        counts = self.clips_per_genre
        for name, means in zip(self.blocks, self.means):
            genre, channel = np.meshgrid(np.arange(len(self.labels)), np.arange(means.shape[1]), indexing="ij")
            parts.append(pd.DataFrame({
                "block": name,
                "genre": np.asarray(self.labels)[genre.ravel()],
                "channel": channel.ravel(),
                "excitation": means.ravel(),
                "clips": counts[genre.ravel()],
            }))
        return pd.concat(parts, ignore_index=True)


def _varying(clips: np.ndarray) -> np.ndarray:
    """Channels whose gate differs between clips (a dead SE bottleneck's are one constant)."""
    return np.square(clips - clips.mean(axis=0)).sum(axis=0) > 1e-12


def with_genre_partner(labels: np.ndarray) -> np.ndarray:
    """Clips whose genre has another clip: the ones :func:`nearest_genre_hits` can ask about."""
    _, genre, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return counts[genre] >= 2


def too_few_clips(labels: np.ndarray) -> str | None:
    """Why eta squared or the nearest genre cannot be measured on these clips (they come out NaN), else None."""
    labels = np.asarray(labels)
    genres = len(np.unique(labels))
    if genres < 2 or len(labels) <= genres:  # more clips than genres: some genre has two (the nearest genre)
        return (f"{len(labels)} clips of {genres} genre(s): eta squared and the nearest genre need two genres and "
                f"more clips than genres")
    return None


def nearest_genre_hits(clips: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per clip whose genre has another clip (:func:`with_genre_partner`): is its genre the nearest genre centroid (leave-one-clip-out)?

    Channels are standardised over the clips first (scale-free: an untrained gate that barely moves counts as
    much as a trained one), so that a few high-variance channels do not decide alone. Empty when no genre has
    two clips or the gates do not vary.
    """
    varying = _varying(clips)
    if not varying.any() or len(np.unique(labels)) < 2:  # one genre: its centroid is the nearest whatever the gates
        return np.zeros(0, dtype=bool)
    z = clips[:, varying]
    z = (z - z.mean(axis=0)) / z.std(axis=0)
    genres = np.unique(labels)
    sums = np.stack([z[labels == g].sum(axis=0) for g in genres])
    counts = np.array([(labels == g).sum() for g in genres], dtype=float)
    own = np.searchsorted(genres, labels)
    distances = np.square(z[:, None, :] - (sums / counts[:, None])[None]).sum(axis=2)
    rows = np.flatnonzero(with_genre_partner(labels))
    # the clip left out of its own genre's centroid: (sum - x) / (n - 1) - x = n / (n - 1) * (mean - x)
    n = counts[own[rows]]
    distances[rows, own[rows]] *= np.square(n / (n - 1))
    return distances[rows].argmin(axis=1) == own[rows]


def _eta_squared(clips: np.ndarray, labels: np.ndarray) -> float:
    """Between-genre sum of squares over total sum of squares, per channel, averaged over channels."""
    grand = clips.mean(axis=0)
    total = np.square(clips - grand).sum(axis=0)
    between = np.zeros_like(grand)
    for label in np.unique(labels):
        group = clips[labels == label]
        between += len(group) * np.square(group.mean(axis=0) - grand)
    varying = _varying(clips)
    return float(np.mean(between[varying] / total[varying])) if varying.any() else float("nan")


def _check_compatible(bundle, store) -> None:
    if list(bundle.labels) != list(store.labels):
        raise DatasetError(f"{store.root}: the store's labels {store.labels} differ from the bundle's {bundle.labels}")
    same = bundle.feature_config.to_dict() | {"workers": 0} == store.features.to_dict() | {"workers": 0}
    if not same:
        raise DatasetError(f"{store.root}: the bundle was trained on other features than this store holds")


def class_excitations(bundle, store, rows: Sequence[int], batch_size: int = 512) -> ClassExcitations:
    """Mean SE excitation per block and genre over the clips of some store rows.

    Parameters
    ----------
    bundle : genre_se.bundle.ModelBundle
        A trained SE-CNN (a plain CNN has no gates: ModelError).
    store : genre_se.feature_store.FeatureStore
        Its features must be the bundle's (checked).
    rows : sequence of int
        Store rows to analyse, e.g. ``store.rows("test")``: held-out clips.
    """
    from .model import excitations

    _check_compatible(bundle, store)
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    if len(rows) == 0:
        raise DatasetError(f"{store.root}: no segments to analyse (the chosen split is empty)")
    table = store.table.iloc[rows]
    codes, clip_ids = pd.factorize(table["clip_id"], sort=False)
    counts = np.bincount(codes, minlength=len(clip_ids))[:, None]
    sums = None
    for start in range(0, len(rows), batch_size):
        x = np.asarray(store.segments[rows[start : start + batch_size]], dtype=np.float32)
        gates = excitations(bundle.model, x)
        if sums is None:
            sums = [np.zeros((len(clip_ids), g.shape[1])) for g in gates]
        for total, g in zip(sums, gates):
            np.add.at(total, codes[start : start + batch_size], g)
    clip_means = [total / counts for total in sums]
    first = pd.Series(np.arange(len(codes))).groupby(codes).first().to_numpy()
    clip_labels = table["label_index"].to_numpy()[first].astype(int)
    from .model import se_blocks

    names = [layer.name for layer in se_blocks(bundle.model)]
    means = _genre_means(clip_means, clip_labels, len(store.labels))
    return ClassExcitations(list(store.labels), names, means, clip_means, clip_labels, list(clip_ids))


def _genre_means(clip_means: list, clip_labels: np.ndarray, n_genres: int) -> list:
    means = []
    for clips in clip_means:
        per_genre = np.full((n_genres, clips.shape[1]), np.nan)
        for label in np.unique(clip_labels):
            per_genre[label] = clips[clip_labels == label].mean(axis=0)
        means.append(per_genre)
    return means


def combine(parts: Sequence[ClassExcitations]) -> ClassExcitations:
    """Pool the clips of several analyses of ONE model (e.g. of several splits or stores).

    Never pool different models (the fold models of a cross-validation): channel k of one model has
    nothing to do with channel k of another, so averaging them washes out exactly what is looked for.
    Compare such models through their :meth:`ClassExcitations.summary` per block instead.
    """
    if not parts:
        raise DatasetError("nothing to combine: no excitation analyses given")
    first = parts[0]
    for part in parts[1:]:
        shapes = [m.shape[1] for m in part.means] != [m.shape[1] for m in first.means]
        if part.labels != first.labels or part.blocks != first.blocks or shapes:
            raise ModelError("cannot combine excitations of models with different genres or SE blocks")
    clip_means = [np.concatenate([p.clip_means[b] for p in parts]) for b in range(len(first.blocks))]
    clip_labels = np.concatenate([p.clip_labels for p in parts])
    clip_ids = [c for p in parts for c in p.clip_ids]
    return ClassExcitations(first.labels, first.blocks, _genre_means(clip_means, clip_labels, len(first.labels)),
                            clip_means, clip_labels, clip_ids)


def split_rows(store, split: str) -> np.ndarray:
    """Rows of one split, of several (``"valid,test"``), of a k-fold fold (``"fold2"``), or of the whole
    store (``"all"``)."""
    wanted = [s.strip() for s in split.split(",") if s.strip()]
    folds = [s for s in wanted if s.startswith("fold") and s[4:].isdigit()]
    bad = [s for s in wanted if s not in SPLITS and s not in folds]
    if not wanted or bad:
        raise DatasetError(f"--split: unknown split {bad[0] if bad else split!r} "
                           f"(one or more of {', '.join(SPLITS)}, or foldK)")
    if folds and "fold" not in store.table.columns:
        raise DatasetError(f"--split: {store.root} has no folds (built with evaluate.folds: 1)")
    if "all" in wanted:
        return np.arange(len(store.table))
    parts = [store.rows(fold=int(s[4:])) if s in folds else store.rows(s) for s in wanted]
    return np.sort(np.concatenate(parts))


def clip_rows(store, clip_ids: Sequence[str]) -> np.ndarray:
    """Rows of the given clips (e.g. a fold model's ``extra["test_clips"]``)."""
    missing = sorted(set(clip_ids) - set(store.table["clip_id"]))
    if missing:
        raise DatasetError(f"{store.root}: clip {missing[0]!r} is not in the feature store")
    return np.flatnonzero(store.table["clip_id"].isin(set(clip_ids)).to_numpy())


# --------------------------------------------------------------------------------------------------
# Plot


def excitation_figure(exc: ClassExcitations, title: str | None = None):
    """A matplotlib Figure: one panel per SE block (top to bottom), one line per genre, like SENet Fig. 6.

    Built with the object-oriented API (no pyplot, no global backend change), so a notebook shows it inline
    and a script saves it.
    """
    from matplotlib.figure import Figure

    n = len(exc.blocks)
    fig = Figure(figsize=(10, 2.2 * n + 0.8))
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    colors = [f"C{i}" for i in range(10)]
    summary = exc.summary().set_index("block")
    counts = exc.clips_per_genre
    for ax, name, means in zip(axes, exc.blocks, exc.means):
        for i, genre in enumerate(exc.labels):
            if counts[i]:
                ax.plot(np.arange(means.shape[1]), means[i], color=colors[i % 10], lw=1.0, label=genre)
        row = summary.loc[name]
        eta = "" if np.isnan(row["eta_squared"]) else \
            f", eta² {row['eta_squared']:.2f} (chance {row['eta_squared_chance']:.2f})"
        ax.set_title(f"{name}: {int(row['channels'])} channels, genre spread {row['genre_spread']:.3f}{eta}",
                     fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlim(0, max(means.shape[1] - 1, 1))
        ax.set_ylabel("excitation")
    axes[-1].set_xlabel("channel index")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.suptitle(title or f"Mean SE excitation per genre ({len(exc.clip_ids)} clips)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_excitations(exc: ClassExcitations, path: str | Path, title: str | None = None) -> Path:
    """Write :func:`excitation_figure` as a PNG (atomically) and return its path."""
    fig = excitation_figure(exc, title)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


# --------------------------------------------------------------------------------------------------
# The command


def not_held_out(extra: dict, clip_ids, splits=(), store_digest: str | None = None) -> str | None:
    """Why the clips are not all held out from the bundle that produced ``extra``, or None.

    The store's split is only the pipeline's: a ``train.fit_all`` bundle trained on every clip, a CV fold
    model (study ``--keep-models``) records its own test clips, which are not the store's test split, and the
    train split is the bundle's training data. ``splits``: the store splits of the clips; ``store_digest``:
    the store's content digest, compared with the one the bundle trained on (another store: unknown)."""
    clip_ids = list(dict.fromkeys(clip_ids))
    trained_on = (extra.get("training_data") or {}).get("features_sha1")
    own_store = not (trained_on and store_digest and trained_on != store_digest)  # else its splits are not the bundle's
    if (extra.get("train_config") or {}).get("fit_all"):
        return (f"in-sample: the bundle trained on every clip of its store (train.fit_all), these {len(clip_ids)} "
                "included")
    if "test_clips" in extra:
        held_out = set(extra["test_clips"])
        seen = [c for c in clip_ids if c not in held_out]
        if seen:
            return (f"in-sample: {len(seen)} of these {len(clip_ids)} clips are not among the fold model's own "
                    f"{len(held_out)} test clips (extra.test_clips): it trained on them")
    elif own_store and "train" in set(splits):
        return "in-sample: the train split is what the bundle trained on"
    return None


def untrained_copy(bundle, seed: int = 0):
    """``bundle`` with its model's weights drawn afresh: the same architecture and input normalisation (kept in
    the layers' config), no learning. The control for :class:`ClassExcitations` statistics."""
    import dataclasses

    import keras

    keras.utils.set_random_seed(seed)
    return dataclasses.replace(bundle, model=keras.models.clone_model(bundle.model))


def run_analyze(model_dir: str | Path, store_dir: str | Path, split: str = "test", out_png: str | Path | None = None,
                table_csv: str | Path | None = None, warn: Callable[[str], None] | None = None) -> ClassExcitations:
    """`genre-se analyze`: class-wise excitations of a bundle on a split of a store, as a PNG and a CSV.

    ``warn`` is told when the clips are not held out from the bundle (:func:`not_held_out`); the figure's title
    says so too."""
    from .bundle import load_bundle
    from .feature_store import FeatureStore
    from .model import se_blocks

    bundle = load_bundle(model_dir)
    if not se_blocks(bundle.model):
        raise ModelError(f"{model_dir}: the model has no SE blocks (trained with model.se: false)")
    store = FeatureStore.open(store_dir)
    rows = split_rows(store, split)
    exc = class_excitations(bundle, store, rows)
    exc.control = class_excitations(untrained_copy(bundle), store, rows)
    splits = set(store.table["split"].iloc[rows]) if "split" in store.table.columns else set()
    note = not_held_out(bundle.extra, exc.clip_ids, splits, store.content_digest)
    if note is not None and warn is not None:
        warn(note)
    few = too_few_clips(exc.clip_labels)
    if few is not None and warn is not None:
        warn(f"{few}: try more clips (--split valid,test)")
    if out_png is not None:
        plot_excitations(exc, out_png, f"Mean SE excitation per genre: {split} clips of {Path(store_dir).name} "
                                        f"(n={len(exc.clip_ids)}{', IN-SAMPLE' if note else ''})")
    if table_csv is not None:
        write_csv(table_csv, exc.to_frame())
    return exc
