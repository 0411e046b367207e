"""A linear VAE with a fixed-σ Gaussian likelihood on a Gaussian source lands on the Shannon R(D) bound.

At β the optimum of SSE/(2σ²) + β·R is the reverse water-filling point with θ = σ²β (docs/contracts.md), so the held-out
points must not fall below R(D) beyond their noise, and the Lagrangian must be within 2 % of its optimum L*."""

import math

import pytest

from bvae_core import Trainer

EIGENVALUES = [4.0, 2.0, 1.0, 0.5]


def _config(beta: float, sigma: float) -> dict:
    return {
        "seed": 0,
        "dataset": {"name": "gaussian", "eigenvalues": EIGENVALUES, "rotate": True, "n_train": 50_000, "n_test": 10_000},
        "model": {"arch": "linear", "latent_dim": 4, "likelihood": {"kind": "gaussian", "sigma": sigma}},
        "objective": {"beta": beta},
        "train": {"steps": 3000, "batch_size": 256, "lr": 3.0e-3, "eval_every": 3000},
    }


@pytest.mark.parametrize("beta,sigma", [(0.3, 1.0), (1.0, 1.0), (2.5, 1.0), (1.0, 0.5)])
def test_linear_vae_lands_on_the_shannon_bound(beta, sigma):
    trainer = Trainer(_config(beta, sigma))
    trainer.fit()
    m = trainer.evaluate()
    source = trainer.dataset
    rate, sse = m["rate"], m["sse"]
    # 1. not below R(D) by more than 4 standard errors (R's and, through the slope −1/(2θ), D's)
    bound = source.rate_for_distortion(sse)
    theta = sigma**2 * beta
    se = math.hypot(m["stderr/rate"], m["stderr/sse"] / (2 * theta))
    assert rate >= bound - 4 * se, f"point (R={rate:.4f}, D={sse:.4f}) is below R(D)={bound:.4f} by > 4 SE ({se:.4f})"
    # 2. the Lagrangian SSE/(2σ²) + βR is within 2 % of its optimum
    optimum = source.optimal_loss(beta, sigma)
    gap = (sse / (2 * sigma**2) + beta * rate - optimum) / optimum
    assert gap <= 0.02, f"Lagrangian gap {gap:.2%} at β={beta}, σ={sigma}"
    # 3. and it sits near the water-filling point for θ = σ²β
    r_star, d_star = source.rate_distortion(theta)
    assert abs(rate - r_star) < 0.1 + 0.05 * r_star and abs(sse - d_star) < 0.05 * d_star + 0.05


def test_water_filling_agrees_with_its_inverse():
    from bvae_core.data import rate_for_distortion, water_filling

    for theta in (0.1, 0.5, 0.75, 1.5, 3.0, 10.0):
        r, d = water_filling(EIGENVALUES, theta)
        assert rate_for_distortion(EIGENVALUES, d) == pytest.approx(r, abs=1e-9)
    assert water_filling(EIGENVALUES, 10.0) == (0.0, sum(EIGENVALUES))
    # below the smallest eigenvalue every component is coded: R = Σ ½ ln(λ/θ)
    assert water_filling(EIGENVALUES, 0.25)[0] == pytest.approx(sum(0.5 * math.log(v / 0.25) for v in EIGENVALUES))


def test_a_steep_spectrum_lands_on_the_bound_too():
    """Eigenvalues 100 … 1e-4 (condition number 1e6), rotated. With a posterior variance exp(Bx + b) the rate
    started at ~30,000 nats and was still 3.8× the bound after 10,000 steps (Lagrangian gap 210 %); with the
    input-independent variance of Lucas et al. (2019) it lands on the water-filling point."""
    config = _config(0.5, 1.0)
    config["dataset"]["eigenvalues"] = [100.0, 1.0, 0.01, 1e-4]
    config["train"].update(steps=10_000, eval_every=10_000, threads=1)
    trainer = Trainer(config)
    trainer.fit()
    m, source = trainer.evaluate(), trainer.dataset
    gap = (m["sse"] / 2 + 0.5 * m["rate"] - source.optimal_loss(0.5, 1.0)) / source.optimal_loss(0.5, 1.0)
    r_star, d_star = source.rate_distortion(0.5)
    assert gap <= 0.02 and abs(m["rate"] - r_star) < 0.1 * r_star, (m["rate"], r_star, m["sse"], d_star, gap)


def test_the_linear_posterior_variance_does_not_depend_on_x():
    import torch

    from bvae_core.models import build_model

    model = build_model("linear", (4,), 3)
    x = torch.randn(5, 4) * torch.tensor([10.0, 1.0, 0.1, 0.01])
    mu, logvar = model.encoder(x).chunk(2, dim=1)
    assert mu.std(0).min() > 0 and torch.equal(logvar, logvar[:1].expand_as(logvar))
