"""genre-se: music genre classification with a Squeeze-and-Excitation CNN over log-mel spectrograms.

Importing the package is cheap: TensorFlow and librosa are imported only by the modules that need them.
"""

import os as _os

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lines) is noise for a CLI user; set before
# any submodule can import TensorFlow.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .errors import AudioError, ConfigError, DatasetError, GenreSEError, ModelError, OutputError

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "ConfigError",
    "DatasetError",
    "GenreClassifier",
    "GenreSEError",
    "ModelError",
    "OutputError",
    "__version__",
]

#: Names served lazily from submodules, so `import genre_se` stays cheap (no TensorFlow until used).
_LAZY = {"GenreClassifier": "inference"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
