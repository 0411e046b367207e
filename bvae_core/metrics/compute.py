"""One entry point for the sweeps: ``compute_metrics(names, dataset, encode, preset, seed)``.

Two presets of sample sizes. ``full`` is disentanglement_lib's study (Locatello et al. 2019, the ``*.gin`` metric
configs); ``fast`` keeps every other parameter and draws fewer points, for evaluating many trials of a small sweep.
The code-based metrics (MIG, DCI, SAP) share one sample: ``max(num_train)`` training points and ``max(num_test)``
test points drawn from two independent streams of ``seed``, encoded in batches; each metric takes the first
``num_train`` / ``num_test`` rows. The intervention-based scores draw their own batches from their own streams, so
that a metric's number does not depend on which other metrics were asked for.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from .beta_vae import betavae_score
from .dci import dci
from .factor_vae import factorvae_score
from .mig import mig
from .sampling import Encode, make_generator, sample_codes
from .sap_score import sap

#: The metrics ``compute_metrics`` knows, in the order it reports them.
METRIC_NAMES = ("mig", "dci", "sap", "factorvae_score", "betavae_score")
#: The names each metric reports under (docs/contracts.md, "Units and metric names").
RESULT_NAMES = {
    "mig": ("mig",),
    "dci": ("dci/disentanglement", "dci/completeness", "dci/informativeness"),
    "sap": ("sap",),
    "factorvae_score": ("factorvae_score",),
    "betavae_score": ("betavae_score",),
}
CODE_BASED = ("mig", "dci", "sap")

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Locatello et al. 2019 (disentanglement_lib): mig.gin, dci.gin, sap_score.gin, factor_vae_metric.gin,
    # beta_vae_sklearn_metric.gin.
    "full": {
        "mig": {"num_train": 10_000, "num_bins": 20},
        "dci": {"num_train": 10_000, "num_test": 5_000},
        "sap": {"num_train": 10_000, "num_test": 5_000, "continuous_factors": False},
        "factorvae_score": {"batch_size": 64, "num_train": 10_000, "num_eval": 5_000, "num_variance_estimate": 10_000,
                            "prune_threshold": 0.05},  # fmt: skip
        "betavae_score": {"batch_size": 64, "num_train": 10_000, "num_eval": 5_000},
    },
    # The same parameters on fewer points, for evaluating many trials of a small sweep. Measured on 2 shared CPU cores
    # at 64 px (benchmarks/metrics_cost.py): DCI's gradient-boosted trees dominate (one tree per class per stage: 113
    # classes on dSprites); the intervention scores encode about 50,000 examples each.
    "fast": {
        "mig": {"num_train": 2_000, "num_bins": 20},
        "dci": {"num_train": 1_000, "num_test": 500},
        "sap": {"num_train": 2_000, "num_test": 1_000, "continuous_factors": False},
        "factorvae_score": {"batch_size": 64, "num_train": 500, "num_eval": 250, "num_variance_estimate": 2_000,
                            "prune_threshold": 0.05},  # fmt: skip
        "betavae_score": {"batch_size": 64, "num_train": 300, "num_eval": 150},
    },
}

#: Fixed parts of each metric, for the record (``metric_params``).
_DESCRIPTION = {
    "mig": {"representation": "encoder means", "discretizer": "histogram (equal width)"},
    "dci": {"representation": "encoder means", "model": "GradientBoostingClassifier() per factor",
            "informativeness": "test accuracy"},  # fmt: skip
    "sap": {"representation": "encoder means", "model": "LinearSVC(C=0.01, class_weight='balanced')"},
    "factorvae_score": {"representation": "encoder means", "classifier": "majority vote"},
    "betavae_score": {"representation": "encoder means", "model": "LogisticRegression(max_iter=1000)"},
}


def _check_names(names: Iterable[str]) -> list[str]:
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for name in names:
        if name not in METRIC_NAMES:
            raise ValueError(f"eval.metrics: unknown metric {name!r}; expected one of {', '.join(METRIC_NAMES)}")
        if name not in out:
            out.append(name)
    return out


def resolve_preset(preset: str,
                   overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The parameters of ``preset`` with ``overrides`` (``{metric: {parameter: value}}``) applied."""
    if preset not in PRESETS:
        raise ValueError(f"eval.preset: unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    params = copy.deepcopy(PRESETS[preset])
    for metric, values in (overrides or {}).items():
        if metric not in params:
            expected = ", ".join(METRIC_NAMES)
            raise ValueError(f"eval.metrics: unknown metric {metric!r} in overrides; expected one of {expected}")
        for key, value in values.items():
            if key not in params[metric]:
                expected = ", ".join(params[metric])
                raise ValueError(f"eval.metrics: {metric} has no parameter {key!r}; expected one of {expected}")
            params[metric][key] = value
    return params


def metric_params(names: Iterable[str], preset: str = "fast",
                  overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, str | int | float]:  # fmt: skip
    """Every parameter ``compute_metrics(names, …, preset)`` uses, flat (``"mig.num_bins": 20``), to log them."""
    names = _check_names(names)
    params = resolve_preset(preset, overrides)
    out: dict[str, str | int | float] = {"metrics.preset": preset}
    for name in names:
        for key, value in {**_DESCRIPTION[name], **params[name]}.items():
            out[f"{name}.{key}"] = str(value) if isinstance(value, bool) else value
    return out


def compute_metrics(names: Iterable[str], dataset: Any, encode: Encode, preset: str = "fast", seed: int = 0, *,
                    overrides: Mapping[str, Mapping[str, Any]] | None = None,
                    encode_batch_size: int = 512) -> dict[str, float]:  # fmt: skip
    """The metrics ``names`` (from :data:`METRIC_NAMES`) of the representation ``encode`` on ``dataset``.

    ``dataset``: a :class:`~bvae_core.data.GroundTruthDataset` (``factor_sizes``, ``sample_factors``, ``render``);
    ``encode``: rendered images → encoder means ``[n, k]``, e.g. ``functools.partial(encode_means, model)``.
    Returns the docs/contracts.md names: ``mig``, ``dci/disentanglement``, ``dci/completeness``, ``dci/informativeness``
    (test accuracy), ``sap``, ``factorvae_score``, ``betavae_score``. The same seed gives the same numbers."""
    names = _check_names(names)
    params = resolve_preset(preset, overrides)
    results: dict[str, float] = {}
    code_based = [n for n in names if n in CODE_BASED]
    if code_based:
        num_train = max(params[n]["num_train"] for n in code_based)
        num_test = max([params[n]["num_test"] for n in code_based if "num_test" in params[n]], default=0)
        codes, factors = sample_codes(dataset, encode, num_train, make_generator(seed, "points"), encode_batch_size)
        if num_test:
            codes_test, factors_test = sample_codes(dataset, encode, num_test, make_generator(seed, "points_test"),
                                                    encode_batch_size)  # fmt: skip
    for name in names:
        p = params[name]
        if name == "mig":
            results["mig"] = mig(codes[: p["num_train"]], factors[: p["num_train"]], num_bins=p["num_bins"])
        elif name == "dci":
            n, m = p["num_train"], p["num_test"]
            scores = dci(codes[:n], factors[:n], codes_test[:m], factors_test[:m], random_state=seed)
            results["dci/disentanglement"] = scores["disentanglement"]
            results["dci/completeness"] = scores["completeness"]
            results["dci/informativeness"] = scores["informativeness_test"]
        elif name == "sap":
            n, m = p["num_train"], p["num_test"]
            results["sap"] = sap(codes[:n], factors[:n], codes_test[:m], factors_test[:m],
                                 continuous_factors=p["continuous_factors"], random_state=seed)  # fmt: skip
        elif name == "factorvae_score":
            results[name] = factorvae_score(dataset, encode, seed=seed, encode_batch_size=encode_batch_size, **p)
        elif name == "betavae_score":
            results[name] = betavae_score(dataset, encode, seed=seed, encode_batch_size=encode_batch_size, **p)
    return results


def in_sample_share(names: Iterable[str], distinct_points: int, preset: str = "fast",
                    overrides: Mapping[str, Mapping[str, Any]] | None = None) -> float:  # fmt: skip
    """The expected share of the held-out metrics' test points (``dci/informativeness``, ``sap``) that were also
    drawn for training, on a dataset of ``distinct_points`` (factor combinations, or a file's rows).

    Training and test points are drawn independently and uniformly, with replacement (disentanglement_lib's protocol),
    so a test point is among the ``n`` training draws with probability ``1 − (1 − 1/N)^n``: about 1 % on dSprites
    at the ``full`` preset, all of them on a file of a few hundred rows. 0 when no held-out metric is asked for."""
    if distinct_points < 1:
        raise ValueError(f"distinct_points: expected a positive number, got {distinct_points}")
    names = _check_names(names)
    params = resolve_preset(preset, overrides)
    held_out = [n for n in names if n in CODE_BASED and "num_test" in params[n]]
    if not held_out:
        return 0.0
    num_train = max(params[n]["num_train"] for n in held_out)
    return 1.0 - (1.0 - 1.0 / distinct_points) ** num_train

