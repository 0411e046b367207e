"""FactorVAE score (the "disentanglement metric" of FactorVAE).

Kim & Mnih 2018, "Disentangling by Factorising", §4, computed as in disentanglement_lib's
``evaluation/metrics/factor_vae.py`` (Locatello et al. 2019):

* global variances of the encoder means from ``num_variance_estimate = 10,000`` points with independent uniform
  factors (unbiased, ``ddof=1``);
* code dimensions whose global standard deviation is below ``prune_threshold = 0.05`` are pruned (collapsed to the
  prior; ``prune_dims.threshold = 0.05``);
* one vote: pick a factor k uniformly, draw ``batch_size = 64`` points that all share one random value of factor k
  (the other factors uniform), encode, divide each dimension's variance within the batch by its global variance
  (i.e. normalise by the global std), and take the argmin over the active dimensions → the vote (argmin, k);
* the classifier is the majority vote: each code dimension predicts the factor it voted for most often in
  ``num_train = 10,000`` training votes; the score is its accuracy on ``num_eval = 5,000`` fresh votes.

``factorvae_score`` returns that one number; ``factorvae_details`` also gives the training accuracy and the number
of active dimensions. With no active dimension every accuracy is 0. The factor of a vote is drawn among the factors
with more than one value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .sampling import BLOCK, Encode, encode_factors, make_generator, sample_codes, sample_fixed_factor

#: Kim & Mnih 2018 / disentanglement_lib (``factor_vae_metric.gin``).
BATCH_SIZE = 64
NUM_TRAIN = 10_000
NUM_EVAL = 5_000
NUM_VARIANCE_ESTIMATE = 10_000
PRUNE_THRESHOLD = 0.05


def _votes(dataset: Any, encode: Encode, generator: Any, num_votes: int, batch_size: int,
           global_variances: np.ndarray, active: np.ndarray, encode_batch_size: int) -> np.ndarray:  # fmt: skip
    """Vote counts ``[K factors, k codes]``."""
    num_factors, num_codes = len(dataset.factor_sizes), global_variances.shape[0]
    active_index = np.flatnonzero(active)
    votes = np.zeros((num_factors, num_codes), dtype=np.int64)
    for start in range(0, num_votes, BLOCK):
        n = min(BLOCK, num_votes - start)
        ks, factors = sample_fixed_factor(dataset, generator, n, batch_size)
        codes = encode_factors(dataset, encode, factors.reshape(n * batch_size, -1), encode_batch_size)
        local_variances = np.var(codes.reshape(n, batch_size, num_codes), axis=1, ddof=1)  # [n, k]
        ratio = local_variances[:, active] / global_variances[active]
        np.add.at(votes, (ks, active_index[np.argmin(ratio, axis=1)]), 1)
    return votes


def factorvae_details(dataset: Any, encode: Encode, *, batch_size: int = BATCH_SIZE, num_train: int = NUM_TRAIN,
                      num_eval: int = NUM_EVAL, num_variance_estimate: int = NUM_VARIANCE_ESTIMATE,
                      prune_threshold: float = PRUNE_THRESHOLD, seed: int = 0,
                      encode_batch_size: int = 512) -> dict[str, float]:  # fmt: skip
    """``{"train_accuracy", "eval_accuracy", "num_active_dims"}`` of the FactorVAE majority-vote classifier."""
    if batch_size < 2 or num_train < 1 or num_eval < 1 or num_variance_estimate < 2:
        raise ValueError("factorvae_score: expected batch_size ≥ 2, num_train ≥ 1, num_eval ≥ 1 and num_variance_estimate"
                         f" ≥ 2, got {batch_size}, {num_train}, {num_eval}, {num_variance_estimate}")  # fmt: skip
    if not any(size > 1 for size in dataset.factor_sizes):
        raise ValueError("factorvae_score: the dataset has no factor with more than one value")
    generator = make_generator(seed, "factorvae_score")
    codes, _ = sample_codes(dataset, encode, num_variance_estimate, generator, encode_batch_size)
    global_variances = np.var(codes, axis=0, ddof=1)
    active = np.sqrt(global_variances) >= prune_threshold
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0.0}
    args = (batch_size, global_variances, active, encode_batch_size)
    train_votes = _votes(dataset, encode, generator, num_train, *args)
    classifier = np.argmax(train_votes, axis=0)  # code dimension → the factor it votes for most
    codes_index = np.arange(train_votes.shape[1])
    train_accuracy = train_votes[classifier, codes_index].sum() / train_votes.sum()
    eval_votes = _votes(dataset, encode, generator, num_eval, *args)
    eval_accuracy = eval_votes[classifier, codes_index].sum() / eval_votes.sum()
    return {"train_accuracy": float(train_accuracy), "eval_accuracy": float(eval_accuracy),
            "num_active_dims": float(active.sum())}  # fmt: skip


def factorvae_score(dataset: Any, encode: Encode, *, batch_size: int = BATCH_SIZE, num_train: int = NUM_TRAIN,
                    num_eval: int = NUM_EVAL, num_variance_estimate: int = NUM_VARIANCE_ESTIMATE,
                    prune_threshold: float = PRUNE_THRESHOLD, seed: int = 0, encode_batch_size: int = 512) -> float:  # fmt: skip
    """The FactorVAE score: the majority-vote classifier's accuracy on the evaluation votes, in [0, 1]."""
    return factorvae_details(dataset, encode, batch_size=batch_size, num_train=num_train, num_eval=num_eval,
                             num_variance_estimate=num_variance_estimate, prune_threshold=prune_threshold, seed=seed,
                             encode_batch_size=encode_batch_size)["eval_accuracy"]  # fmt: skip
