"""Dataset interface shared by every data source (docs/contracts.md, "Datasets").

A :class:`Dataset` hands the trainer batches that are already on the training device, so that data loading is never
the bottleneck. A :class:`GroundTruthDataset` also knows the generative factors of each example: it samples factor
indices and *renders* them (procedural data), which is what the disentanglement metrics need.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


class Dataset(ABC):
    """A finite or procedural source of examples with a fixed held-out split."""

    name: str = "dataset"
    #: shape of one example, e.g. ``(1, 64, 64)`` for images or ``(d,)`` for vectors.
    example_shape: tuple[int, ...]
    device: torch.device = torch.device("cpu")
    #: the smallest and largest value the examples hold, where known (a user's file); ``None``: not checked.
    value_range: tuple[float, float] | None = None

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

    @property
    def test_factors(self) -> Tensor | None:
        """Factor indices of the held-out split in its order, ``LongTensor[n_test, K]``; None without factors."""
        return None

    def test_examples(self, positions: Tensor) -> Tensor:
        """The held-out examples at ``positions`` (indices into the held-out order), on ``self.device``.

        This default reads :meth:`test_batches` up to the last position; subclasses index directly."""
        positions = positions.to(self.device)
        needed, seen, batches = int(positions.max()) + 1 if positions.numel() else 0, 0, []
        for batch in self.test_batches(1024):
            if seen >= needed:
                break
            batches.append(batch)
            seen += batch.shape[0]
        return torch.cat(batches)[positions] if batches else torch.empty(0, *self.example_shape, device=self.device)

    def figure_positions(self, n: int, seed: int = 0) -> Tensor:
        """Positions in the held-out split of the ``n`` examples that figures show: with factors, a seeded
        stratified sample (:func:`stratified_positions`); without, a seeded uniform sample."""
        n = min(n, self.n_test)
        generator = torch.Generator().manual_seed(seed)
        factors = self.test_factors
        if factors is None or factors.shape[1] == 0:
            return torch.randperm(self.n_test, generator=generator)[:n]
        return stratified_positions(factors.cpu(), n, generator)

    def figure_batch(self, n: int, seed: int = 0) -> Tensor:
        """``n`` held-out examples for figures: the same for every model trained on this data (it depends only on
        the split and ``seed``), spread over every factor where the data has factors (see
        :func:`stratified_positions`)."""
        return self.test_examples(self.figure_positions(n, seed).to(self.device))


def stratified_positions(factors: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` distinct rows of ``factors [N, K]`` spread over every factor.

    Each factor's distinct values are ranked; the targets take, per factor, ``n`` ranks evenly spread over its
    range (so a factor with at most ``n`` values, such as dSprites' shape, has every value), shuffled independently
    per factor (seeded) so that the combinations vary. Each target is matched, greedily, to the nearest unused row
    — exact on the factors with at most ``n`` values wherever such a row exists. The rows come back ordered by their
    factors (lexicographically), so a figure reads value by value of the first factor."""
    n = min(n, factors.shape[0])
    ranks, sizes = [], []
    for k in range(factors.shape[1]):
        values, inverse = torch.unique(factors[:, k], return_inverse=True)
        ranks.append(inverse)
        sizes.append(values.numel())
    rank = torch.stack(ranks, 1)  # [N, K]
    scale = torch.tensor([max(s - 1, 1) for s in sizes], dtype=torch.float64)
    small = torch.tensor([s <= n for s in sizes])
    targets = []
    for s in sizes:
        i = torch.arange(n)
        # s ≤ n: ⌊i·s/n⌋ takes every value; s > n: the middles of n equal parts, ⌊(i + ½)·s/n⌋
        spread = torch.div(i * s if s <= n else (2 * i + 1) * s, n if s <= n else 2 * n, rounding_mode="floor")
        targets.append(spread[torch.randperm(n, generator=generator)])
    target = torch.stack(targets, 1)  # [n, K]
    position = rank.double() / scale
    chosen: list[int] = []
    taken = torch.zeros(rank.shape[0], dtype=torch.bool)
    for t in target:
        mismatch = (rank != t) & small  # a small factor's value is worth more than any distance in the others
        cost = (position - t.double() / scale).abs().sum(1) + mismatch.sum(1) * (len(sizes) + 1.0)
        cost[taken] = torch.inf
        best = int(cost.argmin())
        taken[best] = True
        chosen.append(best)
    picked = torch.tensor(chosen)
    key = torch.zeros(n, dtype=torch.float64)
    for k in range(rank.shape[1]):  # lexicographic order of the picked rows' ranks
        key = key * (sizes[k] + 1) + rank[picked, k].double()
    return picked[key.argsort()]


