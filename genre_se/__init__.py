"""genre-se: music genre classification with a Squeeze-and-Excitation CNN over log-mel spectrograms.

Importing the package is cheap: TensorFlow and librosa are imported only by the modules that need them.
"""

from .errors import AudioError, ConfigError, DatasetError, GenreSEError, ModelError

__version__ = "0.1.0"

__all__ = ["AudioError", "ConfigError", "DatasetError", "GenreSEError", "ModelError", "__version__"]

import os as _os

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lines) is noise for a CLI user.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
