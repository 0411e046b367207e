"""DCI: disentanglement, completeness and informativeness.

Eastwood & Williams 2018, "A Framework for the Quantitative Evaluation of Disentangled Representations", computed as
in disentanglement_lib's ``evaluation/metrics/dci.py`` (Locatello et al. 2019):

* one ``sklearn.ensemble.GradientBoostingClassifier()`` per factor, default parameters (100 trees of depth 3,
  learning rate 0.1), trained to predict the factor index from all code dimensions on the training points;
* importance matrix ``R[i, j] = |feature_importances_[i]|`` of code i for factor j, ``[k, K]``;
* disentanglement = Σ_i ρ_i (1 − H_K(P_i·)), P_ij = R_ij / Σ_j R_ij, ρ_i = Σ_j R_ij / Σ R (code importance),
  entropies in base K = number of factors (``scipy.stats.entropy(..., base=K)``, 1e-11 added to every entry);
* completeness = Σ_j ρ_j (1 − H_k(P̃_·j)), P̃_ij = R_ij / Σ_i R_ij, ρ_j = Σ_i R_ij / Σ R, base k = number of codes;
* informativeness = the classifiers' mean accuracy, on the training points and on held-out test points;
* disentanglement_lib's study: ``dci.num_train = 10,000``, ``dci.num_test = 5,000`` (``PRESETS``).

Train/test: pass ``codes_test``/``factors_test`` explicitly, or leave them out and the first ``ceil(2/3·N)`` rows
train and the rest test (10,000 / 5,000 of 15,000, as in the study). Factors constant over the training points are
left out (a classifier cannot be fit to one class).
"""

from __future__ import annotations

import numpy as np
import scipy.stats
from sklearn.ensemble import GradientBoostingClassifier

from .utils import check_codes_factors, split_train_test, varying_factors

#: Locatello et al. 2019: 10,000 training and 5,000 test points → 2/3 of the rows train when no test set is given.
TRAIN_FRACTION = 2 / 3


def importance_gbt(codes: np.ndarray, factors: np.ndarray, codes_test: np.ndarray, factors_test: np.ndarray,
                   random_state: int | None = 0) -> tuple[np.ndarray, float, float]:  # fmt: skip
    """Importance matrix ``[k, K]``, mean train accuracy and mean test accuracy of one GBT per factor.

    ``random_state`` seeds the trees' feature permutation (it only matters for ties); disentanglement_lib leaves it
    unset, we fix it so that the same codes always give the same numbers."""
    k, K = codes.shape[1], factors.shape[1]
    importance = np.zeros((k, K), dtype=np.float64)
    train_acc, test_acc = [], []
    for j in range(K):
        model = GradientBoostingClassifier(random_state=random_state)
        model.fit(codes, factors[:, j])
        importance[:, j] = np.abs(model.feature_importances_)
        train_acc.append(np.mean(model.predict(codes) == factors[:, j]))
        test_acc.append(np.mean(model.predict(codes_test) == factors_test[:, j]))
    return importance, float(np.mean(train_acc)), float(np.mean(test_acc))


def disentanglement(importance: np.ndarray) -> float:
    """Importance-weighted mean over codes of 1 − (entropy of the code's importances over factors, base K)."""
    importance = np.asarray(importance, dtype=np.float64)
    per_code = 1.0 - scipy.stats.entropy(importance.T + 1e-11, base=importance.shape[1])
    if importance.sum() == 0.0:
        importance = np.ones_like(importance)
    code_importance = importance.sum(axis=1) / importance.sum()
    return float(np.sum(per_code * code_importance))


def completeness(importance: np.ndarray) -> float:
    """Importance-weighted mean over factors of 1 − (entropy of the factor's importances over codes, base k)."""
    importance = np.asarray(importance, dtype=np.float64)
    per_factor = 1.0 - scipy.stats.entropy(importance + 1e-11, base=importance.shape[0])
    if importance.sum() == 0.0:
        importance = np.ones_like(importance)
    factor_importance = importance.sum(axis=0) / importance.sum()
    return float(np.sum(per_factor * factor_importance))


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) of an importance matrix ``[k codes, K factors]`` (both need k, K ≥ 2)."""
    importance = np.asarray(importance, dtype=np.float64)
    if importance.ndim != 2 or min(importance.shape) < 2 or np.any(importance < 0):
        raise ValueError(f"dci: expected a non-negative importance matrix [k ≥ 2, K ≥ 2], got shape {importance.shape}")
    return disentanglement(importance), completeness(importance)


def dci(codes: np.ndarray, factors: np.ndarray, codes_test: np.ndarray | None = None,
        factors_test: np.ndarray | None = None, *, train_fraction: float = TRAIN_FRACTION,
        random_state: int | None = 0) -> dict[str, float]:  # fmt: skip
    """DCI of ``codes[N, k]`` against ``factors[N, K]``.

    Returns ``{"disentanglement", "completeness", "informativeness_train", "informativeness_test"}``, each in
    [0, 1] (informativeness = GBT accuracy)."""
    codes, factors = check_codes_factors(codes, factors, "dci")
    if (codes_test is None) != (factors_test is None):
        raise ValueError("dci: pass both codes_test and factors_test, or neither")
    if codes_test is None:
        codes, factors, codes_test, factors_test = split_train_test(codes, factors, train_fraction)
    else:
        codes_test, factors_test = check_codes_factors(codes_test, factors_test, "dci")
        if codes_test.shape[1] != codes.shape[1] or factors_test.shape[1] != factors.shape[1]:
            raise ValueError("dci: the test codes and factors must have the same columns as the training ones")
    if codes.shape[1] < 2:
        raise ValueError(f"dci: needs at least 2 code dimensions, got {codes.shape[1]}")
    keep = varying_factors(factors)
    if keep.sum() < 2:
        raise ValueError(f"dci: needs at least 2 factors that vary over the training points, got {int(keep.sum())}")
    importance, train_acc, test_acc = importance_gbt(codes, factors[:, keep], codes_test, factors_test[:, keep],
                                                     random_state)  # fmt: skip
    d, c = dci_from_importance(importance)
    return {"disentanglement": d, "completeness": c, "informativeness_train": train_acc,
            "informativeness_test": test_acc}  # fmt: skip
