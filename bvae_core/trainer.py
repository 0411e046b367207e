"""The β-VAE trainer: config → data, model, objective; ``fit(steps)``, ``evaluate()``, exact checkpoints.

Read top to bottom: construction, one training step, the loop, evaluation, state. The hot loop never syncs the host
with the device: training metrics and the first non-finite step are accumulated on the device and read every
``train.log_every`` steps. On CUDA (``train.cuda_graphs``) the whole step — batch rendering, forward, backward, Adam,
the metric sums — is captured once as a CUDA graph and replayed, with β(t), C(t) and the step counter fed as device
tensors so that the graph never changes; where capture is not possible one line is logged and the steps stay eager.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .atomic import torch_bytes, write_atomically
from .config import TrainConfig, parse_config
from .data import Dataset, check_likelihood_support, make_dataset
from .evaluation import check_held_out, evaluate
from .models import build_model
from .objectives import (
    Likelihood,
    beta_vae_loss,
    capacity_loss,
    capacity_multiplier_step,
    gaussian_kl,
    make_likelihood,
)
from .schedules import ScheduleValue, schedule_value
from .threads import ThreadChoice, apply_threads, keep_threads

TERMS = ("loss", "rate", "distortion")
GRAPH_WARMUP_STEPS = 3  # eager steps (real ones) before capture: cuDNN/cuBLAS choose kernels, the allocator settles

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the step and the term."""


def keep_freed_memory() -> None:
    """On Linux/glibc, keep freed memory in the heap instead of returning it to the OS after every step.

    glibc mmaps each large tensor and unmaps it on free, so on the CPU every step page-faults its activations back in
    (~15,000 minor faults per step for the Burgess model at 64 px, a third of the step); raising the mmap and trim
    thresholds removes them (measured +40–50 % img/s at 64 px, same peak memory; benchmarks/README.md). Process-wide;
    the environment variables MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, when set, win."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 1 << 30)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; a device asked for by name must be present (ValueError naming it)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device: {name} requested but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"train.device: {name} requested but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")  # fmt: skip
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"train.device: {name} requested but MPS (Apple silicon) is not available on this machine")
    return device


def setup_run(cfg: TrainConfig, device: torch.device, dataset: Dataset | None = None
              ) -> tuple[ThreadChoice | None, Dataset, Likelihood]:  # fmt: skip
    """What every run — a :class:`Trainer` or a cohort — sets up alike: on the CPU the heap policy and the thread
    count, then the dataset on the device (``dataset`` if given) and the likelihood."""
    threads = None
    if device.type == "cpu":
        keep_freed_memory()
        threads = apply_threads(cfg.train.threads)
    options = cfg.dataset.model_dump(exclude={"name"})
    data = dataset.to(device) if dataset is not None else make_dataset(cfg.dataset.name, device, **options)
    check_likelihood_support(data, cfg.model.likelihood.kind)
    return threads, data, make_likelihood(cfg.model.likelihood.kind, getattr(cfg.model.likelihood, "sigma", 1.0))


def make_optimizer(params: Any, lr: float, device: torch.device, capturable: bool = False) -> torch.optim.Adam:
    """Adam (Kingma & Ba 2015) as every run uses it: fused on CPU and CUDA (one kernel, no .item() per parameter);
    ``capturable`` for a step captured in a CUDA graph (same arithmetic, its step counters stay on the device)."""
    return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"), capturable=capturable)


def autocast_context(device: torch.device, precision: str) -> Callable[[], Any]:
    """The training precision: ``auto`` is bf16 autocast on CUDA, fp32 elsewhere. The weight-cast cache is off: each
    weight is cast once per step anyway, and a CUDA graph capture must not keep cached casts."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext
    return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)


