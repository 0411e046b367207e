"""``search.cohort: auto`` (the default): how many configurations a sweep fuses into one Ray trial.

- Trials on CPUs (``resources.gpu: 0``): 1 — each trial keeps a core busy already, and a cohort trains about as many
  images per core-second as its trials one per core (benchmarks/gpu_packing.py on 2 cores: 0.9–1.2×).
- Trials on GPUs: as many as fit, up to :data:`COHORT_CAP`, and no more than fills every GPU the sweep may use
  (``ceil(trials / parallel trials)``, so that no GPU idles while another trains a long cohort). "Fit" is half the
  free memory of the trial's share of its GPU over the training memory of the largest member the search space can
  produce (:func:`bvae_core.memory.training_memory_bytes`; batch size, latent size, architecture may be searched);
  the other half is left for evaluation batches, cuDNN workspaces, a captured graph's pool and the dataset.

Why a cap of 32: on an H200 (torch 2.11; Burgess model, 64 px, batch 64, bf16; the prototype measurement the
cohorts were built from, not yet repeated with this code: benchmarks/gpu_packing.py) a cohort of 32 trains
104,800 img/s and one of 128 130,200 — most of the gain at a quarter of the size — while a larger cohort asks Optuna
for more configurations before it can tell any result, so a model-based sampler learns from fewer rounds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from .space import planned_trials
from .spec import SweepSpec, parse_spec

COHORT_CAP = 32
MEMORY_SHARE = 0.5
PROBE_TIMEOUT_S = 120.0
SPACE_SAMPLES = 64  # configurations drawn from the space to find its largest member


@dataclass(frozen=True)
class CohortChoice:
    size: int
    why: str  # said in the sweep's first lines


def choose_cohort_size(trials: int, parallel: int, member_bytes: int, free_bytes: int,
                       cap: int = COHORT_CAP) -> CohortChoice:  # fmt: skip
    """The cohort size for ``trials`` trials run ``parallel`` at a time, each member needing up to ``member_bytes``
    of a device share with ``free_bytes`` free. ``why`` names what bound it."""
    fits = int(MEMORY_SHARE * free_bytes // max(member_bytes, 1))
    spread = math.ceil(trials / max(parallel, 1))
    size = max(1, min(cap, fits, spread))
    per_member = f"{member_bytes / 2**20:.0f} MiB per member, {free_bytes / 2**30:.1f} GiB free"
    if fits < 1:
        return CohortChoice(1, f"one member needs more than half the free memory ({per_member})")
    if size == fits and fits < min(cap, spread):
        why = f"{fits} fit in half the free memory"
    elif size == spread and spread < cap:
        why = f"{trials} trials over {parallel} at a time"
    else:
        why = f"the cap of {cap}"
    return CohortChoice(size, f"{why} ({per_member})")


def _free_gpu_bytes() -> tuple[int, str]:
    """Free bytes and the name of this process's CUDA device (in a Ray task: the GPU Ray assigned it)."""
    import torch

    free, _ = torch.cuda.mem_get_info()
    return int(free), torch.cuda.get_device_name()


def gpu_free_bytes(gpu: float, local: bool) -> tuple[int, str]:
    """Free memory of a GPU a trial would get, asked by a Ray task holding the trial's GPU share — on this machine
    in a local Ray, on a GPU worker in a cluster — in a worker that exits after it (its CUDA context goes with it).
    Waits at most :data:`PROBE_TIMEOUT_S` (an autoscaler may have to start the worker; a ``local`` Ray has none, so
    without a GPU it does not wait). Raises ``RuntimeError`` saying why it could not tell."""
    import ray

    has_gpu = bool(ray.cluster_resources().get("GPU"))
    if local and not has_gpu:
        raise RuntimeError("this machine's Ray has no GPU")
    probe = ray.remote(num_gpus=min(gpu, 1.0), num_cpus=0, max_calls=1)(_free_gpu_bytes).remote()
    ready, _ = ray.wait([probe], timeout=PROBE_TIMEOUT_S)
    if not ready:
        ray.cancel(probe, force=True)
        raise RuntimeError(f"no GPU worker answered within {PROBE_TIMEOUT_S:.0f} s"
                           + ("" if has_gpu else " (the cluster has no GPU now)"))
    return ray.get(probe)


def largest_member_bytes(spec: SweepSpec, samples: int = SPACE_SAMPLES) -> int:
    """The training memory of the largest member the search space produces, over ``samples`` random draws (one per
    cohort key: configurations fused together share every field that sets the memory)."""
    import optuna

    from bvae_core.cohort import cohort_key
    from bvae_core.data import make_dataset
    from bvae_core.memory import training_memory_bytes

    from .space import DefineByRun

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    define, configs = DefineByRun(spec.space), {}
    for _ in range(samples):
        trial = study.ask()
        define(trial)
        config = spec.trial_config(trial.params)
        configs.setdefault(cohort_key(config), config)
    shapes: dict[str, tuple[int, ...]] = {}
    largest = 0
    for config in configs.values():
        data = config.dataset.model_dump(mode="json")
        key = json.dumps(data, sort_keys=True)
        if key not in shapes:  # built once per dataset config, on the CPU, for its example shape
            shapes[key] = tuple(make_dataset(config.dataset.name, "cpu", **config.dataset.model_dump(exclude={"name"})).example_shape)
        largest = max(largest, training_memory_bytes(config, shapes[key]))
    return largest


def resolve_cohort(spec: SweepSpec, parallel: int) -> tuple[SweepSpec, CohortChoice | None]:
    """The spec with ``search.cohort`` a number (``auto`` resolved; see the module docstring) and, for ``auto``, the
    choice and why. ``parallel``: how many trials the cluster runs at once."""
    if spec.search.cohort != "auto":
        return spec, None
    if spec.resources.gpu == 0:
        choice = CohortChoice(1, "trials on CPUs")
    else:
        try:
            free, device = gpu_free_bytes(spec.resources.gpu, local=spec.ray.address is None)
        except Exception as exc:  # noqa: BLE001 - unknown memory: train as without cohorts, and say why
            choice = CohortChoice(1, f"the GPU's free memory is unknown: {exc}; set search.cohort to fuse trials")
        else:
            share = min(spec.resources.gpu, 1.0)
            found = choose_cohort_size(planned_trials(spec), parallel, largest_member_bytes(spec), int(free * share))
            where = device if share == 1 else f"{share:g} of {device}"
            choice = CohortChoice(found.size, f"{found.why} on {where}")
    raw = {**spec.raw, "search": {**spec.raw["search"], "cohort": choice.size}}
    return parse_spec(raw), choice
