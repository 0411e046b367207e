"""Oracle tests of the disentanglement metrics, after disentanglement_lib's own (``evaluation/metrics/*_test.py``).

Their dummy data: 10 factors of 10 values each, sampled uniform and independent, and the observations *are* the
factors (here the values 1..10 as floats), so with ``encode = identity`` the codes are the factors: a perfectly
disentangled representation. Zeros and duplicated codes are the bad cases; DCI is also checked in closed form on
importance matrices.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from bvae_core.metrics import (METRIC_NAMES, PRESETS, RESULT_NAMES, betavae_details, betavae_score, compute_metrics, dci,
                               dci_from_importance, factorvae_details, factorvae_score, metric_params, mig, sap)  # fmt: skip

NUM_FACTORS, NUM_VALUES = 10, 10
#: Small counts for the intervention-based scores on the dummy data (disentanglement_lib's tests use 3,000 / 2,000).
SMALL = {"num_train": 500, "num_eval": 250}
SMALL_FACTORVAE = {**SMALL, "num_variance_estimate": 1000}


class IdentityData:
    """disentanglement_lib's ``IdentityObservationsData``: the observation of factors f is f itself (values 1..10)."""

    def __init__(self, num_factors: int = NUM_FACTORS):
        self.factor_sizes = (NUM_VALUES,) * num_factors

    def sample_factors(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.stack([torch.randint(s, (n,), generator=generator) for s in self.factor_sizes], dim=1)

    def render(self, factor_indices: torch.Tensor) -> torch.Tensor:
        return factor_indices.float() + 1


def _rotation(dim: int = NUM_FACTORS, seed: int = 1) -> np.ndarray:
    """A fixed random rotation (Haar, via QR of a seeded Gaussian matrix)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


ROTATION = _rotation()
ROTATION_4 = _rotation(4)


def identity(x):
    return x


def zeros(x):
    return torch.zeros_like(x)


def rotated(x):
    rotation = ROTATION if x.shape[1] == NUM_FACTORS else ROTATION_4
    return x @ torch.as_tensor(rotation.T, dtype=x.dtype)


@pytest.fixture(scope="module")
def dummy():
    """5,000 points of the dummy data: (factor indices int[N, 10], codes = values 1..10 float[N, 10])."""
    factors = np.random.default_rng(0).integers(NUM_VALUES, size=(5000, NUM_FACTORS))
    return factors, factors + 1.0


# ------------------------------------------------------------------------------------------------------------ MIG
def test_mig_identity_zeros_duplicated(dummy):
    factors, codes = dummy
    n = 3000  # disentanglement_lib: 3,000 points
    assert 0.9 <= mig(codes[:n], factors[:n]) <= 1.0
    assert 0.0 <= mig(np.zeros_like(codes[:n]), factors[:n]) <= 0.2
    assert 0.0 <= mig(np.hstack([codes[:n], codes[:n]]), factors[:n]) <= 0.1


# ------------------------------------------------------------------------------------------------------------ SAP
def test_sap_continuous_identity_zeros_duplicated(dummy):
    factors, codes = dummy
    n = 3000
    assert 0.9 <= sap(codes[:n], factors[:n], continuous_factors=True) <= 1.0
    assert 0.0 <= sap(np.zeros_like(codes[:n]), factors[:n], continuous_factors=True) <= 0.2
    assert 0.0 <= sap(np.hstack([codes[:n], codes[:n]]), factors[:n], continuous_factors=True) <= 0.2


def test_sap_discrete_zeros_duplicated_and_explicit_split(dummy):
    factors, codes = dummy
    n = 1500
    assert 0.0 <= sap(np.zeros_like(codes[:n]), factors[:n]) <= 0.2
    assert 0.0 <= sap(np.hstack([codes[:n], codes[:n]]), factors[:n]) <= 0.2
    # no test arrays: the first ceil(2/3 N) rows train, the rest test — the same as passing them explicitly
    assert sap(codes[:n], factors[:n]) == sap(codes[:1000], factors[:1000], codes[1000:n], factors[1000:n])


# ------------------------------------------------------------------------------------------------------------ DCI
FIVE = np.diag(5.0 * np.ones(5))
ONE_MINUS_LN2_LN10 = 1 - math.log(2) / math.log(10)


@pytest.mark.parametrize(
    "importance, expected",
    [
        (FIVE, (1.0, 1.0)),  # diagonal
        (np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), (1.0, 1.0)),  # diagonal with an empty code
        (np.vstack([FIVE, FIVE]), (1.0, ONE_MINUS_LN2_LN10)),  # two redundant codes per factor, 10 codes
        (np.hstack([FIVE, FIVE]), (ONE_MINUS_LN2_LN10, 1.0)),  # one code covering two factors, 10 factors
        (FIVE[:2, :], (1.0, 1.0)),  # missed factors
        (np.zeros((10, 10)), (0.0, 0.0)),
    ],
    ids=["diagonal", "empty-code", "redundant-codes", "one-code-two-factors", "missed-factors", "zero"],
)
def test_dci_closed_forms(importance, expected):
    np.testing.assert_allclose(dci_from_importance(importance), expected, atol=1e-7)


@pytest.fixture(scope="module")
def dci_identity_and_rotated(dummy):
    """DCI of the identity and of the rotated codes (all 10 dimensions) against the first 3 factors, 240 points
    (160 train / 80 test). GBT fits one tree per class per stage: all 10 factors would be 10,000 trees per call,
    too slow for the suite on 2 cores; unused codes get no importance, so the identity still scores 1."""
    factors, codes = dummy
    n, k = 240, 3
    return dci(codes[:n], factors[:n, :k]), dci(codes[:n] @ ROTATION.T, factors[:n, :k])


def test_dci_identity(dci_identity_and_rotated):
    scores, _ = dci_identity_and_rotated
    assert 0.9 <= scores["disentanglement"] <= 1.0
    assert 0.9 <= scores["completeness"] <= 1.0
    assert scores["informativeness_train"] == 1.0
    assert scores["informativeness_test"] >= 0.9


# ------------------------------------------------------------------------------------------- FactorVAE and BetaVAE
def test_factorvae_identity_and_zeros():
    details = factorvae_details(IdentityData(), identity, **SMALL_FACTORVAE)
    assert 0.9 <= details["train_accuracy"] <= 1.0 and 0.9 <= details["eval_accuracy"] <= 1.0
    assert details["num_active_dims"] == NUM_FACTORS
    bad = factorvae_details(IdentityData(), zeros, **SMALL_FACTORVAE)  # every dimension is pruned (std < 0.05)
    assert bad == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0.0}


def test_betavae_identity_and_zeros():
    details = betavae_details(IdentityData(), identity, **SMALL)
    assert 0.9 <= details["train_accuracy"] <= 1.0 and 0.9 <= details["eval_accuracy"] <= 1.0
    assert 0.0 <= betavae_score(IdentityData(), zeros, **SMALL) <= 0.2  # constant features: chance is 1/10


# ------------------------------------------------------------------------------------------------- rotated identity
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_rotation_of_identity_scores_lower_on_every_metric(dummy, dci_identity_and_rotated):
    """A fixed random rotation mixes every factor into every code. Observed here (rotation seed 1, data seed 0),
    identity → rotated: MIG 0.99 → 0.06, SAP continuous 1.00 → 0.17, SAP discrete 0.28 → 0.03, DCI disentanglement
    1.00 → 0.04, FactorVAE 1.00 → 0.58, BetaVAE 1.00 → 0.74; the margins asserted are well inside these gaps."""
    factors, codes = dummy
    n = 3000
    rot = codes[:n] @ ROTATION.T
    assert mig(rot, factors[:n]) < mig(codes[:n], factors[:n]) - 0.5
    assert sap(rot, factors[:n], continuous_factors=True) < sap(codes[:n], factors[:n], continuous_factors=True) - 0.5
    assert sap(rot[:1500], factors[:1500]) < sap(codes[:1500], factors[:1500]) - 0.05
    ident, rotd = dci_identity_and_rotated
    assert rotd["disentanglement"] < ident["disentanglement"] - 0.5
    data = IdentityData()
    assert factorvae_score(data, rotated, **SMALL_FACTORVAE) < factorvae_score(data, identity, **SMALL_FACTORVAE) - 0.2
    assert betavae_score(data, rotated, **SMALL) < betavae_score(data, identity, **SMALL) - 0.1


# ------------------------------------------------------------------------------------------------- compute_metrics
TINY = {
    "mig": {"num_train": 500},
    "dci": {"num_train": 100, "num_test": 50},
    "sap": {"num_train": 500, "num_test": 250},
    "factorvae_score": {"num_train": 50, "num_eval": 25, "num_variance_estimate": 500},
    "betavae_score": {"num_train": 30, "num_eval": 15},
}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_compute_metrics_same_seed_same_numbers_and_batched_encoding():
    calls = []

    def encode(x):
        calls.append(x.shape[0])
        return rotated(x)

    data = IdentityData(num_factors=4)  # 4 factors, a 4-D rotation: keeps DCI's trees few
    names = list(METRIC_NAMES)
    first = compute_metrics(names, data, encode, "fast", seed=3, overrides=TINY, encode_batch_size=200)
    assert list(first) == [key for name in names for key in RESULT_NAMES[name]]
    assert all(0.0 <= v <= 1.0 for v in first.values())
    assert max(calls) <= 200  # never more than one batch of examples at a time
    again = compute_metrics(names, data, rotated, "fast", seed=3, overrides=TINY, encode_batch_size=128)
    assert again == first  # the encode batch size does not change the draws
    others = [n for n in names if n != "dci"]
    other = compute_metrics(others, data, rotated, "fast", seed=4, overrides=TINY)
    assert all(other[k] != first[k] for k in ("mig", "sap", "factorvae_score", "betavae_score"))
    # one metric alone gets the same number as in company
    alone = compute_metrics(["factorvae_score"], data, rotated, "fast", seed=3, overrides=TINY)
    assert alone == {"factorvae_score": first["factorvae_score"]}


def test_unknown_metric_and_preset_are_clear_errors():
    with pytest.raises(ValueError, match=r"eval.metrics: unknown metric 'x'; expected one of mig, dci, sap"):
        compute_metrics(["mig", "x"], IdentityData(), identity)
    with pytest.raises(ValueError, match="unknown metric 'x'"):
        metric_params(["x"])
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        compute_metrics(["mig"], IdentityData(), identity, preset="huge")
    with pytest.raises(ValueError, match="mig has no parameter 'bins'"):
        compute_metrics(["mig"], IdentityData(), identity, overrides={"mig": {"bins": 10}})
    with pytest.raises(ValueError, match="at least 2 code dimensions"):
        mig(np.zeros((10, 1)), np.zeros((10, 1), dtype=int))


def test_presets_and_metric_params():
    full = PRESETS["full"]  # disentanglement_lib's study
    assert full["mig"] == {"num_train": 10_000, "num_bins": 20}
    assert full["dci"] == {"num_train": 10_000, "num_test": 5_000}
    assert full["factorvae_score"]["num_variance_estimate"] == 10_000 and full["factorvae_score"]["batch_size"] == 64
    assert (full["betavae_score"]["num_train"], full["betavae_score"]["num_eval"]) == (10_000, 5_000)
    assert set(PRESETS["fast"]) == set(METRIC_NAMES)
    params = metric_params(["mig", "sap"], "full")
    assert params["metrics.preset"] == "full" and params["mig.num_bins"] == 20 and params["sap.num_test"] == 5_000
    assert params["sap.continuous_factors"] == "False"
    assert all(isinstance(v, (str, int, float)) for v in params.values())


@pytest.mark.slow
def test_compute_metrics_on_a_burgess_model_over_dsprites():
    from bvae_core.data import make_dataset
    from bvae_core.evaluation import encode_means
    from bvae_core.models import build_model

    dataset = make_dataset("dsprites", resolution=32, n_test=100)
    torch.manual_seed(0)
    model = build_model("burgess", dataset.example_shape, latent_dim=6)
    encode = functools.partial(encode_means, model)
    with torch.no_grad():  # an untrained encoder's means barely move: standardise them, or FactorVAE prunes them all
        means = encode(dataset.render(dataset.sample_factors(512, torch.Generator().manual_seed(1)))).double()
        layer, k = model.encoder.fc[-1], model.latent_dim  # rows [0, k) give the means
        layer.weight[:k] /= means.std(0).float()[:, None]
        layer.bias[:k] = (layer.bias[:k] - means.mean(0).float()) / means.std(0).float()
    assert factorvae_details(dataset, encode, **TINY["factorvae_score"])["num_active_dims"] == k
    scores = compute_metrics(list(METRIC_NAMES), dataset, encode, "fast", seed=0, overrides=TINY)
    assert set(scores) == {key for keys in RESULT_NAMES.values() for key in keys}
    assert all(np.isfinite(v) and 0.0 <= v <= 1.0 for v in scores.values())


def test_code_based_metrics_on_a_file_dataset_match_the_rendered_one(tmp_path):
    """A file holding every factor combination once (as the published dSprites file does): MIG, DCI and SAP drawn
    from its rows agree with the same metrics on the renderer — rows drawn uniformly are factors drawn uniformly."""
    import itertools

    import torch

    from bvae_core.data import Blobs, make_dataset
    from bvae_core.metrics import compute_metrics

    blobs = Blobs(resolution=32, grid=8)
    factors = torch.tensor(list(itertools.product(range(8), range(8))))
    np.savez(tmp_path / "grid.npz", images=blobs.render(factors).numpy(), factors=factors.numpy())
    stored = make_dataset("file", path=str(tmp_path / "grid.npz"))
    axis = torch.arange(32, dtype=torch.float32)

    def centroid(x):  # an encoder that recovers the blob's position: a disentangled code
        mass = x[:, 0].sum((1, 2))
        return torch.stack([(x[:, 0].sum(1) * axis).sum(1) / mass, (x[:, 0].sum(2) * axis).sum(1) / mass], 1)

    names = ["mig", "dci", "sap"]
    from_file, rendered = (compute_metrics(names, d, centroid, "fast", seed=3) for d in (stored, blobs))
    assert from_file.keys() == rendered.keys()
    for key in from_file:
        assert from_file[key] == pytest.approx(rendered[key], abs=0.05), key
    assert from_file["mig"] > 0.5 and from_file["dci/disentanglement"] > 0.8
    np.savez(tmp_path / "bare.npz", images=blobs.render(factors).numpy())
    with pytest.raises(ValueError, match="no factors"):
        compute_metrics(["mig"], make_dataset("file", path=str(tmp_path / "bare.npz")), centroid, "fast")


def test_in_sample_share_is_the_share_of_test_draws_that_were_also_training_draws():
    import torch

    from bvae_core.metrics import in_sample_share

    for points in (50, 3_000, 737_280):
        train = torch.randint(points, (2_000,), generator=torch.Generator().manual_seed(0))  # sap's fast num_train
        test = torch.randint(points, (20_000,), generator=torch.Generator().manual_seed(1))
        seen = torch.isin(test, train).double().mean().item()
        assert in_sample_share(["mig", "sap"], points, "fast") == pytest.approx(seen, abs=0.03), points  # sd ~0.01
    assert in_sample_share(["dci"], 737_280, "full") < 0.02  # dSprites at disentanglement_lib's sizes: ~1 %
    assert in_sample_share(["mig", "factorvae_score"], 50) == 0.0  # no held-out metric
    with pytest.raises(ValueError, match="distinct_points"):
        in_sample_share(["sap"], 0)
