"""The loss terms against independent computations: closed-form KL vs Monte Carlo, Bernoulli NLL vs summed BCE,
Gaussian NLL vs torch.distributions, and the objectives' arithmetic."""

import math

import pytest
import torch
import torch.nn.functional as F

from bvae_core.objectives import (beta_vae_loss, bernoulli_nll, capacity_loss, gaussian_kl, gaussian_nll,
                                  make_likelihood)  # fmt: skip
from bvae_core.schedules import linear_ramp, schedule_value
from bvae_core.config import LinearCapacitySchedule, WarmupSchedule, ConstantSchedule, FreeBitsSchedule


def test_closed_form_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=g, dtype=torch.float64)
    logvar = torch.randn(5, 3, generator=g, dtype=torch.float64) * 0.5
    closed = gaussian_kl(mu, logvar).sum(1)
    n = 400_000
    z = mu + (0.5 * logvar).exp() * torch.randn(n, 5, 3, generator=g, dtype=torch.float64)
    log_q = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    mc = (log_q - log_p).mean(0)
    stderr = (log_q - log_p).std(0) / math.sqrt(n)
    assert torch.all((closed - mc).abs() < 5 * stderr), (closed, mc, stderr)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    assert gaussian_kl(torch.zeros(2, 4), torch.zeros(2, 4)).abs().max() == 0
    assert (gaussian_kl(torch.full((1, 4), 0.1), torch.zeros(1, 4)) > 0).all()


def test_bernoulli_nll_equals_summed_bce():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1, 8, 8, generator=g)
    x = (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float()
    ours = bernoulli_nll(logits, x)
    reference = torch.stack([F.binary_cross_entropy(torch.sigmoid(logits[i]), x[i], reduction="sum") for i in range(4)])
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-4)
    assert ours.shape == (4,)


def test_gaussian_nll_includes_normalising_constant():
    g = torch.Generator().manual_seed(2)
    mean, x, sigma = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g), 0.7
    nll, sse = gaussian_nll(mean, x, sigma)
    reference = -torch.distributions.Normal(mean, sigma).log_prob(x).sum(1)
    assert torch.allclose(nll, reference, rtol=1e-5)
    assert torch.allclose(sse, (x - mean).square().sum(1))


def test_beta_vae_and_capacity_losses_are_per_example_sums():
    distortion = torch.tensor([10.0, 20.0])
    kl = torch.tensor([[1.0, 2.0], [3.0, 0.0]])  # per-example totals 3 and 3, mean 3
    assert beta_vae_loss(distortion, kl, beta=4.0).item() == pytest.approx(15 + 4 * 3)
    assert capacity_loss(distortion, kl, capacity=5.0, gamma=1000.0).item() == pytest.approx(15 + 1000 * 2)
    # free bits: dimension means are (2, 1); clamped at 1.5 → 2 + 1.5
    assert beta_vae_loss(distortion, kl, beta=1.0, free_bits=1.5).item() == pytest.approx(15 + 3.5)


def test_schedules():
    cap = LinearCapacitySchedule(kind="linear_capacity", c_max=25, ramp_steps=100_000, gamma=1000)
    assert schedule_value(cap, 4.0, 0).capacity == 0
    assert schedule_value(cap, 4.0, 50_000).capacity == pytest.approx(12.5)
    assert schedule_value(cap, 4.0, 10**6).capacity == 25
    assert schedule_value(cap, 4.0, 5).beta == 1000  # γ weights |KL − C|
    warm = WarmupSchedule(kind="warmup", warmup_steps=10, beta_start=0.0)
    assert [schedule_value(warm, 2.0, s).beta for s in (0, 5, 10, 20)] == [0.0, 1.0, 2.0, 2.0]
    assert schedule_value(ConstantSchedule(kind="constant"), 3.0, 99).beta == 3.0
    assert schedule_value(FreeBitsSchedule(kind="free_bits", free_bits=0.25), 1.0, 0).free_bits == 0.25
    assert linear_ramp(-3, 1.0, 2.0, 4) == 1.0


def test_likelihood_factory_rejects_unknown_kind():
    with pytest.raises(ValueError, match="likelihood"):
        make_likelihood("poisson")
