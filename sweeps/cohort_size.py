"""``search.cohort: auto`` (the default): how many configurations a sweep fuses into one Ray trial.

- Trials on CPUs (``resources.gpu: 0``): 1 — each trial keeps a core busy already, and a cohort trains about as many
  images per core-second as its trials one per core (benchmarks/gpu_packing.py on 2 cores: 0.9–1.2×).
- Trials on GPUs: as many as fit, up to :data:`COHORT_CAP`, and no more than fills every GPU the sweep may use
  (``ceil(trials / parallel trials)``, so that no GPU idles while another trains a long cohort). "Fit" is half the
  free memory of the trial's share of its GPU over one member's training memory
  (:func:`bvae_core.memory.training_memory_bytes`); the other half is left for evaluation batches, cuDNN workspaces,
  a captured graph's pool and the dataset.

Why a cap of 32: measured on an H200 (Burgess model, 64 px, batch 64, bf16) a cohort of 32 trains 104,800 img/s and
one of 128 130,200 — most of the gain at a quarter of the size — while a larger cohort asks Optuna for more
configurations before it can tell any result, so a model-based sampler learns from fewer rounds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .search import planned_trials
from .spec import SweepSpec, parse_spec

COHORT_CAP = 32
MEMORY_SHARE = 0.5
PROBE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class CohortChoice:
    size: int
    why: str  # said in the sweep's first lines


def choose_cohort_size(trials: int, parallel: int, member_bytes: int, free_bytes: int,
                       cap: int = COHORT_CAP) -> CohortChoice:  # fmt: skip
    """The cohort size for ``trials`` trials run ``parallel`` at a time, each member needing ``member_bytes`` of a
    device share with ``free_bytes`` free."""
    fits = int(MEMORY_SHARE * free_bytes // max(member_bytes, 1))
    spread = math.ceil(trials / max(parallel, 1))
    size = max(1, min(cap, fits, spread))
    binding = {cap: f"the cap of {cap}", fits: f"{fits} fit in half of {free_bytes / 2**30:.1f} GiB free",
               spread: f"{trials} trials over {parallel} at a time"}  # fmt: skip
    why = (f"{binding[size]} ({member_bytes / 2**20:.0f} MiB per member)" if size in binding
           else f"one member needs {member_bytes / 2**20:.0f} MiB, more than half of {free_bytes / 2**30:.1f} GiB free")  # fmt: skip
    return CohortChoice(size, why)


def _free_gpu_bytes() -> tuple[int, str]:
    """Free bytes and the name of this process's CUDA device (in a Ray task: the GPU Ray assigned it)."""
    import torch

    free, _ = torch.cuda.mem_get_info()
    return int(free), torch.cuda.get_device_name()


def gpu_free_bytes(gpu: float, local: bool) -> tuple[int, str]:
    """Free memory of a GPU a trial would get: this machine's when the driver has CUDA and Ray is ``local``,
    else a GPU worker's, asked by a Ray task with the trial's GPU share (waits at most :data:`PROBE_TIMEOUT_S`).
    Raises ``RuntimeError`` saying why it could not tell."""
    import ray
    import torch

    if local and torch.cuda.is_available() and not os.environ.get("RAY_ADDRESS"):
        return _free_gpu_bytes()
    probe = ray.remote(num_gpus=min(gpu, 1.0), num_cpus=0)(_free_gpu_bytes).remote()
    ready, _ = ray.wait([probe], timeout=PROBE_TIMEOUT_S)
    if not ready:
        ray.cancel(probe, force=True)
        raise RuntimeError(f"no GPU worker answered within {PROBE_TIMEOUT_S:.0f} s")
    return ray.get(probe)


def example_shape(spec: SweepSpec) -> tuple[int, ...]:
    from bvae_core.data import make_dataset

    config = spec.base_config
    return tuple(make_dataset(config.dataset.name, "cpu", **config.dataset.model_dump(exclude={"name"})).example_shape)


def resolve_cohort(spec: SweepSpec, parallel: int) -> tuple[SweepSpec, CohortChoice | None]:
    """The spec with ``search.cohort`` a number (``auto`` resolved; see the module docstring) and, for ``auto``, the
    choice and why. ``parallel``: how many trials the cluster runs at once."""
    if spec.search.cohort != "auto":
        return spec, None
    if spec.resources.gpu == 0:
        choice = CohortChoice(1, "trials on CPUs")
    else:
        from bvae_core.memory import training_memory_bytes

        member = training_memory_bytes(spec.base_config, example_shape(spec))
        try:
            free, device = gpu_free_bytes(spec.resources.gpu, local=spec.ray.address is None)
        except Exception as exc:  # noqa: BLE001 - unknown memory: train as without cohorts, and say why
            choice = CohortChoice(1, f"the GPU's free memory is unknown ({exc}); set search.cohort to fuse trials")
        else:
            share = min(spec.resources.gpu, 1.0)
            found = choose_cohort_size(planned_trials(spec), parallel, member, int(free * share))
            choice = CohortChoice(found.size, f"{found.why} on {device}")
    raw = {**spec.raw, "search": {**spec.raw["search"], "cohort": choice.size}}
    return parse_spec(raw), choice
