"""Mutual Information Gap (MIG).

Chen, Li, Grosse & Duvenaud 2018, "Isolating Sources of Disentanglement in Variational Autoencoders", §4.1,
computed as in disentanglement_lib's ``evaluation/metrics/mig.py`` (Locatello et al. 2019):

* each code dimension is discretised into ``num_bins = 20`` equal-width bins over its own range
  (``histogram_discretizer``, ``discretizer.num_bins = 20``);
* ``I(code_i; factor_j)`` by ``sklearn.metrics.mutual_info_score`` on the discretised codes and the factor indices;
* MIG = mean over factors of (largest − second largest mutual information) / ``H(factor_j)``, the entropy of the
  factor in the same sample (``mutual_info_score(y, y)``);
* disentanglement_lib's study draws ``num_train = 10,000`` points with independent uniform factors (``PRESETS``).

Factors constant over the sample (entropy 0) are left out of the mean (disentanglement_lib divides by zero there).
"""

from __future__ import annotations

import numpy as np

from .utils import check_codes_factors, discrete_entropy, discrete_mutual_info, histogram_discretize, varying_factors

#: Locatello et al. 2019 (disentanglement_lib ``mig.gin``): ``discretizer.num_bins = 20``.
NUM_BINS = 20


def mig(codes: np.ndarray, factors: np.ndarray, *, num_bins: int = NUM_BINS) -> float:
    """MIG of ``codes[N, k]`` (encoder means) against ``factors[N, K]`` (integer indices), in [0, 1]."""
    codes, factors = check_codes_factors(codes, factors, "mig")
    if codes.shape[1] < 2:
        raise ValueError(f"mig: needs at least 2 code dimensions (the gap is top-1 minus top-2), got {codes.shape[1]}")
    factors = factors[:, varying_factors(factors)]
    if factors.shape[1] == 0:
        raise ValueError("mig: every factor is constant over the sample; nothing to measure")
    m = discrete_mutual_info(histogram_discretize(codes, num_bins), factors)  # [k, K]
    entropy = discrete_entropy(factors)  # [K]
    top = np.sort(m, axis=0)[::-1]
    return float(np.mean((top[0] - top[1]) / entropy))
