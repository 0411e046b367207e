"""Datasets with ground-truth factors (docs/contracts.md, "Datasets"): ``make_dataset(name, **options)``."""

from __future__ import annotations

from typing import Any

import torch

from .base import Dataset, GroundTruthDataset
from .blobs import Blobs
from .files import DataFileError, FileDataset, check_likelihood_support
from .gaussian import GaussianSource, rate_for_distortion, water_filling

__all__ = ["Dataset", "GroundTruthDataset", "Blobs", "FileDataset", "DataFileError", "GaussianSource",
           "check_likelihood_support", "make_dataset", "rate_for_distortion", "water_filling"]  # fmt: skip


def make_dataset(name: str, device: torch.device | str = "cpu", **options: Any) -> Dataset:
    """Build a dataset by name: ``dsprites``, ``blobs``, ``gaussian`` or ``file`` (options as in the train config)."""
    if name == "dsprites":
        from .dsprites import DSprites

        return DSprites(device=device, **options)
    if name == "blobs":
        return Blobs(device=device, **options)
    if name == "gaussian":
        return GaussianSource(device=device, **options)
    if name == "file":
        return FileDataset(device=device, **options)
    raise ValueError(f"dataset.name: expected dsprites, blobs, gaussian or file, got {name!r}")
