"""Shared pieces of the code-based metrics, after disentanglement_lib's ``evaluation/metrics/utils.py``.

Everything here is NumPy only. Unlike disentanglement_lib, which stores codes and factors transposed
(``[num_codes, num_points]``), arrays here have one row per point: ``codes[N, k]`` (encoder means) and
``factors[N, K]`` (factor *indices*, integers).
"""

from __future__ import annotations

import math

import numpy as np
import sklearn.metrics


def check_codes_factors(codes: np.ndarray, factors: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: codes → ``float64[N, k]``, factors → ``int64[N, K]``. Errors name the metric."""
    codes = np.asarray(codes, dtype=np.float64)
    factors = np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2:
        raise ValueError(f"{metric}: expected codes [N, k] and factors [N, K], got shapes {codes.shape}, {factors.shape}")
    if codes.shape[0] != factors.shape[0]:
        raise ValueError(f"{metric}: codes and factors must have one row per point, "
                         f"got {codes.shape[0]} and {factors.shape[0]} rows")  # fmt: skip
    if codes.shape[0] < 2:
        raise ValueError(f"{metric}: needs at least 2 points, got {codes.shape[0]}")
    if not np.all(np.isfinite(codes)):
        raise ValueError(f"{metric}: codes contain NaN or infinite values")
    if not np.issubdtype(factors.dtype, np.integer):
        if not (np.all(np.isfinite(factors)) and np.array_equal(factors, np.round(factors))):
            raise ValueError(f"{metric}: factors must be integer factor indices (or values), got dtype {factors.dtype}")
    return codes, factors.astype(np.int64)


def varying_factors(factors: np.ndarray) -> np.ndarray:
    """Mask of the factors that take more than one value among the rows.

    A factor constant over the sample carries no information; the metrics leave it out, as disentanglement_lib's
    dSprites leaves out its constant colour factor.
    """
    return np.array([np.unique(factors[:, j]).size > 1 for j in range(factors.shape[1])], dtype=bool)


def split_train_test(codes: np.ndarray, factors: np.ndarray, train_fraction: float) -> tuple[np.ndarray, ...]:
    """First ``ceil(N · train_fraction)`` rows → train, the rest → test (disentanglement_lib's ``split_train_test``)."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction: expected a number in (0, 1), got {train_fraction}")
    n_train = int(math.ceil(codes.shape[0] * train_fraction))
    if not 0 < n_train < codes.shape[0]:
        raise ValueError(f"cannot split {codes.shape[0]} points into train and test (train_fraction={train_fraction})")
    return codes[:n_train], factors[:n_train], codes[n_train:], factors[n_train:]


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Each code dimension → the index of its equal-width histogram bin (``num_bins`` bins over its own range).

    disentanglement_lib's ``_histogram_discretize``: ``np.digitize(x, np.histogram(x, num_bins)[1][:-1])``, so the
    bins are numbered 1..num_bins (the maximum falls in the last bin).
    """
    out = np.zeros(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):
        edges = np.histogram(codes[:, i], num_bins)[1]
        out[:, i] = np.digitize(codes[:, i], edges[:-1])
    return out


def discrete_mutual_info(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """``I(code_i; factor_j)`` in nats for every pair, ``[k, K]`` (disentanglement_lib's ``discrete_mutual_info``)."""
    k, K = discrete_codes.shape[1], factors.shape[1]
    m = np.zeros((k, K))
    for i in range(k):
        for j in range(K):
            m[i, j] = sklearn.metrics.mutual_info_score(factors[:, j], discrete_codes[:, i])
    return m


def discrete_entropy(factors: np.ndarray) -> np.ndarray:
    """``H(factor_j)`` in nats, ``[K]`` (disentanglement_lib's ``discrete_entropy``: ``I(y; y)``)."""
    return np.array([sklearn.metrics.mutual_info_score(factors[:, j], factors[:, j]) for j in range(factors.shape[1])])
