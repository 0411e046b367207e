"""BetaVAE score (the "disentanglement metric" of β-VAE).

Higgins et al. 2017, "β-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework", §3,
computed as in disentanglement_lib's ``evaluation/metrics/beta_vae.py`` (``compute_beta_vae_sklearn``,
Locatello et al. 2019):

* one training point: pick a factor k uniformly, draw ``batch_size = 64`` pairs of points with independent uniform
  factors, copy factor k of the first member of each pair to the second, encode both; the feature is
  mean over the batch of |z₁ − z₂| (per code dimension), the label is k;
* ``sklearn.linear_model.LogisticRegression`` with default parameters (L2, C = 1), fit on ``num_train = 10,000``
  points, except ``max_iter = 1000``: today's default solver (lbfgs, 100 iterations) often stops short on these
  unscaled features, where the liblinear solver of disentanglement_lib's day ran to convergence;
* the score is its accuracy on ``num_eval = 5,000`` fresh points.

``betavae_score`` returns that one number; ``betavae_details`` also gives the training accuracy. The factor of a
point is drawn among the factors with more than one value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from .sampling import BLOCK, Encode, encode_factors, make_generator, sample_pairs

#: Higgins et al. 2017 / disentanglement_lib (``beta_vae_sklearn_metric.gin``).
BATCH_SIZE = 64
NUM_TRAIN = 10_000
NUM_EVAL = 5_000
#: Not a paper figure: enough lbfgs iterations to converge (sklearn's default of 100 often is not).
MAX_ITER = 1_000


def _points(dataset: Any, encode: Encode, generator: Any, num_points: int, batch_size: int,
            encode_batch_size: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Features ``[num_points, k]`` (mean |z₁ − z₂| over a batch of pairs) and labels (the shared factor)."""
    features, labels = [], []
    for start in range(0, num_points, BLOCK):
        n = min(BLOCK, num_points - start)
        ks, first, second = sample_pairs(dataset, generator, n, batch_size)
        z1 = encode_factors(dataset, encode, first.reshape(n * batch_size, -1), encode_batch_size)
        z2 = encode_factors(dataset, encode, second.reshape(n * batch_size, -1), encode_batch_size)
        features.append(np.mean(np.abs(z1 - z2).reshape(n, batch_size, -1), axis=1))
        labels.append(ks)
    return np.concatenate(features), np.concatenate(labels)


def betavae_details(dataset: Any, encode: Encode, *, batch_size: int = BATCH_SIZE, num_train: int = NUM_TRAIN,
                    num_eval: int = NUM_EVAL, seed: int = 0, encode_batch_size: int = 512) -> dict[str, float]:  # fmt: skip
    """``{"train_accuracy", "eval_accuracy"}`` of the logistic regression on the BetaVAE features."""
    if batch_size < 1 or num_train < 2 or num_eval < 1:
        raise ValueError("betavae_score: expected batch_size ≥ 1, num_train ≥ 2 and num_eval ≥ 1, "
                         f"got {batch_size}, {num_train}, {num_eval}")  # fmt: skip
    if sum(size > 1 for size in dataset.factor_sizes) < 2:
        raise ValueError("betavae_score: needs at least 2 factors with more than one value (the label is the factor)")
    generator = make_generator(seed, "betavae_score")
    train_x, train_y = _points(dataset, encode, generator, num_train, batch_size, encode_batch_size)
    if np.unique(train_y).size < 2:
        raise ValueError(f"betavae_score: num_train={num_train} drew a single factor; use more training points")
    model = LogisticRegression(max_iter=MAX_ITER, random_state=0)
    model.fit(train_x, train_y)
    train_accuracy = model.score(train_x, train_y)
    eval_x, eval_y = _points(dataset, encode, generator, num_eval, batch_size, encode_batch_size)
    eval_accuracy = model.score(eval_x, eval_y)
    return {"train_accuracy": float(train_accuracy), "eval_accuracy": float(eval_accuracy)}


def betavae_score(dataset: Any, encode: Encode, *, batch_size: int = BATCH_SIZE, num_train: int = NUM_TRAIN,
                  num_eval: int = NUM_EVAL, seed: int = 0, encode_batch_size: int = 512) -> float:  # fmt: skip
    """The BetaVAE score: the logistic regression's accuracy on the evaluation points, in [0, 1]."""
    return betavae_details(dataset, encode, batch_size=batch_size, num_train=num_train, num_eval=num_eval, seed=seed,
                           encode_batch_size=encode_batch_size)["eval_accuracy"]  # fmt: skip
