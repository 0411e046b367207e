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


def capacity_loss(distortion: Tensor, kl_per_dim: Tensor, capacity: float | Tensor, gamma: float | Tensor) -> Tensor:
    """Burgess et al. 2018, eq. (2) as a loss: E[−log p(x|z)] + γ·|KL − C|, with KL the batch-mean total KL.

    This is the objective's value (what ``train/loss`` reports). Its per-batch gradient is not what the Trainer hands
    to Adam: see :func:`capacity_multiplier_step`."""
    return distortion.mean() + gamma * (kl_per_dim.sum(1).mean() - capacity).abs()


def capacity_multiplier_step(multiplier: Tensor, kl: Tensor, capacity: float | Tensor, gamma: float | Tensor,
                             lr: float | Tensor) -> Tensor:  # fmt: skip
    """One dual-ascent step on the multiplier λ of Burgess et al.'s objective:
    λ ← clip(λ + lr·(KL − C)·max(λ, 1), 0, γ), with ``kl`` the batch-mean total KL in nats. Adam descends
    E[−log p(x|z)] + λ·KL (a β-VAE whose β = λ moves). The step is relative to λ above 1 — a nat's price spans
    orders of magnitude along a frontier (β 0.25 to 32 in the quickstart) and the KL answers to log λ — and absolute
    below, so that λ can reach 0.

    Why not Adam on the paper's loss itself. Its gradient on a batch is ∇D ± γ·∇KL, the sign set by which side of C
    that batch's KL falls; with γ = 1000 (§A.2) the second term is ~300× the first on the encoder, and once KL
    tracks C the sign flips from batch to batch. The flips cancel in Adam's first moment but not in its second, which
    is then ~all capacity term: the reconstruction's share of each encoder step is 1–2 %, the encoder stops learning
    to encode x, and KL is met the x-independent way — the posterior variances shrink while z says nothing about x
    (held-out ``mutual_info`` 0.00 nats at rate 4.9, distortion on the mean-image plateau; benchmarks/README.md).
    Giving the penalty Adam moments of its own fixes that but, Adam being scale-invariant, leaves γ no say: KL then
    drifts off C (rate 21.4 at C = 18.7 held constant).

    Why this is the same objective. By the exact-penalty theorem (Nocedal & Wright 2006, Thm 17.3) γ·|KL − C| and
    the Lagrangian D + λ·(KL − C) with |λ| ≤ γ have the same solutions, and λ is what the penalty's subgradient
    γ·sign(KL − C) averages to over time. Dual ascent (Platt & Barr 1988; for VAEs, GECO: Rezende & Viola 2018)
    estimates that average instead of handing Adam every batch's sign. λ ≤ γ keeps the paper's limit: where a nat
    is worth more than γ to the reconstruction, KL exceeds C as under the penalty. λ ≥ 0 drops only the penalty's
    reward for raising KL below C, which is the x-independent route itself; a Gaussian encoder's reconstruction
    always gains from more KL, so KL ≤ C is met with equality as KL = C is."""
    stepped = (multiplier + lr * (kl - capacity) * multiplier.clamp(min=1.0)).clamp(min=0.0)
    return stepped.clamp(max=gamma) if isinstance(gamma, (int, float)) else stepped.minimum(gamma)
