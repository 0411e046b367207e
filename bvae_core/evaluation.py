"""Held-out rate and distortion, and the rate taken apart.

All figures are per example, in nats, on the held-out split, with z *sampled* from q(z|x) for the distortion:
rate = E_x KL(q(z|x) ‖ p(z)), distortion = E_x E_q[−log p(x|z)], nelbo = rate + distortion.

The rate is split (Hoffman & Johnson 2016, eq. 2; Chen et al. 2018, eq. 2) into what z says about *which* example it
came from and how far the aggregate posterior q(z) = E_x q(z|x) sits from the prior::

    rate        = mutual_info + marginal_kl            I(x; z) + KL(q(z) ‖ p(z))
    marginal_kl = total_correlation + dimwise_kl       KL(q(z) ‖ Π q(z_j)) + Σ_j KL(q(z_j) ‖ p(z_j))

A rate that sits in ``marginal_kl`` with ``mutual_info ≈ 0`` is a code that carries nothing about x (for example
posteriors that all shrink to the same point): it pays for a KL but does not encode the data.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import Tensor

from .data.base import Dataset
from .models import VAE
from .objectives import Likelihood, gaussian_kl

#: Burda et al. 2016, §5.2: a unit is active when Cov_x(E_q[z_u]) > 0.01.
ACTIVE_UNIT_THRESHOLD = 0.01
#: Held-out points that stand for the data distribution in the mutual-information estimate; its ceiling is ln of it
#: (ln 4096 ≈ 8.3 nats).
MI_POINTS = 4096
#: The largest ``[rows, N, k]`` block the mutual-information estimate holds at once (float32: 64 MiB each).
MI_BLOCK_ELEMENTS = 1 << 24
_LOG_2PI = math.log(2.0 * math.pi)


@torch.no_grad()
def rate_decomposition(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None,
                       chunk: int | None = None) -> dict[str, Tensor]:  # fmt: skip
    """Index-code mutual information of a diagonal-Gaussian encoder over N points, in nats (Hoffman & Johnson 2016,
    §2; the "full" estimator of Chen et al. 2018, §4.1, over the whole set rather than a minibatch).

    The data distribution is taken as uniform over the N given points, so q(z) = (1/N) Σ_m q(z|x_m) is exact and
    the only Monte Carlo is one sample z_n ~ q(z|x_n) per point::

        I(x; z)    ≈ (1/N) Σ_n [log q(z_n|x_n) − log q(z_n)],        log q(z_n) = logsumexp_m log q(z_n|x_m) − ln N
        I(x; z_j)  ≈ (1/N) Σ_n [log q(z_nj|x_n) − log q_j(z_nj)]     (the same per dimension)
        TC         = Σ_j I(x; z_j) − I(x; z)                         (= E log q(z) − Σ_j E log q_j(z_j))

    Ceiling: since the sum over m contains the term m = n, every term of the first line is ≤ ln N, so the estimate
    never exceeds ln N nats (the entropy of the index); a code that separates the N points perfectly reads ln N.
    Near the ceiling the estimate is saturated (low): then I(x; z_j) saturates later than I(x; z), and the total
    correlation, their difference, is overstated by as much — read it only well below ln N.
    It is 0 exactly when all posteriors are equal. ``mu``, ``logvar``: ``[N, k]``. Returns ``mutual_info`` (scalar),
    ``mi_per_dim`` ``[k]`` and ``total_correlation`` (scalar), float64. O(N²k) time, O(chunk·N·k) memory: ``chunk``
    rows at a time, by default as many as keep a ``[chunk, N, k]`` block to :data:`MI_BLOCK_ELEMENTS` (a latent of
    256 over 4,096 points took 3.8 GB at a fixed 256 rows)."""
    n, k = mu.shape
    if chunk is None:
        chunk = max(1, min(256, MI_BLOCK_ELEMENTS // max(1, n * k)))
    mu, logvar = mu.float(), logvar.float()
    eps = torch.randn(n, k, generator=generator, device=mu.device)
    z = mu + (0.5 * logvar).exp() * eps
    inv_var = (-logvar).exp()
    log_norm = -0.5 * (logvar + _LOG_2PI)  # [N, k]
    # log q(z_nj | x_n), computed exactly as the diagonal of the matrix below so that the ln N ceiling holds in floats
    own = log_norm - 0.5 * (z - mu).square() * inv_var
    log_n = math.log(n)
    joint = torch.zeros((), dtype=torch.float64, device=mu.device)
    marginals = torch.zeros(k, dtype=torch.float64, device=mu.device)
    for start in range(0, n, chunk):
        zc = z[start : start + chunk, None, :]  # [c, 1, k]
        logq = log_norm[None] - 0.5 * (zc - mu[None]).square() * inv_var[None]  # [c, N, k]: log q(z_cj | x_m)
        marginals += (torch.logsumexp(logq, dim=1) - log_n).double().sum(0)  # Σ_c log q_j(z_cj)
        joint += (torch.logsumexp(logq.sum(2), dim=1) - log_n).double().sum()  # Σ_c log q(z_c)
    own_sum = own.double().sum(0)
    mi_per_dim = (own_sum - marginals) / n
    mutual_info = (own_sum.sum() - joint) / n
    return {"mutual_info": mutual_info, "mi_per_dim": mi_per_dim, "total_correlation": mi_per_dim.sum() - mutual_info}


@torch.no_grad()
def check_held_out(dataset: Dataset, n_eval: int | None) -> None:
    """``ValueError`` naming the setting when evaluation would see fewer than 2 held-out examples: the standard
    errors and the active units are variances over them (one example gives 0 active units and no error bar)."""
    held_out = dataset.n_test if n_eval is None else min(n_eval, dataset.n_test)
    if held_out < 2:
        path = getattr(dataset, "path", None)
        if path:
            where, fix = f"dataset.test_fraction: the held-out split of {path}", "raise test_fraction"
        else:
            where, fix = "dataset.n_test: the held-out split", "raise dataset.n_test"
        raise ValueError(f"{where} has {held_out} example(s); evaluation needs at least 2 ({fix})")


def evaluate(model: VAE, likelihood: Likelihood, dataset: Dataset, *, batch_size: int = 512,
             n_eval: int | None = None, seed: int = 0, autocast=nullcontext,
             mi_points: int = MI_POINTS) -> dict[str, float]:  # fmt: skip
    """Rate, distortion, nelbo, (sse), kl/<i>, active_units, standard errors and the rate taken apart
    (``mutual_info``, ``marginal_kl``, ``total_correlation``, ``dimwise_kl``, ``mi/<i>``) on the held-out split.

    The decomposition uses :func:`rate_decomposition` on a fixed random subsample of ``mi_points`` of the evaluated
    points (all of them when fewer), so ``mutual_info`` and ``mi/<i>`` are at most ln(min(n, mi_points)) nats; the
    other terms are defined so that the identities hold exactly with the reported ``rate`` and ``kl/<i>``:
    ``marginal_kl = rate − mutual_info``, per latent KL(q(z_i) ‖ p(z_i)) = ``kl/<i>`` − ``mi/<i>``,
    ``dimwise_kl`` = their sum, ``marginal_kl = total_correlation + dimwise_kl``.

    Uses its own generators seeded with ``seed`` for the posterior samples and the subsample, so it neither depends
    on nor disturbs the training RNG: the same model always gets the same numbers, whatever ``batch_size``."""
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
    mus, logvars = [], []  # every evaluated point's posterior, for the rate decomposition
    limit = dataset.n_test if n_eval is None else min(n_eval, dataset.n_test)
    # every point's posterior noise drawn at once: batching the draws changed them (train.eval_batch_size 512 vs 1
    # moved a held-out distortion by 3 %)
    noise = torch.randn(limit, k, generator=gen, device=device)
    for x in dataset.test_batches(batch_size):
        x = x[: limit - n]
        if x.shape[0] == 0:
            break
        eps = noise[n : n + x.shape[0]]
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
        mus.append(mu.float())
        logvars.append(logvar.float())
        n += x.shape[0]
        if n >= limit:
            break
    model.train(was_training)
    sub_gen = torch.Generator(device=device).manual_seed(seed + 1)
    pick = torch.randperm(n, generator=sub_gen, device=device)[: min(n, mi_points)]
    parts = rate_decomposition(torch.cat(mus)[pick], torch.cat(logvars)[pick], generator=sub_gen)
    mean = sums / n
    stderr = ((squares / n - mean.square()).clamp(min=0) / max(n - 1, 1)).sqrt()
    mu_var = mu_sq / n - (mu_sum / n).square()
    mean, stderr, kl_dims, mu_var = mean.tolist(), stderr.tolist(), (kl_dims / n).tolist(), mu_var.tolist()
    metrics = {"rate": mean[0], "distortion": mean[1], "nelbo": mean[0] + mean[1]}
    if likelihood.kind == "gaussian":
        metrics["sse"] = mean[2]
    metrics.update({f"kl/{i}": v for i, v in enumerate(kl_dims)})
    metrics["active_units"] = float(sum(v > ACTIVE_UNIT_THRESHOLD for v in mu_var))
    mi_dims = parts["mi_per_dim"].tolist()
    metrics["mutual_info"] = float(parts["mutual_info"])
    metrics["marginal_kl"] = mean[0] - metrics["mutual_info"]
    metrics["total_correlation"] = float(parts["total_correlation"])
    metrics["dimwise_kl"] = metrics["marginal_kl"] - metrics["total_correlation"]  # = Σ_i (kl/<i> − mi/<i>)
    metrics.update({f"mi/{i}": v for i, v in enumerate(mi_dims)})
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
