"""Dataset interface shared by every data source (DESIGN §3 "Datasets").

A :class:`Dataset` hands the trainer batches that are already on the training device, so that data loading is never
the bottleneck. A :class:`GroundTruthDataset` also knows the generative factors of each example: it samples factor
indices and *renders* them (procedural data), which is what the disentanglement metrics need.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
from torch import Tensor


class Dataset(ABC):
    """A finite or procedural source of examples with a fixed held-out split."""

    name: str = "dataset"
    #: shape of one example, e.g. ``(1, 64, 64)`` for images or ``(d,)`` for vectors.
    example_shape: tuple[int, ...]
    device: torch.device = torch.device("cpu")

    @property
    @abstractmethod
    def n_test(self) -> int:
        """Number of held-out examples."""

    @abstractmethod
    def to(self, device: torch.device | str) -> "Dataset":
        """Move the dataset's tensors to ``device`` (in place) and return ``self``."""

    @abstractmethod
    def train_batch(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """A batch drawn uniformly with replacement from the training split, on ``self.device``."""

    @abstractmethod
    def test_batches(self, batch_size: int) -> Iterator[Tensor]:
        """The held-out split, in a fixed order, in batches on ``self.device``."""

    @property
    def is_image(self) -> bool:
        return len(self.example_shape) == 3


class GroundTruthDataset(Dataset):
    """A procedural dataset over a full grid of discrete factors.

    Subclasses set ``factor_names`` and ``factor_sizes`` and implement :meth:`render`. The held-out split is a fixed
    seeded set of ``n_test`` distinct factor combinations; training batches are drawn from the others.
    """

    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]

    def _init_split(self, n_test: int | None, split_seed: int) -> None:
        total = self.num_combinations
        if n_test is None:
            n_test = min(10_000, max(1, total // 10))
        if not 0 < n_test < total:
            raise ValueError(f"dataset.n_test: expected 0 < n_test < {total} (the number of factor combinations), got {n_test}")
        g = torch.Generator().manual_seed(split_seed)
        perm = torch.randperm(total, generator=g)
        self._test_flat = perm[:n_test].sort().values
        self._train_flat = perm[n_test:].sort().values

    @property
    def num_combinations(self) -> int:
        return math.prod(self.factor_sizes)

    @property
    def n_test(self) -> int:
        return int(self._test_flat.numel())

    @property
    def test_factors(self) -> Tensor:
        """Factor indices of the held-out split, ``LongTensor[n_test, K]``."""
        return self.unravel(self._test_flat.to(self.device))

    def to(self, device: torch.device | str) -> "GroundTruthDataset":
        self.device = torch.device(device)
        self._test_flat = self._test_flat.to(self.device)
        self._train_flat = self._train_flat.to(self.device)
        self._move_tables(self.device)
        return self

    def _move_tables(self, device: torch.device) -> None:
        """Move any render tables a subclass keeps to ``device``."""

    def unravel(self, flat: Tensor) -> Tensor:
        """Row-major flat index → factor indices ``LongTensor[n, K]`` (last factor varies fastest)."""
        out = []
        for size in reversed(self.factor_sizes):
            out.append(flat % size)
            flat = torch.div(flat, size, rounding_mode="floor")
        return torch.stack(out[::-1], dim=1)

    def ravel(self, factors: Tensor) -> Tensor:
        flat = torch.zeros(factors.shape[0], dtype=torch.long, device=factors.device)
        for k, size in enumerate(self.factor_sizes):
            flat = flat * size + factors[:, k]
        return flat

    def sample_factors(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` factor-index rows, each factor uniform and independent (disentanglement_lib's protocol)."""
        cols = [torch.randint(size, (n,), generator=generator, device=generator.device) for size in self.factor_sizes]
        return torch.stack(cols, dim=1)

    @abstractmethod
    def render(self, factor_indices: Tensor) -> Tensor:
        """``LongTensor[n, K]`` of factor indices → ``FloatTensor[n, C, H, W]`` in [0, 1], on their device."""

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Tensor:
        pos = torch.randint(self._train_flat.numel(), (batch_size,), generator=generator, device=generator.device)
        return self.render(self.unravel(self._train_flat[pos.to(self.device)]))

    def test_batches(self, batch_size: int) -> Iterator[Tensor]:
        for start in range(0, self.n_test, batch_size):
            yield self.render(self.unravel(self._test_flat[start : start + batch_size]))