@dataclass(frozen=True)
class ImageStatistics:
    """What a grid of rendered images bounds the distortion with (:meth:`GroundTruthDataset.image_statistics`).

    ``entropy``: H of the image that a uniform draw of the factors renders, in nats (ln ``distinct`` when no two
    combinations render the same image; less when some do). ``pixel_entropy``: the mean over the grid of
    Σᵢ h(xᵢ), h the binary entropy of a pixel value in [0, 1] — no Bernoulli cross-entropy can go below it, and it
    is 0 for binary images."""

    combinations: int
    distinct: int
    entropy: float
    pixel_entropy: float


class GroundTruthDataset(Dataset):
    """A procedural dataset over a full grid of discrete factors.

    Subclasses set ``factor_names`` and ``factor_sizes`` and implement :meth:`render`. The held-out split is a fixed
    seeded set of ``n_test`` distinct factor combinations; training batches are drawn from the others.
    """

    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]

    def _init_split(self, n_test: int | None, split_seed: int) -> None:
        total = self.num_combinations
        if total < 3:
            raise ValueError(f"dataset: {total} factor combination(s); need at least 3 (2 held out to evaluate, the "
                             f"rest to train): use a larger grid")  # fmt: skip
        if n_test is None:
            n_test = min(10_000, max(2, total // 10))  # evaluation needs 2 (evaluation.check_held_out)
        if not 0 < n_test < total:
            raise ValueError(f"dataset.n_test: expected 0 < n_test < {total} (the number of factor combinations), got {n_test}")
        g = torch.Generator().manual_seed(split_seed)
        perm = torch.randperm(total, generator=g)
        # The held-out split stays in its seeded random order: a prefix of it (``train.n_eval``, the figures' first
        # examples) is then a uniform sample of the held-out set, never just its first factor values. (Rendering
        # is a gather: the order costs nothing, measured 10,000 images at 32 px in ~0.04 s either way.)
        self._test_flat = perm[:n_test].clone()
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

    @torch.no_grad()
    def image_statistics(self, flat: Tensor | None = None, batch_size: int = 4096) -> ImageStatistics:
        """Count the distinct images of the grid (or of the flat indices ``flat``) and their entropy, by rendering
        every one: images are told apart by two independent random linear hashes (mod 2⁶⁴) of their pixels quantised
        to 1/1024 (for 10⁶ images of quarter-valued pixels the chance of any collision is below 10⁻²⁰)."""
        flat = torch.arange(self.num_combinations) if flat is None else flat.cpu()
        g = torch.Generator().manual_seed(0)
        d = math.prod(self.example_shape)
        weights = torch.randint(-(2**62), 2**62, (2, d), generator=g)
        keys, pixel_entropy = [], 0.0
        for start in range(0, flat.numel(), batch_size):
            x = self.render(self.unravel(flat[start : start + batch_size].to(self.device))).flatten(1).cpu().float()
            q = (x * 1024).round().long()
            keys.append(torch.stack([(q * weights[0]).sum(1), (q * weights[1]).sum(1)], 1))
            h = -(torch.special.xlogy(x, x) + torch.special.xlogy(1 - x, 1 - x))
            pixel_entropy += float(h.sum(1, dtype=torch.float64).sum())
        _, counts = torch.unique(torch.cat(keys), dim=0, return_counts=True)
        n, c = flat.numel(), counts.double()
        entropy = math.log(n) - float((c * c.log()).sum()) / n
        return ImageStatistics(n, int(counts.numel()), entropy, pixel_entropy / n)

    @abstractmethod
    def render(self, factor_indices: Tensor) -> Tensor:
        """``LongTensor[n, K]`` of factor indices → ``FloatTensor[n, C, H, W]`` in [0, 1], on their device."""

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Tensor:
        pos = torch.randint(self._train_flat.numel(), (batch_size,), generator=generator, device=generator.device)
        return self.render(self.unravel(self._train_flat[pos.to(self.device)]))

    def test_batches(self, batch_size: int) -> Iterator[Tensor]:
        for start in range(0, self.n_test, batch_size):
            yield self.render(self.unravel(self._test_flat[start : start + batch_size]))

    def test_examples(self, positions: Tensor) -> Tensor:
        return self.render(self.unravel(self._test_flat[positions.to(self._test_flat.device)]))