def training_losses(distortion: torch.Tensor, kl_per_dim: torch.Tensor, sched: ScheduleValue,
                    multiplier: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The objective at one step as ``(value, descended)``: the value reported as ``train/loss`` and the loss whose
    gradient Adam follows. β-VAE (with free bits): the same loss. Capacity objective: Burgess et al.'s eq. (2) as
    the value, distortion + λ·KL descended, λ the constraint's multiplier (objectives.capacity_multiplier_step).
    β, C and λ may be floats or 0-d tensors (a cohort passes each member's as tensors)."""
    if sched.capacity is not None:
        value = capacity_loss(distortion, kl_per_dim, sched.capacity, sched.beta)
        return value, beta_vae_loss(distortion, kl_per_dim, multiplier)
    loss = beta_vae_loss(distortion, kl_per_dim, sched.beta, sched.free_bits)
    return loss, loss


def on_side_stream(side: torch.cuda.Stream, device: torch.device, step: Callable[[], None]) -> None:
    """Run ``step`` on the side stream ``side``, joined to the current stream before and after: the eager warm-up
    steps before a CUDA graph capture run this way (PyTorch's capture recipe). Keep one ``side`` per trainer: every
    new stream gets its own cuBLAS workspace (32 MiB on Hopper), kept for the life of the process."""
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream(device).wait_stream(side)


def non_finite_error(step: int, terms: dict[str, float]) -> NonFiniteLossError:
    """The error for the first step whose ``loss``/``rate``/``distortion`` were not all finite, naming the culprit.
    ``step`` is the step's 0-based index; the message counts as progress lines and MLflow steps do (the first update
    is step 1)."""
    culprit = next((t for t in ("distortion", "rate") if not math.isfinite(terms[t])), "loss")
    return NonFiniteLossError(
        f"non-finite {culprit} at step {step + 1} (loss={terms['loss']}, rate={terms['rate']}, "
        f"distortion={terms['distortion']}); lower train.lr or check the data and the likelihood"
    )


class Trainer:
    """Trains one β-VAE from a :class:`~bvae_core.config.TrainConfig` (or an equivalent dict)."""

    def __init__(self, config: TrainConfig | dict[str, Any], dataset: Dataset | None = None):
        self.config = cfg = parse_config(config)
        self.device = resolve_device(cfg.train.device)
        # CPU only: the intra-op thread count and why (bvae_core.threads)
        self.threads, self.dataset, self.likelihood = setup_run(cfg, self.device, dataset)
        check_held_out(self.dataset, cfg.train.n_eval)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = build_model(cfg.model.arch, self.dataset.example_shape, cfg.model.latent_dim, cfg.model.hidden)
        self.channels_last = cfg.train.channels_last and len(self.dataset.example_shape) == 3
        self.model = model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.model.likelihood_kind = cfg.model.likelihood.kind  # decode_mean / sample give images
        self.graphs = self.device.type == "cuda" and cfg.train.cuda_graphs
        self.optimizer = make_optimizer(self.model.parameters(), cfg.train.lr, self.device, capturable=self.graphs)
        self.optimizer._warned_capturable_if_run_uncaptured = True  # the warm-up steps before capture run uncaptured
        # The capacity objective's multiplier λ (objectives.capacity_multiplier_step), from 1: the ELBO's weight.
        self.capacity_multiplier = (torch.ones((), device=self.device)
                                    if schedule_value(cfg.objective.schedule, cfg.objective.beta, 0).capacity is not None
                                    else None)  # fmt: skip
        self.autocast = autocast_context(self.device, cfg.train.precision)
        # Two generators on the training device: one for batches, one for the reparameterisation noise.
        self.data_generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.step = 0
        self._sums = torch.zeros(len(TERMS), device=self.device)  # sums of the terms since the last log
        self._sum_count = 0
        self._first_bad_step = torch.tensor(-1, device=self.device)  # first step with a non-finite term, or -1
        self._bad_terms = torch.zeros(len(TERMS), device=self.device)  # the terms at that step
        self._step_t = torch.zeros((), dtype=torch.long, device=self.device)  # the step, for the device-side records
        # CUDA graph: β (or γ), C(t) and the multiplier's step size as device tensors, written before each replay.
        self._sched = torch.zeros(3, device=self.device)
        self._graph: Any = None
        self._side_stream: torch.cuda.Stream | None = None  # the warm-up steps' stream, one for the trainer's life
        self._graph_failed = False
        self._eager_steps = 0
        self._capturing = False

    # ------------------------------------------------------------------ one step
    def schedule(self, step: int | None = None) -> ScheduleValue:
        """β(t), C(t) and free bits at ``step`` (default: the current step)."""
        return schedule_value(self.config.objective.schedule, self.config.objective.beta, self.step if step is None else step)

    def _device_schedule(self) -> ScheduleValue:
        """This step's schedule with β(t), C(t) and the multiplier's step size in device tensors (the captured graph
        reads them; their values are written before every replay)."""
        sched = self.schedule()
        host = torch.tensor([sched.beta, sched.capacity or 0.0, sched.multiplier_lr], dtype=torch.float32)
        self._sched.copy_(host, non_blocking=True)  # pageable source: staged before the call returns
        return ScheduleValue(beta=self._sched[0], capacity=self._sched[1] if sched.capacity is not None else None,
                             free_bits=sched.free_bits, multiplier_lr=self._sched[2])  # fmt: skip

    def _step_body(self, sched: ScheduleValue) -> None:
        """Everything of one step on the device: no host sync, every state updated in place (capturable)."""
        cfg = self.config
        x = self.dataset.train_batch(cfg.train.batch_size, self.data_generator)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        eps = torch.randn(x.shape[0], self.model.latent_dim, generator=self.noise_generator, device=self.device)
        with self.autocast():
            out, mu, logvar = self.model(x, eps)
        distortion, _ = self.likelihood.nll(out, x)
        kl = gaussian_kl(mu, logvar)
        loss, descended = training_losses(distortion, kl, sched, self.capacity_multiplier)
        if not self._capturing:  # a captured backward writes the gradients it allocated at capture
            self.optimizer.zero_grad(set_to_none=True)
        descended.backward()
        self.optimizer.step()
        with torch.no_grad():
            terms = torch.stack([loss.detach(), kl.detach().sum(1).mean(), distortion.detach().mean()])
            if sched.capacity is not None:
                self.capacity_multiplier.copy_(capacity_multiplier_step(
                    self.capacity_multiplier, terms[1], sched.capacity, sched.beta, sched.multiplier_lr))  # fmt: skip
            finite = torch.isfinite(terms).all()
            first = (self._first_bad_step < 0) & ~finite
            self._first_bad_step.copy_(torch.where(first, self._step_t, self._first_bad_step))
            self._bad_terms.copy_(torch.where(first, terms, self._bad_terms))
            self._sums += terms
            self._step_t += 1

    def _train_step(self) -> None:
        if self.graphs and not self._graph_failed:
            with torch.cuda.device(self.device):  # capture uses the current device's streams: make it this one
                self._graphed_step()
        else:  # on CUDA the same device-side schedule as a captured step: eager and graphed runs compute alike
            self._step_body(self._device_schedule() if self.device.type == "cuda" else self.schedule())
        self._sum_count += 1
        self.step += 1

    def _graphed_step(self) -> None:
        sched = self._device_schedule()
        if self._graph is None and self._eager_steps >= GRAPH_WARMUP_STEPS:
            self._capture(sched)
        if self._graph is not None:
            self._graph.replay()
            return
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        on_side_stream(self._side_stream, self.device, lambda: self._step_body(sched))  # a warm-up step, as capture wants
        self._eager_steps += 1

    def _capture(self, sched: ScheduleValue) -> None:
        """Record one step as a CUDA graph; on failure log one line and stay eager."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.device(self.device):  # both generators advance with every replay
                graph.register_generator_state(self.data_generator)
                graph.register_generator_state(self.noise_generator)
            self.optimizer.zero_grad(set_to_none=True)
            self._capturing = True
            with torch.cuda.graph(graph):
                self._step_body(sched)
            self._graph = graph
        except Exception as e:  # noqa: BLE001 — any capture failure means: train eagerly
            self._graph_failed, self._graph = True, None
            log.warning("trainer: CUDA graph capture not possible (%s: %s); training with eager steps",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")  # fmt: skip
        finally:
            self._capturing = False

    # ------------------------------------------------------------------ the loop
    def fit(self, steps: int | None = None, on_log: Callable[[dict[str, float]], None] | None = None) -> None:
        """Train ``steps`` more steps (default: up to ``train.steps``). ``on_log`` receives the training metrics every
        ``train.log_every`` steps. Raises :class:`NonFiniteLossError` naming the first step whose loss was not
        finite."""
        steps = self.config.train.steps - self.step if steps is None else steps
        self.model.train()
        log_every = self.config.train.log_every
        started, start_step = time.perf_counter(), self.step
        for _ in range(steps):
            self._train_step()
            if self.step % log_every == 0 or self.step == start_step + steps:
                metrics = self.train_metrics()
                if on_log is not None:
                    elapsed = time.perf_counter() - started
                    metrics["images_per_s"] = (self.step - start_step) * self.config.train.batch_size / max(elapsed, 1e-9)
                    on_log(metrics)

    def train_metrics(self) -> dict[str, float]:
        """Means of the training terms since the last call (one host sync); raises on a non-finite loss."""
        self.check_finite()
        values = (self._sums / max(self._sum_count, 1)).tolist()
        self._sums.zero_()
        self._sum_count = 0
        metrics = {"step": float(self.step), **{f"train/{name}": v for name, v in zip(TERMS, values)}}
        sched = self.schedule()
        if sched.capacity is not None:
            metrics["capacity"] = sched.capacity
            metrics["capacity_multiplier"] = float(self.capacity_multiplier)
        else:
            metrics["beta"] = sched.beta
        return metrics

    def check_finite(self) -> None:
        bad_step = int(self._first_bad_step)
        if bad_step >= 0:
            raise non_finite_error(bad_step, dict(zip(TERMS, self._bad_terms.tolist())))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Held-out rate, distortion, nelbo, (sse), kl/<i>, active_units, plus β or C(t) at the current step."""
        t = self.config.train
        metrics = evaluate(self.model, self.likelihood, self.dataset, batch_size=t.eval_batch_size, n_eval=t.n_eval,
                           seed=self.config.seed, autocast=self.autocast)  # fmt: skip
        sched = self.schedule()
        if sched.capacity is not None:
            metrics["capacity"] = sched.capacity
        else:
            metrics["beta"] = sched.beta
        metrics["step"] = float(self.step)
        return metrics

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically: model, optimizer, both RNGs, step (hence schedule)."""
        return {
            "config": self.config.model_dump(mode="json"),
            "example_shape": list(self.dataset.example_shape),  # rebuild the model without the data: load_model()
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **({"capacity_multiplier": self.capacity_multiplier.clone()} if self.capacity_multiplier is not None else {}),
            "data_generator": self.data_generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
            "first_bad_step": self._first_bad_step.clone(),
            "bad_terms": self._bad_terms.clone(),
            # the CPU thread count it trained with: a float sum's order, so the last digits, depend on it
            **({"threads": self.threads.threads} if self.threads is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # a graphed run's checkpoint continues eagerly, and back
            group["capturable"] = self.graphs
        if self.capacity_multiplier is not None and "capacity_multiplier" in state:
            self.capacity_multiplier.copy_(state["capacity_multiplier"])
        self.data_generator.set_state(state["data_generator"].cpu())
        self.noise_generator.set_state(state["noise_generator"].cpu())
        self._first_bad_step.copy_(state["first_bad_step"])
        self._bad_terms.copy_(state["bad_terms"])
        self._step_t.fill_(self.step)
        self._sums.zero_()
        self._sum_count = 0
        self._graph, self._eager_steps = None, 0  # re-captured after a few eager steps from the new state

    def save(self, path: str | Path) -> None:
        """Write a checkpoint (config included) that :meth:`load` restores."""
        state = self.state_dict()
        write_atomically(path, torch_bytes(state))  # never a half-written checkpoint

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> "Trainer":
        """Rebuild a trainer from a checkpoint written by :meth:`save` (``overrides`` e.g. ``device="cpu"``).

        A sweep trial's final checkpoint holds no optimizer state (nothing trains from it again): it raises
        ``ValueError`` pointing to :func:`load_model`, which loads its model."""
        state = _read_checkpoint(path)
        if "optimizer" not in state:
            raise ValueError(f"{path}: a finished trial's checkpoint, saved without the optimizer state, so training "
                             f"cannot continue from it; load its model with bvae_core.trainer.load_model({str(path)!r})")
        config = state["config"]
        if overrides:
            config = {**config, "train": {**config["train"], **overrides}}
        trainer = cls(config)
        trainer.load_state_dict(state)
        saved = state.get("threads")
        if trainer.threads is not None and trainer.threads.reason == "auto" and saved and saved != trainer.threads.threads:
            trainer.threads = keep_threads(saved, trainer.threads)  # continue as it trained: bit-identically
        return trainer


def _read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """A checkpoint's state, or ``ValueError`` naming the file when it is not one of ours."""
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or not {"config", "model", "step"} <= state.keys():
        raise ValueError(f"{path}: not a bvae checkpoint (expected the state written by Trainer.save, with config, "
                         f"model and step)")
    return state


def load_model(path: str | Path, map_location: str = "cpu") -> tuple["torch.nn.Module", TrainConfig]:
    """The trained :class:`~bvae_core.models.VAE` of a checkpoint and its config, without building the dataset."""
    state = _read_checkpoint(path, map_location)
    config = parse_config(state["config"])
    model = build_model(config.model.arch, tuple(state["example_shape"]), config.model.latent_dim, config.model.hidden)
    model.load_state_dict(state["model"])
    model.likelihood_kind = config.model.likelihood.kind  # decode_mean(z) / sample(n): images, not logits
    return model.eval(), config
