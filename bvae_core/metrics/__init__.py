"""Disentanglement metrics, as in disentanglement_lib (Locatello et al. 2019), one module each (docs/contracts.md).

Code-based metrics — plain functions of ``codes[N, k]`` (encoder means) and ``factors[N, K]`` (integer indices):
``mig`` → float, ``dci`` → dict, ``sap`` → float. Intervention-based scores — functions of a ground-truth dataset
and an encode function: ``factorvae_score``, ``betavae_score`` → float (``*_details`` → dict).
``compute_metrics(names, dataset, encode, preset, seed)`` samples, encodes in batches and returns the contract names (docs/contracts.md);
``metric_params`` lists the parameters it used; ``in_sample_share`` how many held-out points a small dataset
repeats; ``PRESETS`` holds the ``full`` (disentanglement_lib) and ``fast`` sample sizes.
"""

from .beta_vae import betavae_details, betavae_score
from .compute import METRIC_NAMES, PRESETS, RESULT_NAMES, compute_metrics, in_sample_share, metric_params
from .dci import dci, dci_from_importance
from .factor_vae import factorvae_details, factorvae_score
from .mig import mig
from .sap_score import sap

__all__ = ["mig", "dci", "dci_from_importance", "sap", "factorvae_score", "factorvae_details", "betavae_score",
           "betavae_details", "compute_metrics", "metric_params", "in_sample_share", "PRESETS", "METRIC_NAMES",
           "RESULT_NAMES"]  # fmt: skip
