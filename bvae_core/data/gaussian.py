"""A Gaussian source x ~ N(0, Σ) with a known spectrum, and its exact Shannon rate-distortion function.

For squared-error distortion the rate-distortion function of a Gaussian vector is given by reverse water-filling
(Cover & Thomas 2006, Thm. 10.3.3): at water level θ, D(θ) = Σᵢ min(λᵢ, θ) and R(θ) = Σᵢ ½ ln⁺(λᵢ/θ) nats.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from .base import Dataset


def water_filling(eigenvalues: list[float] | Tensor, theta: float) -> tuple[float, float]:
    """(R, D) at water level ``theta``: R in nats, D as expected squared error per example (Cover & Thomas 10.3.3)."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    rate = 0.5 * torch.log(lam / theta).clamp(min=0).sum()
    dist = lam.clamp(max=theta).sum()
    return float(rate), float(dist)


def rate_for_distortion(eigenvalues: list[float] | Tensor, distortion: float) -> float:
    """R(D) in nats for squared-error distortion D per example; 0 for D ≥ Σλ."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64).sort().values
    if distortion >= float(lam.sum()):
        return 0.0
    if distortion <= 0:
        return math.inf
    # find θ with Σ min(λ, θ) = D: on the segment where the j smallest λ are below θ, D = Σ_{i<j} λᵢ + (d − j)θ.
    d, cum = lam.numel(), 0.0
    for j in range(d):
        theta = (distortion - cum) / (d - j)
        if theta <= float(lam[j]):
            return water_filling(lam, theta)[0]
        cum += float(lam[j])
    return 0.0


class GaussianSource(Dataset):
    """x ~ N(0, Q diag(λ) Qᵀ) with finite, seeded train and test splits.

    ``rotate=True`` draws Q as a seeded random rotation (so the axes carry no hint of the eigenbasis); otherwise Q = I.
    """

    name = "gaussian"

    def __init__(self, eigenvalues: list[float], rotate: bool = False, n_train: int = 50_000, n_test: int = 10_000,
                 data_seed: int = 0, device: torch.device | str = "cpu"):  # fmt: skip
        if not eigenvalues or min(eigenvalues) <= 0:
            raise ValueError(f"dataset.eigenvalues: expected a non-empty list of positive numbers, got {eigenvalues}")
        self.eigenvalues = [float(v) for v in eigenvalues]
        d = len(self.eigenvalues)
        self.example_shape = (d,)
        g = torch.Generator().manual_seed(data_seed)
        if rotate:
            q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
            self.rotation = q * torch.sign(torch.diagonal(r))  # Haar-distributed (Mezzadri 2007)
        else:
            self.rotation = torch.eye(d, dtype=torch.float64)
        scale = torch.tensor(self.eigenvalues, dtype=torch.float64).sqrt()
        draw = lambda n: ((torch.randn(n, d, generator=g, dtype=torch.float64) * scale) @ self.rotation.T).float()
        self.train, self.test = draw(n_train), draw(n_test)
        self.to(device)

    @property
    def n_test(self) -> int:
        return self.test.shape[0]

    def to(self, device: torch.device | str) -> "GaussianSource":
        self.device = torch.device(device)
        self.train, self.test = self.train.to(self.device), self.test.to(self.device)
        return self

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Tensor:
        idx = torch.randint(self.train.shape[0], (batch_size,), generator=generator, device=generator.device)
        return self.train[idx.to(self.device)]

    def test_batches(self, batch_size: int) -> Iterator[Tensor]:
        yield from self.test.split(batch_size)

    def test_examples(self, positions: Tensor) -> Tensor:
        return self.test[positions.to(self.device)]

    def rate_distortion(self, theta: float) -> tuple[float, float]:
        """(R, D) on the Shannon bound at water level θ (D as squared error per example)."""
        return water_filling(self.eigenvalues, theta)

    def rate_for_distortion(self, distortion: float) -> float:
        return rate_for_distortion(self.eigenvalues, distortion)

    def optimal_loss(self, beta: float, sigma: float = 1.0) -> float:
        """min over encoders/decoders of E[SSE]/(2σ²) + β·R, attained at θ = σ²β (docs/contracts.md)."""
        rate, dist = self.rate_distortion(sigma**2 * beta)
        return dist / (2 * sigma**2) + beta * rate
