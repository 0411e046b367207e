"""A single Gaussian blob at (x, y) on a dark canvas: two ground-truth factors (Burgess et al. 2018, §4.2, Fig. 2)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import GroundTruthDataset


class Blobs(GroundTruthDataset):
    """A blob of standard deviation ``sigma`` px whose centre moves over a ``grid × grid`` lattice of positions spanning
    the middle of the image (as dSprites' anchors do: from R/4 to 3R/4)."""

    name = "blobs"
    factor_names = ("posX", "posY")

    def __init__(self, resolution: int = 32, grid: int = 32, sigma: float = 2.0, n_test: int | None = None,
                 split_seed: int = 0, device: torch.device | str = "cpu"):  # fmt: skip
        if resolution < 8:
            raise ValueError(f"dataset.resolution: expected at least 8 px, got {resolution}")
        self.resolution, self.sigma = resolution, float(sigma)
        self.factor_sizes = (grid, grid)
        self.example_shape = (1, resolution, resolution)
        self._init_split(n_test, split_seed)
        self.to(device)

    def render(self, factor_indices: Tensor) -> Tensor:
        r = self.resolution
        grid = self.factor_sizes[0]
        device = factor_indices.device
        centres = r / 4 + (r / 2) * factor_indices.float() / max(grid - 1, 1)  # [n, 2] = (x, y) in pixels
        coords = torch.arange(r, device=device, dtype=torch.float32) + 0.5  # pixel centres
        gx = torch.exp(-((coords[None, :] - centres[:, :1]) ** 2) / (2 * self.sigma**2))  # [n, W]
        gy = torch.exp(-((coords[None, :] - centres[:, 1:]) ** 2) / (2 * self.sigma**2))  # [n, H]
        return (gy[:, None, :, None] * gx[:, None, None, :]).contiguous()
