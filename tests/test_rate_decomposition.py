"""The rate taken apart (Hoffman & Johnson 2016; Chen et al. 2018): rate = mutual_info + marginal_kl and
marginal_kl = total_correlation + dimwise_kl, checked against closed forms and against the degenerate code that pays
a KL without encoding anything."""

import math

import pytest
import torch

from bvae_core.data import make_dataset
from bvae_core.evaluation import evaluate, rate_decomposition
from bvae_core.models import build_model
from bvae_core.objectives import make_likelihood

# x ~ N(0, diag λ); q(z|x) = N(A x, diag s²). z0 reads x0, z1 and z2 both read x1 (so they share information: TC > 0).
LAMBDAS = [4.0, 1.0, 0.25]
A = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.5, 0.0], [0.0, 1.5, 0.0]], dtype=torch.float64)
S2 = torch.tensor([0.5, 0.8, 0.8], dtype=torch.float64)


def _closed_form() -> dict[str, float]:
    """Gaussian closed forms: z ~ N(0, Σz) with Σz = AΛAᵀ + S."""
    cov = A @ torch.diag(torch.tensor(LAMBDAS, dtype=torch.float64)) @ A.T + torch.diag(S2)
    k = len(S2)
    logdet = torch.logdet(cov)
    var = torch.diagonal(cov)
    return {
        "rate": float(0.5 * (torch.trace(cov) - k - S2.log().sum())),  # E_x KL(q(z|x) ‖ p), p = N(0, I)
        "mutual_info": float(0.5 * (logdet - S2.log().sum())),
        "marginal_kl": float(0.5 * (torch.trace(cov) - k - logdet)),
        "total_correlation": float(0.5 * (var.log().sum() - logdet)),
        "dimwise_kl": float(0.5 * (var - 1 - var.log()).sum()),
        **{f"mi/{i}": float(0.5 * torch.log(var[i] / S2[i])) for i in range(k)},
    }


def _linear_gaussian_model(latent_dim: int, weight: torch.Tensor, mu_bias: torch.Tensor, logvar: torch.Tensor):
    """A ``linear`` VAE whose encoder is exactly μ = W x + b, log σ² = const (its decoder is irrelevant here)."""
    model = build_model("linear", (weight.shape[1],), latent_dim)
    layer = model.encoder.net[1]
    with torch.no_grad():
        layer.weight.copy_(weight.float())
        layer.bias.copy_(mu_bias.float())
        model.encoder.logvar.copy_(logvar.float())
    return model


def test_linear_gaussian_encoder_matches_closed_forms():
    data = make_dataset("gaussian", eigenvalues=LAMBDAS, n_train=1000, n_test=8192, data_seed=1)
    model = _linear_gaussian_model(3, A, torch.zeros(3), S2.log())
    m = evaluate(model, make_likelihood("gaussian"), data, seed=0)
    truth = _closed_form()
    assert truth["mutual_info"] > 1.0 and truth["total_correlation"] > 0.3  # a case where each term matters
    for name, value in truth.items():
        assert m[name] == pytest.approx(value, abs=0.06), (name, m[name], value)
    # the identities hold exactly on the logged numbers
    assert m["mutual_info"] + m["marginal_kl"] == pytest.approx(m["rate"], abs=1e-9)
    assert m["total_correlation"] + m["dimwise_kl"] == pytest.approx(m["marginal_kl"], abs=1e-9)


def test_degenerate_code_reads_zero_information_with_positive_rate():
    """The capacity objective's failure mode: every posterior is the same narrow Gaussian off the origin. The KL is
    paid (rate > 0) but z says nothing about x; the whole rate is marginal KL."""
    data = make_dataset("blobs", resolution=32, n_test=600)
    model = build_model("burgess", data.example_shape, 4)
    last = model.encoder.fc[-1]
    with torch.no_grad():
        last.weight.zero_()  # the encoder ignores x
        last.bias.copy_(torch.tensor([0.8, -0.3, 0.0, 0.0, -5.0, -5.0, -5.0, 0.0]))  # means off 0, variances shrunk
    m = evaluate(model, make_likelihood("bernoulli"), data, seed=0)
    assert m["rate"] > 5.0
    assert abs(m["mutual_info"]) < 1e-4
    assert all(abs(m[f"mi/{i}"]) < 1e-4 for i in range(4))
    assert m["marginal_kl"] == pytest.approx(m["rate"], abs=1e-4)
    assert m["active_units"] == 0


def test_estimate_never_exceeds_ln_n_and_reaches_it_for_a_perfect_code():
    n, k = 500, 3
    g = torch.Generator().manual_seed(0)
    mu = 100.0 * torch.randn(n, k, generator=g)  # far apart
    logvar = torch.full((n, k), -20.0)  # and sharp: z identifies the point
    parts = rate_decomposition(mu, logvar, generator=g)
    assert float(parts["mutual_info"]) <= math.log(n) + 1e-6  # float32 sums
    assert float(parts["mutual_info"]) == pytest.approx(math.log(n), abs=1e-4)
    # a code far richer than ln N nats still reads at most ln N
    assert float(parts["mi_per_dim"].max()) <= math.log(n) + 1e-6


def test_decomposition_is_deterministic_and_uses_a_subsample():
    data = make_dataset("gaussian", eigenvalues=LAMBDAS, n_train=1000, n_test=3000, data_seed=1)
    model = _linear_gaussian_model(3, A, torch.zeros(3), S2.log())
    lik = make_likelihood("gaussian")
    a, b = evaluate(model, lik, data, seed=5), evaluate(model, lik, data, seed=5)
    assert a == b
    small = evaluate(model, lik, data, seed=5, mi_points=64)
    assert small["mutual_info"] <= math.log(64) + 1e-6
    assert small["rate"] == a["rate"]  # the subsample only feeds the decomposition


def test_the_estimate_holds_a_bounded_block_whatever_the_latent_size(monkeypatch):
    """A fixed 256 rows made a [256, N, k] block: 3.8 GB at a latent of 256 over 4,096 points. The rows now shrink
    with N·k, and the estimate does not depend on them."""
    import bvae_core.evaluation as evaluation

    torch.manual_seed(0)
    mu, logvar = torch.randn(300, 64), 0.1 * torch.randn(300, 64)
    small = evaluation.rate_decomposition(mu, logvar, torch.Generator().manual_seed(1), chunk=7)
    blocks = []
    real_logsumexp = torch.logsumexp

    def recording(t, dim):
        blocks.append(t.numel())
        return real_logsumexp(t, dim=dim)

    monkeypatch.setattr(evaluation, "MI_BLOCK_ELEMENTS", 300 * 64 * 5)
    monkeypatch.setattr(torch, "logsumexp", recording)
    auto = evaluation.rate_decomposition(mu, logvar, torch.Generator().manual_seed(1))
    monkeypatch.undo()
    assert blocks and max(blocks) <= 300 * 64 * 5  # 5 rows at a time
    for key in ("mutual_info", "total_correlation"):
        assert torch.allclose(small[key], auto[key], rtol=1e-9, atol=1e-9)
