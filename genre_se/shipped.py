"""The model shipped inside the package: installing a trained bundle there (a maintainer's step).

``scripts/train_shipped_model.sh`` trains it with the project's own stages from
``configs/shipped-gtzan-mini.yaml`` and ends with ``genre-se install-model``, which copies the bundle and its
LiteRT export into ``genre_se/pretrained/gtzan-mini/`` (package data). :func:`genre_se.inference.locate_bundle`
falls back to it when there is no ``--model`` and no pipeline model, so a fresh ``pip install`` can predict.
Only the files a classifier loads are copied: no training state, no pickles.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import ModelError
from .fileio import atomic_dir

#: what a shipped bundle holds: the Keras model (embeddings, analysis, --backend keras) and its LiteRT export
SHIPPED_FILES = ("bundle.json", "model.keras", "model.tflite", "frontend.npz", "litert.json")
#: shipped when the bundle has them: the familiarity statistics (predict's unfamiliar flag), the fusion SVM
#: (model.fusion) and the SVM head on the embeddings (model.classifier)
OPTIONAL_FILES = ("familiarity.npz", "svm.npz", "embedding_svm.npz")


def install_shipped(bundle_dir: str | Path, target: str | Path | None = None, quantize: str = "int8") -> Path:
    """Check that ``bundle_dir`` loads (Keras, safe mode) and has a matching LiteRT export, then copy it to
    ``target`` (default: the package's shipped model) atomically.

    ``quantize``: the LiteRT export the package ships. "int8" (default) re-exports with int8 weights: on the
    71 gtzan-mini clips it gave the float32 model's top-1 on every clip (probabilities within 0.02) at twice
    the files/s, which is what a fresh install's ``genre-se predict`` should feel like. "none" keeps the
    bundle's float32 export. ``--backend keras`` still serves the exact model either way.

    Raises
    ------
    ModelError
        The bundle does not load, has no (or a stale) LiteRT export, or lacks calibration; or ``target`` is
        a file or a non-empty folder that is not a model bundle.
    """
    from .bundle import _check_replaceable, load_bundle
    from .inference import SHIPPED_BUNDLE
    from .litert import load_litert_bundle

    source = Path(bundle_dir)
    target = Path(target) if target is not None else SHIPPED_BUNDLE
    _check_replaceable(target)  # installing replaces the target folder: never a user's folder of other files
    bundle = load_bundle(source)
    load_litert_bundle(source)  # raises ModelError when the export is missing or made from another model
    if "calibration" not in bundle.extra:
        raise ModelError(f"{source}: has no calibration record; train it with train.calibrate: true")
    with atomic_dir(target) as tmp:
        for name in SHIPPED_FILES + tuple(n for n in OPTIONAL_FILES if (source / n).is_file()):
            shutil.copy2(source / name, tmp / name)
        if quantize != "none":
            from .litert import export_litert

            export_litert(tmp, quantize=quantize)  # checked against Keras before it is recorded
    return target
