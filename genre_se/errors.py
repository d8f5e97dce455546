"""One exception family for the whole package.

Library code raises these; only :mod:`genre_se.cli` turns them into messages and exit codes.
"""

from __future__ import annotations


class GenreSEError(Exception):
    """Base class of every error genre-se raises on purpose."""


class ConfigError(GenreSEError, ValueError):
    """A parameter in ``params.yaml`` (or passed in code) is unknown, missing or out of range."""


class AudioError(GenreSEError):
    """An audio file cannot be read: missing, empty, truncated, corrupt or not audio."""


class DatasetError(GenreSEError):
    """A dataset root, layout, manifest or split cannot be used."""


class ModelError(GenreSEError):
    """A model bundle is missing, corrupt or of an unsupported format version."""


class OutputError(GenreSEError):
    """An output cannot be written: its folder cannot be made, the path is a folder, no permission, disk full."""
