"""How much device memory one model's training step holds: the figure that decides how many members of a fused cohort
(:class:`bvae_core.cohort.Cohort`) fit on a device."""

from __future__ import annotations

from typing import Any

import torch

from .config import TrainConfig, parse_config
from .models import build_model
from .objectives import beta_vae_loss, gaussian_kl, make_likelihood

#: Adam keeps the parameters, their gradients and two moments: four copies.
ADAM_COPIES = 4


def training_memory_bytes(config: TrainConfig | dict[str, Any], example_shape: tuple[int, ...]) -> int:
    """Bytes one member's training step holds on its device: its parameters, gradients and Adam's two moments, plus
    the batch and every activation autograd saves for the backward pass at ``train.batch_size``.

    Counted on the meta device — no memory, no data, any machine — by running the forward pass and the loss under
    ``saved_tensors_hooks``. An upper bound for the step itself: fp32 (bf16 autocast saves about half), a tensor saved
    by two operations counted twice; the transient gradients of the backward pass and the allocator's slack are
    what a caller's headroom is for."""
    cfg = parse_config(config)
    with torch.device("meta"):
        model = build_model(cfg.model.arch, tuple(example_shape), cfg.model.latent_dim, cfg.model.hidden)
    params = list(model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    own = {id(p) for p in params}
    saved = 0

    def count(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if id(tensor) not in own and id(getattr(tensor, "_base", None)) not in own:  # a weight is not new memory
            saved += tensor.numel() * tensor.element_size()
        return tensor

    batch = cfg.train.batch_size
    x = torch.empty(batch, *example_shape, device="meta")
    eps = torch.empty(batch, cfg.model.latent_dim, device="meta")
    likelihood = make_likelihood(cfg.model.likelihood.kind, getattr(cfg.model.likelihood, "sigma", 1.0))
    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        out, mu, logvar = model(x, eps)
        distortion, _ = likelihood.nll(out, x)
        beta_vae_loss(distortion, gaussian_kl(mu, logvar), 1.0)
    return ADAM_COPIES * param_bytes + saved + x.numel() * x.element_size() + eps.numel() * eps.element_size()
