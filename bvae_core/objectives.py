"""Likelihoods, the Gaussian KL and the two objectives (β-VAE and controlled capacity).

Every term is a sum over dimensions per example, in nats (docs/contracts.md): never a per-pixel mean, which would silently
rescale β by the number of pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) per latent dimension, ``[n, k]`` (Kingma & Welling 2014, App. B):
    ½(μ² + σ² − 1 − ln σ²)."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """−log p(x|z) for independent Bernoulli pixels with the given logits, summed per example: ``[n]``.

    For x ∈ [0, 1] that is not binary this is the cross-entropy (the usual dSprites practice)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def gaussian_nll(mean: Tensor, x: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """−log N(x; mean, σ²I) summed per example, including the normalising constant ``d/2·ln(2πσ²)``.

    Returns ``(nll, sse)``, both ``[n]``."""
    sse = (x - mean).square().flatten(1).sum(1)
    d = x[0].numel()
    return sse / (2.0 * sigma**2) + 0.5 * d * math.log(2.0 * math.pi * sigma**2), sse


class Likelihood:
    """p(x|z): turns decoder outputs into −log p(x|z) per example and into a mean image."""

    kind: str

    def nll(self, out: Tensor, x: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def mean(self, out: Tensor) -> Tensor:
        raise NotImplementedError


class Bernoulli(Likelihood):
    kind = "bernoulli"

    def nll(self, out: Tensor, x: Tensor) -> tuple[Tensor, None]:
        return bernoulli_nll(out, x), None

    def mean(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out)


class Gaussian(Likelihood):
    """Fixed-σ Gaussian: −log p = SSE/(2σ²) + const, so β-VAE's optimum sits at water level θ = σ²β (docs/contracts.md)."""

    kind = "gaussian"

    def __init__(self, sigma: float = 1.0):
        self.sigma = float(sigma)

    def nll(self, out: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        return gaussian_nll(out, x, self.sigma)

    def mean(self, out: Tensor) -> Tensor:
        return out


def make_likelihood(kind: str, sigma: float = 1.0) -> Likelihood:
    if kind == "bernoulli":
        return Bernoulli()
    if kind == "gaussian":
        return Gaussian(sigma)
    raise ValueError(f"model.likelihood.kind: expected bernoulli or gaussian, got {kind!r}")


def beta_vae_loss(distortion: Tensor, kl_per_dim: Tensor, beta: float, free_bits: float = 0.0) -> Tensor:
    """Higgins et al. 2017, eq. (4) as a loss: E[−log p(x|z)] + β·KL, batch means of per-example sums.

    With ``free_bits > 0`` each dimension's batch-mean KL is clamped from below (Kingma et al. 2016, eq. 15)."""
    kl_dims = kl_per_dim.mean(0)
    if free_bits > 0:
        kl_dims = kl_dims.clamp(min=free_bits)
    return distortion.mean() + beta * kl_dims.sum()


def capacity_penalty(kl_per_dim: Tensor, capacity: float | Tensor, gamma: float | Tensor) -> Tensor:
    """The capacity term of Burgess et al. 2018, eq. (2): γ·|KL − C|, with KL the batch-mean total KL in nats.

    Its gradient is ±γ·∇KL, the sign set by which side of C the batch's KL falls. With γ = 1000 (§A.2) that is
    ~300× the reconstruction's gradient on the encoder, and near the target the sign flips from batch to batch: it
    averages out of Adam's first moment but not out of its second, so the Trainer gives this term moment estimates
    of its own (see ``Trainer._capacity_step``)."""
    return gamma * (kl_per_dim.sum(1).mean() - capacity).abs()


def capacity_loss(distortion: Tensor, kl_per_dim: Tensor, capacity: float | Tensor, gamma: float | Tensor) -> Tensor:
    """Burgess et al. 2018, eq. (2) as a loss: E[−log p(x|z)] + γ·|KL − C|, with KL the batch-mean total KL."""
    return distortion.mean() + capacity_penalty(kl_per_dim, capacity, gamma)
