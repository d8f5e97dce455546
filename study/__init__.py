"""Experiments that read the pipeline's outputs (not part of the installed package)."""
