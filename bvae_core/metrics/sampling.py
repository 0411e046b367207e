"""Seeded factor sampling and batched encoding, for the metrics that take a dataset and an encode function.

The protocol is disentanglement_lib's: every factor index uniform and independent (``dataset.sample_factors``),
images rendered from the factors, the representation = the encoder means. Images are rendered and encoded one batch
at a time (``encode_batch_size`` images), so no more than one batch of images is ever held on the device; only the
codes (``[n, k]``) are kept, as NumPy arrays on the host.

``dataset`` is anything with ``factor_sizes``, ``sample_factors(n, generator) -> LongTensor[n, K]`` and
``render(factor_indices) -> Tensor[n, ...]`` (a :class:`bvae_core.data.GroundTruthDataset`, or a stand-in); when it
has a ``device`` the factors are moved there before rendering. For the code-based metrics (MIG, DCI, SAP) it may
instead be a dataset of stored examples with factors (``factors``, ``examples(rows)``: a
:class:`bvae_core.data.FileDataset`): points are then rows drawn uniformly — the same protocol where the file holds
every factor combination once (as the published dSprites file does), else the file's own factor distribution.
``encode`` maps a batch of examples to the encoder means ``[n, k]`` (tensor or array), e.g.
``functools.partial(bvae_core.evaluation.encode_means, model)``; it is called under ``torch.no_grad()``.

Torch is imported inside the functions, so that importing :mod:`bvae_core.metrics` needs NumPy and scikit-learn only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: Independent random streams per metric family, so that adding a metric to a run does not change the others.
STREAMS = {"points": 0, "points_test": 1, "factorvae_score": 2, "betavae_score": 3}
#: Votes (FactorVAE) or training points (BetaVAE) whose factors are drawn together. Fixed, so that the numbers do not
#: depend on ``encode_batch_size``.
BLOCK = 64

Encode = Callable[[Any], Any]


def make_generator(seed: int, stream: str) -> Any:
    """A CPU ``torch.Generator`` for ``stream``, derived from ``seed`` (the same on every device and run)."""
    import torch

    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    state = np.random.SeedSequence([int(seed), STREAMS[stream]]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def varying_factor_indices(dataset: Any) -> np.ndarray:
    """Indices of the factors with more than one value (a factor of size 1 is not a factor of variation)."""
    return np.array([j for j, size in enumerate(dataset.factor_sizes) if size > 1], dtype=np.int64)


def to_numpy(codes: Any) -> np.ndarray:
    """Encoder output (tensor on any device, any float dtype, or array) → ``float64`` array ``[n, k]``."""
    if hasattr(codes, "detach"):
        codes = codes.detach().float().cpu().numpy()
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2:
        raise ValueError(f"encode: expected the encoder means as [n, k], got shape {codes.shape}")
    return codes


def encode_factors(dataset: Any, encode: Encode, factors: Any, encode_batch_size: int) -> np.ndarray:
    """Render ``factors`` (``LongTensor[n, K]``) and encode them, ``encode_batch_size`` at a time → ``float64[n, k]``."""
    return _encode_batches(dataset.render, dataset, encode, factors, encode_batch_size)


def encode_rows(dataset: Any, encode: Encode, rows: Any, encode_batch_size: int) -> np.ndarray:
    """Encode the stored examples ``rows`` (``LongTensor[n]``, ``dataset.examples``) in batches → ``float64[n, k]``."""
    return _encode_batches(dataset.examples, dataset, encode, rows, encode_batch_size)


def _encode_batches(make: Callable[[Any], Any], dataset: Any, encode: Encode, keys: Any,
                    encode_batch_size: int) -> np.ndarray:  # fmt: skip
    import torch

    if encode_batch_size < 1:
        raise ValueError(f"encode_batch_size: expected a positive integer, got {encode_batch_size}")
    device = getattr(dataset, "device", None)
    out = []
    with torch.no_grad():
        for start in range(0, keys.shape[0], encode_batch_size):
            chunk = keys[start : start + encode_batch_size]
            if device is not None:
                chunk = chunk.to(device)
            codes = to_numpy(encode(make(chunk)))
            if codes.shape[0] != chunk.shape[0]:
                raise ValueError(f"encode: returned {codes.shape[0]} rows for {chunk.shape[0]} examples")
            out.append(codes)
    return np.concatenate(out)


def sample_codes(dataset: Any, encode: Encode, num_points: int, generator: Any,
                 encode_batch_size: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``num_points`` points with independent uniform factors → (codes ``float64[n, k]``, factors ``int64[n, K]``)."""
    if num_points < 1:
        raise ValueError(f"expected a positive number of points, got {num_points}")
    if not hasattr(dataset, "render"):  # stored examples: rows drawn uniformly (see the module docstring)
        import torch

        if getattr(dataset, "factors", None) is None:
            raise ValueError("the dataset has no factors: the disentanglement metrics need them")
        rows = torch.randint(dataset.factors.shape[0], (num_points,), generator=generator)
        codes = encode_rows(dataset, encode, rows, encode_batch_size)
        return codes, dataset.factors[rows].numpy().astype(np.int64)
    factors = dataset.sample_factors(num_points, generator).cpu()
    codes = encode_factors(dataset, encode, factors, encode_batch_size)
    return codes, factors.numpy().astype(np.int64)


def sample_fixed_factor(dataset: Any, generator: Any, num: int, batch_size: int) -> tuple[np.ndarray, Any]:
    """``num`` batches of ``batch_size`` points that share one factor (FactorVAE score).

    For each batch: a factor k uniform among the varying factors, ``batch_size`` points with independent uniform
    factors, then factor k of every point set to that of the first point. Returns (k ``int64[num]``,
    factors ``LongTensor[num, batch_size, K]``)."""
    import torch

    varying = varying_factor_indices(dataset)
    ks = torch.from_numpy(varying)[torch.randint(len(varying), (num,), generator=generator)]
    factors = dataset.sample_factors(num * batch_size, generator).cpu().view(num, batch_size, -1)
    rows = torch.arange(num)
    factors[rows[:, None], torch.arange(batch_size)[None, :], ks[:, None]] = factors[rows, 0, ks][:, None]
    return ks.numpy(), factors


def sample_pairs(dataset: Any, generator: Any, num: int, batch_size: int) -> tuple[np.ndarray, Any, Any]:
    """``num`` batches of ``batch_size`` pairs of points whose members share one factor (BetaVAE score).

    For each batch: a factor k uniform among the varying factors, two sets of ``batch_size`` points with
    independent uniform factors, then factor k of the second set copied from the first. Returns
    (k ``int64[num]``, factors1, factors2 ``LongTensor[num, batch_size, K]``)."""
    import torch

    varying = varying_factor_indices(dataset)
    ks = torch.from_numpy(varying)[torch.randint(len(varying), (num,), generator=generator)]
    first = dataset.sample_factors(num * batch_size, generator).cpu().view(num, batch_size, -1)
    second = dataset.sample_factors(num * batch_size, generator).cpu().view(num, batch_size, -1)
    rows, cols = torch.arange(num)[:, None], torch.arange(batch_size)[None, :]
    second[rows, cols, ks[:, None]] = first[rows, cols, ks[:, None]]
    return ks.numpy(), first, second
