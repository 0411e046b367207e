"""SAP: Separated Attribute Predictability.

Kumar, Sattigeri & Balakrishnan 2018, "Variational Inference of Disentangled Latent Concepts from Unlabeled
Observations", §3, computed as in disentanglement_lib's ``evaluation/metrics/sap_score.py`` (Locatello et al. 2019):

* a score for every (code i, factor j) pair, from code i alone:
  - discrete factors (the default, ``sap_score.continuous_factors = False`` in the study): the test accuracy of
    ``sklearn.svm.LinearSVC(C=0.01, class_weight="balanced")`` trained on the training points;
  - continuous factors (``continuous_factors=True``): R² of a linear fit, Cov(z_i, y_j)² / (Var z_i · Var y_j), on
    the training points (0 where Var z_i ≤ 1e-12);
* SAP = mean over factors of (best score − second best score);
* disentanglement_lib's study: ``sap_score.num_train = 10,000``, ``sap_score.num_test = 5,000`` (``PRESETS``).

Train/test: pass ``codes_test``/``factors_test`` explicitly, or leave them out and the first ``ceil(2/3·N)`` rows
train and the rest test. The continuous variant uses the training points only (as disentanglement_lib); given no
test arrays it uses every row. Factors constant over the training points are left out.
"""

from __future__ import annotations

import numpy as np
from sklearn.svm import LinearSVC

from .utils import check_codes_factors, split_train_test, varying_factors

#: Kumar et al. 2018 / disentanglement_lib: a linear SVM with C = 0.01 and balanced class weights.
SVM_C = 0.01
TRAIN_FRACTION = 2 / 3


def score_matrix(codes: np.ndarray, factors: np.ndarray, codes_test: np.ndarray | None, factors_test: np.ndarray | None,
                 continuous_factors: bool, random_state: int | None = 0) -> np.ndarray:  # fmt: skip
    """Predictability of each factor from each single code dimension, ``[k, K]``."""
    k, K = codes.shape[1], factors.shape[1]
    scores = np.zeros((k, K))
    if continuous_factors:
        for i in range(k):
            for j in range(K):
                cov = np.cov(codes[:, i], factors[:, j], ddof=1)
                if cov[0, 0] > 1e-12:
                    scores[i, j] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1])
        return scores
    for i in range(k):
        for j in range(K):
            classifier = LinearSVC(C=SVM_C, class_weight="balanced", random_state=random_state)
            classifier.fit(codes[:, i : i + 1], factors[:, j])
            scores[i, j] = np.mean(classifier.predict(codes_test[:, i : i + 1]) == factors_test[:, j])
    return scores


def sap(codes: np.ndarray, factors: np.ndarray, codes_test: np.ndarray | None = None,
        factors_test: np.ndarray | None = None, *, continuous_factors: bool = False,
        train_fraction: float = TRAIN_FRACTION, random_state: int | None = 0) -> float:  # fmt: skip
    """SAP of ``codes[N, k]`` against ``factors[N, K]``, in [0, 1]."""
    codes, factors = check_codes_factors(codes, factors, "sap")
    if (codes_test is None) != (factors_test is None):
        raise ValueError("sap: pass both codes_test and factors_test, or neither")
    if codes_test is not None:
        codes_test, factors_test = check_codes_factors(codes_test, factors_test, "sap")
        if codes_test.shape[1] != codes.shape[1] or factors_test.shape[1] != factors.shape[1]:
            raise ValueError("sap: the test codes and factors must have the same columns as the training ones")
    elif not continuous_factors:
        codes, factors, codes_test, factors_test = split_train_test(codes, factors, train_fraction)
    if codes.shape[1] < 2:
        raise ValueError(f"sap: needs at least 2 code dimensions (the score is top-1 minus top-2), got {codes.shape[1]}")
    keep = varying_factors(factors)
    if not keep.any():
        raise ValueError("sap: every factor is constant over the training points; nothing to measure")
    factors = factors[:, keep]
    factors_test = None if factors_test is None else factors_test[:, keep]
    scores = score_matrix(codes, factors, codes_test, factors_test, continuous_factors, random_state)
    top = np.sort(scores, axis=0)
    return float(np.mean(top[-1] - top[-2]))
