"""``search.cohort: auto``: 1 on CPUs, as many as fit and fill the GPUs on GPUs — decided from one member's training
memory (counted on the meta device) and the GPU's free memory, and said in the sweep's first line."""

from __future__ import annotations

import pytest

from bvae_core.memory import training_memory_bytes
from sweeps import cohort_size
from sweeps.cohort_size import COHORT_CAP, choose_cohort_size, resolve_cohort
from sweeps.spec import parse_spec
from test_sweep import GAUSSIAN_BASE, make_spec

MiB, GiB = 2**20, 2**30
BURGESS = {"dataset": {"name": "dsprites"}, "model": {"arch": "burgess", "latent_dim": 10},
           "train": {"batch_size": 64}}  # fmt: skip


def test_the_size_is_the_tightest_of_cap_memory_and_spreading_the_trials():
    capped = choose_cohort_size(64, 1, 50 * MiB, 80 * GiB)
    assert capped.size == COHORT_CAP and capped.why.startswith(f"the cap of {COHORT_CAP} (50 MiB per member")
    squeezed = choose_cohort_size(64, 1, 1 * GiB, 10 * GiB)
    assert squeezed.size == 5 and squeezed.why.startswith("5 fit in half the free memory (1024 MiB per member, 10.0 GiB")
    spread = choose_cohort_size(16, 4, 50 * MiB, 80 * GiB)
    assert spread.size == 4 and spread.why.startswith("16 trials over 4 at a time")  # every GPU gets a cohort
    too_big = choose_cohort_size(4, 4, 8 * GiB, 10 * GiB)  # the spread would say 1 too: memory is the reason given
    assert too_big.size == 1 and too_big.why.startswith("one member needs more than half the free memory")
    assert choose_cohort_size(1, 8, 1, 80 * GiB).size == 1


def test_the_largest_member_the_space_can_produce_sets_the_memory(tmp_path):
    from sweeps.cohort_size import largest_member_bytes

    base = {**BURGESS, "dataset": {"name": "blobs", "resolution": 32}}
    space = {"objective.beta": {"log_uniform": [0.2, 5.0]}, "train.batch_size": {"choice": [32, 256]}}
    spec = parse_spec(make_spec(tmp_path, "space", {"space": space}, base))
    big = training_memory_bytes({**base, "train": {"batch_size": 256}}, (1, 32, 32))
    assert largest_member_bytes(spec) == big > training_memory_bytes(base, (1, 32, 32))


def test_auto_is_one_on_cpus_and_a_number_is_kept(tmp_path):
    spec = parse_spec(make_spec(tmp_path, "auto", {"space": {"objective.beta": {"log_uniform": [0.2, 5.0]}}}))
    assert spec.search.cohort == "auto"  # the default
    resolved, choice = resolve_cohort(spec, parallel=2)
    assert resolved.search.cohort == 1 and choice.why == "trials on CPUs"
    assert resolved.raw["search"]["cohort"] == 1  # what the trials are given
    fixed = parse_spec({**spec.raw, "search": {**spec.raw["search"], "cohort": 3}})
    assert resolve_cohort(fixed, parallel=2) == (fixed, None)


def test_auto_on_a_gpu_nobody_can_probe_trains_without_cohorts_and_says_why(local_ray, tmp_path, monkeypatch):
    data = make_spec(tmp_path, "gpu", {"space": {"objective.beta": {"log_uniform": [0.2, 5.0]}}}, GAUSSIAN_BASE)
    data["resources"] = {"gpu": 1}
    resolved, choice = resolve_cohort(parse_spec(data), parallel=1)  # this machine's Ray has no GPU: no waiting
    assert resolved.search.cohort == 1
    assert choice.why == ("the GPU's free memory is unknown: this machine's Ray has no GPU; set search.cohort to fuse "
                          "trials")  # fmt: skip
    # On a cluster a GPU worker may still come (an autoscaler): the probe waits, then says so.
    monkeypatch.setattr(cohort_size, "PROBE_TIMEOUT_S", 2.0)
    with pytest.raises(RuntimeError, match=r"no GPU worker answered within 2 s \(the cluster has no GPU now\)"):
        cohort_size.gpu_free_bytes(1.0, local=False)


def test_cohorts_that_cannot_share_run_side_by_side(tmp_path):
    """A cohort size at or above the trial count once capped the sweep at one Ray trial at a time — also an explicit
    search.concurrency — though configurations of another latent size form a cohort of their own, which then waited
    for the first while a core idled."""
    from sweeps.runner import default_concurrency

    search = {"trials": 3, "cohort": 1000, "concurrency": 2, "space": {"model.latent_dim": {"choice": [2, 4]}}}
    assert default_concurrency(parse_spec(make_spec(tmp_path, "split", search))) == 2
    one_trial = {**search, "trials": 1, "space": {"objective.beta": {"uniform": [1, 2]}}}
    assert default_concurrency(parse_spec(make_spec(tmp_path, "single", one_trial))) == 1  # never more than trials
