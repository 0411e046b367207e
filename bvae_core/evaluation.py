"""Held-out rate and distortion (DESIGN §3 "Units and metric names").

All figures are per example, in nats, on the held-out split, with z *sampled* from q(z|x) for the distortion:
rate = E_x KL(q(z|x) ‖ p(z)), distortion = E_x E_q[−log p(x|z)], nelbo = rate + distortion.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from .data.base import Dataset
from .models import VAE
from .objectives import Likelihood, gaussian_kl

#: Burda et al. 2016, §5.2: a unit is active when Cov_x(E_q[z_u]) > 0.01.
ACTIVE_UNIT_THRESHOLD = 0.01


@torch.no_grad()
def evaluate(model: VAE, likelihood: Likelihood, dataset: Dataset, *, batch_size: int = 512,
             n_eval: int | None = None, seed: int = 0, autocast=nullcontext) -> dict[str, float]:  # fmt: skip
    """Rate, distortion, nelbo, (sse), kl/<i>, active_units and standard errors on the held-out split.

    Uses its own generator seeded with ``seed`` for the posterior samples, so it neither depends on nor disturbs the
    training RNG: the same model always gets the same numbers."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    k = model.latent_dim
    n = 0
    # per-example sums and sums of squares: [rate, distortion, sse]
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    squares = torch.zeros(3, dtype=torch.float64, device=device)
    kl_dims = torch.zeros(k, dtype=torch.float64, device=device)
    mu_sum = torch.zeros(k, dtype=torch.float64, device=device)
    mu_sq = torch.zeros(k, dtype=torch.float64, device=device)
    limit = dataset.n_test if n_eval is None else min(n_eval, dataset.n_test)
    for x in dataset.test_batches(batch_size):
        x = x[: limit - n]
        if x.shape[0] == 0:
            break
        eps = torch.randn(x.shape[0], k, generator=gen, device=device)
        with autocast():
            out, mu, logvar = model(x, eps)
        nll, sse = likelihood.nll(out.float(), x)
        kl = gaussian_kl(mu, logvar)
        terms = torch.stack([kl.sum(1), nll, sse if sse is not None else torch.zeros_like(nll)], 1).double()
        sums += terms.sum(0)
        squares += terms.square().sum(0)
        kl_dims += kl.double().sum(0)
        mu_sum += mu.double().sum(0)
        mu_sq += mu.double().square().sum(0)
        n += x.shape[0]
        if n >= limit:
            break
    model.train(was_training)
    mean = sums / n
    stderr = ((squares / n - mean.square()).clamp(min=0) / max(n - 1, 1)).sqrt()
    mu_var = mu_sq / n - (mu_sum / n).square()
    mean, stderr, kl_dims, mu_var = mean.tolist(), stderr.tolist(), (kl_dims / n).tolist(), mu_var.tolist()
    metrics = {"rate": mean[0], "distortion": mean[1], "nelbo": mean[0] + mean[1]}
    if likelihood.kind == "gaussian":
        metrics["sse"] = mean[2]
    metrics.update({f"kl/{i}": v for i, v in enumerate(kl_dims)})
    metrics["active_units"] = float(sum(v > ACTIVE_UNIT_THRESHOLD for v in mu_var))
    metrics["stderr/rate"], metrics["stderr/distortion"] = stderr[0], stderr[1]
    if likelihood.kind == "gaussian":
        metrics["stderr/sse"] = stderr[2]
    metrics["n_eval"] = float(n)
    return metrics


@torch.no_grad()
def encode_means(model: VAE, images: Tensor, batch_size: int = 512) -> Tensor:
    """Encoder means E_q[z|x] for ``images``, batched; returned on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model.encode(x.to(device))[0].cpu() for x in images.split(batch_size)]
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def zero_rate_distortion(likelihood: Likelihood, dataset: Dataset, batch_size: int = 1024, n_eval: int | None = None) -> float:
    """Distortion (nats per example) of the best decoder that ignores z: the held-out split's mean as Bernoulli
    probabilities or Gaussian means. Every model's point lies left of (rate ≥ 0) and, at rate 0, on or above it."""
    batches = []
    seen = 0
    for x in dataset.test_batches(batch_size):
        batches.append(x.double())
        seen += x.shape[0]
        if n_eval is not None and seen >= n_eval:
            break
    data = torch.cat(batches)[:n_eval]
    mean = data.mean(0, keepdim=True)
    if likelihood.kind == "bernoulli":
        p = mean.clamp(1e-12, 1 - 1e-12)
        nll = -(data * p.log() + (1 - data) * (1 - p).log()).flatten(1).sum(1)
    else:
        nll, _ = likelihood.nll(mean.expand_as(data), data)
    return float(nll.mean())
