"""One member's training memory (:func:`bvae_core.memory.training_memory_bytes`, counted on the meta device): what
``search.cohort: auto`` divides a GPU's free memory by. Needs torch and bvae_core alone, so the CUDA check runs on a
GPU machine without Ray or MLflow (benchmarks/gpu_checks.sh)."""

from __future__ import annotations

import pytest
import torch

from bvae_core import Trainer
from bvae_core.memory import ADAM_COPIES, training_memory_bytes

MiB = 2**20
BURGESS = {"dataset": {"name": "dsprites"}, "model": {"arch": "burgess", "latent_dim": 10},
           "train": {"batch_size": 64}}  # fmt: skip


def test_one_members_memory_counts_adam_copies_and_the_saved_activations():
    small, large = ({**BURGESS, "train": {"batch_size": b}} for b in (32, 64))
    params = sum(p.numel() for p in Trainer({**BURGESS, "dataset": {"name": "blobs", "resolution": 64}}).model.parameters()) * 4
    at_32, at_64 = training_memory_bytes(small, (1, 64, 64)), training_memory_bytes(large, (1, 64, 64))
    per_batch = at_64 - at_32  # activations grow with the batch; parameters and Adam's moments do not
    assert at_32 - per_batch == pytest.approx(ADAM_COPIES * params, rel=1e-6)
    assert 10 * MiB < per_batch < 200 * MiB  # the Burgess encoder/decoder at 64 px: tens of MiB per 32 images
    wider = training_memory_bytes({**BURGESS, "model": {"arch": "burgess", "latent_dim": 20}}, (1, 64, 64))
    assert wider > at_64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measures CUDA memory")
def test_the_estimate_bounds_a_cuda_training_steps_memory():
    # Eager steps on the current stream: a graph's warm-up steps run on a side stream, whose first step also
    # allocates that stream's cuBLAS workspace (32 MiB on Hopper), a one-off, not a step's memory.
    config = {**BURGESS, "train": {**BURGESS["train"], "device": "cuda", "precision": "fp32", "cuda_graphs": False}}
    trainer = Trainer(config)
    trainer.fit(2)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()  # the dataset, the model, Adam's moments
    torch.cuda.reset_peak_memory_stats()
    trainer.fit(1)
    step_peak = torch.cuda.max_memory_allocated() - before
    estimate = training_memory_bytes(config, trainer.dataset.example_shape)
    assert step_peak <= estimate <= 4 * step_peak + ADAM_COPIES * sum(p.numel() * 4 for p in trainer.model.parameters())
