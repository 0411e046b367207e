"""Fused cohorts: K configurations of one architecture trained as one model.

A sweep trains many copies of one small model that differ only in β, C(t), γ, learning rate and seed. One such model
leaves a GPU idle (a step is a few hundred tiny kernels, bound by the host that launches them); trained side by side
as *one* model with stacked parameters, K of them make kernels K times larger for the same number of launches —
horizontal fusion (HFTA: Wang et al., MLSys 2021). Beyond HFTA, a cohort

* keeps every member an exact copy of the run it stands for: member k is built, seeded, fed and optimised as
  ``Trainer(configs[k])`` would be (same initial weights, the same batches and reparameterisation noise from its own
  two generators, the same fused Adam kernel on its own slices), and its checkpoint is a plain ``Trainer`` checkpoint;
* masks a member whose loss goes non-finite on the device, in the step it happens (its update is skipped, so its
  weights stay finite), and marks it ``FAIL`` at the next host sync while the others train on; ``stop(k)`` (a
  scheduler's decision) freezes a member the same way;
* on CUDA, captures the whole step — rendering, forward, backward, Adam, metric sums — once as a CUDA graph and
  replays it (β(t), C(t) and the step counter are device tensors, so the graph never changes), falling back to eager
  steps with one logged line where capture is not possible.

Two backends compute the same step: ``vmap`` (``torch.func.functional_call`` vmapped over the stacked parameters: the
convolutions become one grouped convolution, the linear layers one batched matmul) and ``loop`` (the members one after
another on their own views of the same storage: the very kernels a ``Trainer`` runs, so bit-identical to K trainers;
the default for K = 1). The vmap kernels sum in another order than the single-model ones, so on CPU fp32 a vmap
cohort matches its trainers to float rounding: ≤ 4e-5 relative per weight (≤ 1e-6 in norm) after 4 steps of β-VAE
training (tests/test_cohort.py, which also bounds the capacity objective's).

A sweep groups its trials by :func:`cohort_key` (or :func:`group_by_cohort`), builds ``Cohort(configs)``, calls
``fit(n)`` between reports, reads ``evaluate()`` / ``train_metrics()`` (one dict per member, the Trainer's keys),
``status`` (``active`` / ``stopped`` / ``FAIL``, with ``errors[k]``), calls ``stop(k)`` when its scheduler stops a
trial, and saves ``save_member(k, path)`` as that trial's checkpoint (or ``save(path)`` for the whole cohort).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from .atomic import torch_bytes, write_atomically
from .config import TrainConfig, flatten_dotted, parse_config
from .data import Dataset
from .evaluation import check_held_out, evaluate
from .models import VAE, build_model
from .objectives import capacity_multiplier_step, gaussian_kl
from .schedules import ScheduleValue, schedule_value
from .trainer import (
    GRAPH_WARMUP_STEPS,
    TERMS,
    autocast_context,
    make_optimizer,
    non_finite_error,
    on_side_stream,
    resolve_device,
    setup_run,
    training_losses,
)

log = logging.getLogger(__name__)

#: The config fields in which members of one cohort may differ. Every other field (architecture, latent size,
#: likelihood, dataset, batch size, steps, precision, device, schedule kind, free bits …) must be equal.
MEMBER_FIELDS = frozenset({
    "name", "seed", "train.lr", "objective.beta", "objective.schedule.c_max", "objective.schedule.ramp_steps",
    "objective.schedule.gamma", "objective.schedule.warmup_steps", "objective.schedule.beta_start",
})  # fmt: skip

ACTIVE, STOPPED, FAILED = "active", "stopped", "FAIL"
BACKENDS = ("auto", "vmap", "loop")


# ---------------------------------------------------------------------------------------------------- grouping
def _shared_fields(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in flatten_dotted(config.model_dump(mode="json")).items() if k not in MEMBER_FIELDS}


def cohort_key(config: TrainConfig | dict[str, Any]) -> str:
    """A string equal for exactly the configurations that can train in one cohort (group a sweep's trials by it)."""
    return json.dumps(_shared_fields(parse_config(config)), sort_keys=True)


def check_shareable(configs: Sequence[TrainConfig]) -> None:
    """Raise ``ValueError`` naming the first field in which a configuration differs from the first one."""
    first = _shared_fields(configs[0])
    for k, config in enumerate(configs[1:], start=1):
        other = _shared_fields(config)
        differing = [p for p in first.keys() | other.keys() if first.get(p) != other.get(p)]
        if differing:
            # a differing kind/name explains its fields: name it first
            path = min(differing, key=lambda p: (not p.endswith((".kind", ".name", ".arch")), p))
            raise ValueError(
                f"cohort: configuration {k} differs from configuration 0 in {path} ({other.get(path)!r} vs "
                f"{first.get(path)!r}); only {', '.join(sorted(MEMBER_FIELDS))} may differ within a cohort — "
                f"group configurations by cohort_key()"
            )


def group_by_cohort(configs: Sequence[TrainConfig | dict[str, Any]], max_size: int | None = None) -> list[list[int]]:
    """Indices of ``configs`` grouped into cohorts (same :func:`cohort_key`, at most ``max_size`` each), in order."""
    groups: dict[str, list[list[int]]] = {}
    for i, config in enumerate(configs):
        chunks = groups.setdefault(cohort_key(config), [[]])
        if max_size is not None and len(chunks[-1]) >= max_size:
            chunks.append([])
        chunks[-1].append(i)
    return [chunk for chunks in groups.values() for chunk in chunks]


# ---------------------------------------------------------------------------------------------------- helpers
def _stack(tensors: list[Tensor]) -> Tensor:
    """``[K, *shape]`` whose slice k is laid out as ``tensors[k]`` is (e.g. channels_last), so a member's slice is
    interchangeable with the plain model's tensor — same strides, hence the same kernels."""
    t = tensors[0]
    dense = t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
    if not dense:
        return torch.stack([s.contiguous() for s in tensors])
    out = torch.empty_strided((len(tensors), *t.shape), (t.numel(), *t.stride()), dtype=t.dtype, device=t.device)
    with torch.no_grad():
        for k, s in enumerate(tensors):
            out[k].copy_(s)
    return out


def _like(grad: Tensor, param: Tensor) -> Tensor:
    """``grad`` laid out as ``param``: the fused Adam kernel walks parameter, gradient and moments as flat memory, so
    their strides must agree (``.backward()`` guarantees it; ``autograd.grad`` under vmap may return a transpose)."""
    return grad if grad.stride() == param.stride() else torch.empty_like(param).copy_(grad)


class _AdamSlot:
    """One Adam's moments for all members, stacked like the parameters it updates (``names``), and each member's
    views of them; ``steps[k]`` is member k's Adam t. The fused Adam kernel runs on member k's views alone, so its
    arithmetic is the single model's."""

    def __init__(self, params: dict[str, Tensor], names: list[str], size: int, device: torch.device):
        self.names = names
        self.exp_avg = {n: torch.zeros_like(params[n], memory_format=torch.preserve_format) for n in names}
        self.exp_avg_sq = {n: torch.zeros_like(params[n], memory_format=torch.preserve_format) for n in names}
        self.steps = torch.zeros(size, dtype=torch.float32, device=device)
        self.p_views = [[params[n].detach()[k] for n in names] for k in range(size)]
        self.m_views = [[self.exp_avg[n][k] for n in names] for k in range(size)]
        self.v_views = [[self.exp_avg_sq[n][k] for n in names] for k in range(size)]

    def step(self, k: int, grads: list[Tensor], lr: float, skip: Tensor, hyper: dict[str, Any]) -> None:
        grads = [_like(g, p) for g, p in zip(grads, self.p_views[k])]
        torch._fused_adam_(self.p_views[k], grads, self.m_views[k], self.v_views[k], [], [self.steps[k]] * len(grads),
                           lr=lr, found_inf=skip, **hyper)  # fmt: skip

    def member_state(self, k: int, params: list[Tensor]) -> dict[Tensor, dict[str, Tensor]]:
        """``torch.optim.Adam.state`` of member k, keyed by ``params`` (its model's, in ``names`` order)."""
        return {p: {"step": self.steps[k].clone(), "exp_avg": self.exp_avg[n][k].clone(),
                    "exp_avg_sq": self.exp_avg_sq[n][k].clone()} for n, p in zip(self.names, params)}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"exp_avg": {n: t.clone() for n, t in self.exp_avg.items()},
                "exp_avg_sq": {n: t.clone() for n, t in self.exp_avg_sq.items()}, "steps": self.steps.clone()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n in self.names:
            self.exp_avg[n].copy_(state["exp_avg"][n])
            self.exp_avg_sq[n].copy_(state["exp_avg_sq"][n])
        self.steps.copy_(state["steps"])


# ---------------------------------------------------------------------------------------------------- the cohort
class Cohort:
    """K β-VAEs that share an architecture, trained as one fused model.

    ``configs``: train configs (or dicts) that differ only in :data:`MEMBER_FIELDS`; ``backend``: ``"vmap"``
    (fused), ``"loop"`` (members one after another, bit-identical to K ``Trainer`` runs) or ``"auto"`` (loop for
    K = 1, else vmap); ``graphs``: capture the step as a CUDA graph (default: on CUDA, unless
    ``train.cuda_graphs`` is off). Member k's results are those
    of ``Trainer(configs[k])``: :meth:`member_state_dict` is its checkpoint, :meth:`evaluate` its metrics."""

    def __init__(self, configs: Sequence[TrainConfig | dict[str, Any]], dataset: Dataset | None = None, *,
                 backend: str = "auto", graphs: bool | None = None):  # fmt: skip
        if not configs:
            raise ValueError("cohort: expected at least one configuration")
        if backend not in BACKENDS:
            raise ValueError(f"cohort: backend expected one of {', '.join(BACKENDS)}, got {backend!r}")
        self.configs = [parse_config(c) for c in configs]
        check_shareable(self.configs)
        self.size = K = len(self.configs)
        cfg = self.configs[0]
        self.device = resolve_device(cfg.train.device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"train.device: a cohort trains on cpu or cuda, got {self.device}")
        self.threads, self.dataset, self.likelihood = setup_run(cfg, self.device, dataset)  # as a Trainer does
        check_held_out(self.dataset, cfg.train.n_eval)
        self.channels_last = cfg.train.channels_last and len(self.dataset.example_shape) == 3
        self.autocast = autocast_context(self.device, cfg.train.precision)
        self.backend = ("loop" if K == 1 else "vmap") if backend == "auto" else backend
        self.graphs = (self.device.type == "cuda" and cfg.train.cuda_graphs) if graphs is None else bool(graphs)
        if self.graphs and self.device.type != "cuda":
            raise ValueError("cohort: graphs=True needs a CUDA device")

        # Each member's model exactly as Trainer builds it (same seed, same init, same memory format) ...
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        models: list[VAE] = []
        for c in self.configs:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(c.seed)
                model = build_model(c.model.arch, self.dataset.example_shape, c.model.latent_dim, c.model.hidden)
            models.append(model.to(self.device, memory_format=fmt))
        self._base = copy.deepcopy(models[0]).to("meta")  # the architecture, for functional_call
        self.latent_dim = models[0].latent_dim
        # ... then stacked: parameter i of all members is one [K, ...] tensor, and each member's module keeps
        # views of its slices (so a member is still a plain nn.Module: evaluate() and state_dict() work on it).
        self.param_names = [n for n, _ in models[0].named_parameters()]
        self.buffer_names = [n for n, _ in models[0].named_buffers()]
        self.params = {n: _stack([dict(m.named_parameters())[n].detach() for m in models]) for n in self.param_names}
        self.buffers = {n: _stack([dict(m.named_buffers())[n] for m in models]) for n in self.buffer_names}
        for k, model in enumerate(models):
            for n, p in model.named_parameters():
                p.data = self.params[n][k]
            for n, b in model.named_buffers():
                b.data = self.buffers[n][k]
        self.models = models
        if self.backend == "vmap":
            for p in self.params.values():
                p.requires_grad_(True)

        # Adam: the Trainer's optimizer (hyper-parameters read from it), its fused kernel run on each member's slices.
        template = make_optimizer([torch.zeros(1, device=self.device, requires_grad=True)], cfg.train.lr, self.device)
        group = template.param_groups[0]
        if not group.get("fused") or group.get("amsgrad") or group.get("decoupled_weight_decay"):
            raise NotImplementedError("cohort: expects the Trainer's optimizer to be fused Adam without amsgrad")
        self._adam = {"beta1": group["betas"][0], "beta2": group["betas"][1], "eps": group["eps"],
                      "weight_decay": group["weight_decay"], "maximize": group["maximize"], "amsgrad": False}  # fmt: skip
        self.lrs = [c.train.lr for c in self.configs]
        self.adam = _AdamSlot(self.params, self.param_names, K, self.device)

        # Two generators per member, seeded as Trainer seeds its own.
        self.data_generators = [torch.Generator(device=self.device).manual_seed(c.seed) for c in self.configs]
        self.noise_generators = [torch.Generator(device=self.device).manual_seed(c.seed + 1) for c in self.configs]

        # Schedules: static shape of the objective (kind, free bits) shared; β(t), C(t) per member.
        probe = [schedule_value(c.objective.schedule, c.objective.beta, 0) for c in self.configs]
        self._capacity_objective = probe[0].capacity is not None
        self._free_bits = probe[0].free_bits
        # As Trainer: the capacity objective's multiplier λ per member (objectives.capacity_multiplier_step).
        self._multiplier = torch.ones(K, device=self.device) if self._capacity_objective else None
        self._sched = torch.zeros(3, K, device=self.device)  # rows: β (or γ), C(t), the multiplier's step size

        # Device-side state: no host sync in the hot loop.
        self.step = 0
        self._step_t = torch.zeros((), dtype=torch.long, device=self.device)
        self._active = torch.ones(K, dtype=torch.bool, device=self.device)
        self._member_steps = torch.zeros(K, dtype=torch.long, device=self.device)
        self._sums = torch.zeros(K, len(TERMS), device=self.device)
        self._sum_counts = torch.zeros(K, device=self.device)
        self._first_bad_step = torch.full((K,), -1, dtype=torch.long, device=self.device)
        self._bad_terms = torch.zeros(K, len(TERMS), device=self.device)
        # Host-side view of the members.
        self.status = [ACTIVE] * K
        self.errors: list[str | None] = [None] * K
        self._frozen: dict[int, dict[str, Any]] = {}  # member checkpoints taken when a member stopped
        self._graph: Any = None
        self._side_stream: torch.cuda.Stream | None = None  # the warm-up steps' stream, one for the cohort's life
        self._graph_failed = False
        self._eager_steps = 0

    # ------------------------------------------------------------------ schedules
    def schedule(self, k: int, step: int | None = None) -> ScheduleValue:
        """Member k's β(t), C(t) and free bits at ``step`` (default: the current step)."""
        c = self.configs[k]
        return schedule_value(c.objective.schedule, c.objective.beta, self.step if step is None else step)

    def _write_schedule(self) -> list[ScheduleValue]:
        values = [self.schedule(k) for k in range(self.size)]
        host = torch.tensor([[v.beta for v in values], [v.capacity or 0.0 for v in values],
                             [v.multiplier_lr for v in values]], dtype=torch.float32)  # fmt: skip
        self._sched.copy_(host, non_blocking=True)  # pageable source: staged before the call returns
        return values

    def _member_schedule(self, k: int, values: list[ScheduleValue] | None) -> ScheduleValue:
        if values is not None:  # eager loop: the Trainer's Python floats, for identical arithmetic
            return values[k]
        beta, capacity, multiplier_lr = self._sched[0, k], self._sched[1, k], self._sched[2, k]
        return ScheduleValue(beta=beta, capacity=capacity if self._capacity_objective else None,
                             free_bits=self._free_bits, multiplier_lr=multiplier_lr)  # fmt: skip

    # ------------------------------------------------------------------ one step
    def _member_terms(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, eps: Tensor,
                      beta: Tensor, capacity: Tensor, multiplier: Tensor | None) -> tuple[Tensor, Tensor]:  # fmt: skip
        """One member's loss to differentiate and its (loss, rate, distortion), written for vmap (as Trainer: the
        capacity objective descends distortion + λ·KL)."""
        with self.autocast():
            out, mu, logvar = functional_call(self._base, (params, buffers), (x, eps))
        distortion, _ = self.likelihood.nll(out, x)
        kl = gaussian_kl(mu, logvar)
        sched = ScheduleValue(beta=beta, capacity=capacity if self._capacity_objective else None, free_bits=self._free_bits)
        loss, descended = training_losses(distortion, kl, sched, multiplier)
        return descended, torch.stack([loss.detach(), kl.detach().sum(1).mean(), distortion.detach().mean()])

    def _batch(self, k: int) -> tuple[Tensor, Tensor]:
        """Member k's batch and noise, drawn exactly as Trainer draws them."""
        cfg = self.configs[k]
        x = self.dataset.train_batch(cfg.train.batch_size, self.data_generators[k])
        if self.channels_last and self.backend == "loop":
            x = x.contiguous(memory_format=torch.channels_last)
        eps = torch.randn(x.shape[0], self.latent_dim, generator=self.noise_generators[k], device=self.device)
        return x, eps

    def _forward_backward(self, values: list[ScheduleValue] | None) -> tuple[Tensor, list[Any], list[Any]]:
        """Terms ``[K, 3]`` and each member's gradients (None: member skipped)."""
        K = self.size
        if self.backend == "vmap":
            batches = [self._batch(k) for k in range(K)]
            x = torch.stack([b[0] for b in batches])
            eps = torch.stack([b[1] for b in batches])
            for p in self.params.values():
                p.grad = None
            multiplier = self._multiplier if self._multiplier is not None else self._sched[0]  # (unused for β-VAE)
            fn = vmap(self._member_terms, randomness="error")
            descended, terms = fn(self.params, self.buffers, x, eps, self._sched[0], self._sched[1], multiplier)
            descended.sum().backward()  # members are independent: each slice gets its own member's gradient
            grads = [list(g) for g in zip(*(self.params[n].grad.unbind(0) for n in self.param_names))]
            return terms, grads
        rows, grads = [], []
        skip_inactive = self._graph is None and not self._capturing
        for k, model in enumerate(self.models):
            if skip_inactive and self.status[k] != ACTIVE:
                rows.append(torch.zeros(len(TERMS), device=self.device))
                grads.append(None)
                continue
            x, eps = self._batch(k)
            with self.autocast():
                out, mu, logvar = model(x, eps)
            distortion, _ = self.likelihood.nll(out, x)
            kl = gaussian_kl(mu, logvar)
            sched = self._member_schedule(k, values)
            multiplier = self._multiplier[k] if self._multiplier is not None else None
            loss, descended = training_losses(distortion, kl, sched, multiplier)
            for p in model.parameters():
                p.grad = None
            descended.backward()
            rows.append(torch.stack([loss.detach(), kl.detach().sum(1).mean(), distortion.detach().mean()]))
            grads.append([p.grad for p in model.parameters()])
        return torch.stack(rows), grads

    _capturing = False

    def _step_multipliers(self, kl: Tensor, values: list[ScheduleValue] | None, active: Tensor) -> None:
        """Each active member's capacity multiplier, one dual-ascent step (objectives.capacity_multiplier_step)."""
        if values is not None:  # eager loop: the Trainer's Python floats, for identical arithmetic
            stepped = torch.stack([capacity_multiplier_step(self._multiplier[k], kl[k], v.capacity, v.beta, v.multiplier_lr)
                                   for k, v in enumerate(values)])  # fmt: skip
        else:
            stepped = capacity_multiplier_step(self._multiplier, kl, self._sched[1], self._sched[0], self._sched[2])
        self._multiplier.copy_(torch.where(active, stepped, self._multiplier))

    def _step_body(self, values: list[ScheduleValue] | None) -> None:
        """Everything of one step on the device: no host sync, capturable."""
        terms, grads = self._forward_backward(values)
        with torch.no_grad():
            finite = torch.isfinite(terms).all(1)
            first = self._active & ~finite
            self._first_bad_step.copy_(torch.where(first, self._step_t, self._first_bad_step))
            self._bad_terms.copy_(torch.where(first[:, None], terms, self._bad_terms))
            self._active.logical_and_(finite)  # masked in the step it happens: its update below is skipped
            active = self._active
            self._sums.add_(torch.where(active[:, None], terms, torch.zeros_like(terms)))
            self._sum_counts.add_(active)
            self._member_steps.add_(active)
            skip = (~active).float()  # fused Adam's found_inf: 1 → this member's update is skipped
            self.adam.steps.add_(active)
            for k in range(self.size):
                if grads[k] is not None:
                    self.adam.step(k, grads[k], self.lrs[k], skip[k], self._adam)
            if self._multiplier is not None:  # after the step, as Trainer
                self._step_multipliers(terms[:, 1], values, active)
            self._step_t.add_(1)

    def _train_step(self) -> None:
        if self.graphs and not self._graph_failed:
            with torch.cuda.device(self.device):  # capture uses the current device's streams: make it this one
                self._graphed_step()
            return
        if self.backend == "loop":
            self._step_body(self._write_schedule())
        else:
            self._write_schedule()
            self._step_body(None)
        self._eager_steps += 1
        self.step += 1

    def _graphed_step(self) -> None:
        self._write_schedule()
        if self._graph is None and self._eager_steps >= GRAPH_WARMUP_STEPS:
            self._capture()
        if self._graph is not None:
            self._graph.replay()
            self.step += 1
            return
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(self.device)
        on_side_stream(self._side_stream, self.device, lambda: self._step_body(None))  # a warm-up step, as capture wants
        self._eager_steps += 1
        self.step += 1

    def _capture(self) -> None:
        """Record one step as a CUDA graph; on failure log one line and stay eager."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.device(self.device):  # each member's generators advance with every replay
                for g in self.data_generators + self.noise_generators:
                    graph.register_generator_state(g)
            for p in self.params.values():
                p.grad = None
            self._capturing = True
            with torch.cuda.graph(graph):
                self._step_body(None)
            self._graph = graph
        except Exception as e:  # noqa: BLE001 — any capture failure means: train eagerly
            self._graph_failed = True
            self._graph = None
            log.warning("cohort: CUDA graph capture not possible (%s: %s); training with eager steps",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")  # fmt: skip
        finally:
            self._capturing = False

    # ------------------------------------------------------------------ the loop
    def fit(self, steps: int | None = None, on_log: Callable[[list[dict[str, float]]], None] | None = None) -> None:
        """Train ``steps`` more steps (default: up to ``train.steps``). Every ``train.log_every`` steps (and at the
        end) the host syncs once: members whose loss went non-finite become ``FAIL``, and ``on_log`` receives one
        metrics dict per member (the keys of ``Trainer.train_metrics``; NaN for a member inactive all interval)."""
        cfg = self.configs[0].train
        steps = cfg.steps - self.step if steps is None else steps
        for model in self.models:
            model.train()
        started, start_step = time.perf_counter(), self.step
        for _ in range(steps):
            if not any(s == ACTIVE for s in self.status):
                break
            self._train_step()
            if self.step % cfg.log_every == 0 or self.step == start_step + steps:
                metrics = self.train_metrics()
                if on_log is not None:
                    rate = (self.step - start_step) * cfg.batch_size / max(time.perf_counter() - started, 1e-9)
                    for m in metrics:
                        m["images_per_s"] = rate
                    on_log(metrics)

    def sync(self) -> list[str]:
        """Read the device's mask (one host sync): members whose loss went non-finite become ``FAIL``."""
        active = self._active.tolist()
        bad_steps = self._first_bad_step.tolist()
        bad_terms = self._bad_terms.tolist()
        for k in range(self.size):
            if self.status[k] == ACTIVE and not active[k]:
                self.status[k] = FAILED
                self.errors[k] = str(non_finite_error(bad_steps[k], dict(zip(TERMS, bad_terms[k]))))
        return self.status

    def train_metrics(self) -> list[dict[str, float]]:
        """Per member: means of the training terms since the last call, plus β or C(t) (one host sync)."""
        self.sync()
        counts = self._sum_counts[:, None]
        means = torch.where(counts > 0, self._sums / counts.clamp(min=1), float("nan")).tolist()  # as Trainer divides
        self._sums.zero_()
        self._sum_counts.zero_()
        multipliers = self._multiplier.tolist() if self._multiplier is not None else None
        out = []
        for k in range(self.size):
            values = means[k]
            metrics = {"step": float(self.step), **{f"train/{name}": v for name, v in zip(TERMS, values)}}
            metrics.update(self._schedule_metrics(k))
            if multipliers is not None:
                metrics["capacity_multiplier"] = multipliers[k]
            out.append(metrics)
        return out

    def _schedule_metrics(self, k: int) -> dict[str, float]:
        sched = self.schedule(k)
        return {"capacity": sched.capacity} if sched.capacity is not None else {"beta": sched.beta}

    # ------------------------------------------------------------------ members
    @property
    def active(self) -> list[bool]:
        return [s == ACTIVE for s in self.status]

    def stop(self, k: int) -> None:
        """Stop member k (e.g. a scheduler's decision): it no longer updates; its checkpoint is kept as of now. A
        member whose loss has gone non-finite on the device since the last sync is FAIL, not stopped."""
        self.sync()
        if self.status[k] != ACTIVE:
            return
        self._frozen[k] = self.member_state_dict(k)
        self._active[k] = False
        self.status[k] = STOPPED

    def member_steps(self, k: int) -> int:
        return int(self._member_steps[k])

    def member_state_dict(self, k: int) -> dict[str, Any]:
        """Member k's checkpoint, exactly what ``Trainer(configs[k]).state_dict()`` holds (``Trainer.load`` and
        ``load_model`` read it). A stopped member's is the one taken when it stopped."""
        if k in self._frozen:
            return self._frozen[k]
        model = self.models[k]
        optimizer = make_optimizer(model.parameters(), self.lrs[k], self.device)
        optimizer.state.update(self.adam.member_state(k, list(model.parameters())))
        extra = {"capacity_multiplier": self._multiplier[k].clone()} if self._multiplier is not None else {}
        return {
            "config": self.configs[k].model_dump(mode="json"),
            "example_shape": list(self.dataset.example_shape),
            "step": int(self._member_steps[k]),
            "model": {n: t.detach().clone() for n, t in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            **extra,
            "data_generator": self.data_generators[k].get_state(),
            "noise_generator": self.noise_generators[k].get_state(),
            "first_bad_step": self._first_bad_step[k].clone(),
            "bad_terms": self._bad_terms[k].clone(),
            **({"threads": self.threads.threads} if self.threads is not None else {}),
        }

    def save_member(self, k: int, path: str | Path) -> None:
        """Write member k's checkpoint (a plain ``Trainer`` checkpoint)."""
        _atomic_save(self.member_state_dict(k), path)

    def member_model(self, k: int) -> VAE:
        """A standalone copy of member k's model."""
        model = copy.deepcopy(self._base).to_empty(device=self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.load_state_dict(self.member_state_dict(k)["model"])
        return model

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, members: Iterable[int] | None = None) -> list[dict[str, float]]:
        """Per member (default: all), ``Trainer.evaluate()``'s metrics: held-out rate, distortion, nelbo, (sse),
        kl/<i>, active_units, β or C(t), step."""
        t = self.configs[0].train
        out = []
        for k in range(self.size) if members is None else members:
            model = self.models[k] if k not in self._frozen else self.member_model(k)
            metrics = evaluate(model, self.likelihood, self.dataset, batch_size=t.eval_batch_size, n_eval=t.n_eval,
                               seed=self.configs[k].seed, autocast=self.autocast)  # fmt: skip
            metrics.update(self._schedule_metrics(k))
            metrics["step"] = float(self.step)
            out.append(metrics)
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything to continue the whole cohort bit-identically."""
        clone = lambda d: {n: t.detach().clone() for n, t in d.items()}
        return {
            "configs": [c.model_dump(mode="json") for c in self.configs],
            "backend": self.backend,
            "step": self.step,
            "params": clone(self.params),
            "buffers": clone(self.buffers),
            "adam": self.adam.state_dict(),
            "multiplier": self._multiplier.clone() if self._multiplier is not None else None,
            "data_generators": [g.get_state() for g in self.data_generators],
            "noise_generators": [g.get_state() for g in self.noise_generators],
            "active": self._active.clone(),
            "member_steps": self._member_steps.clone(),
            "first_bad_step": self._first_bad_step.clone(),
            "bad_terms": self._bad_terms.clone(),
            "status": list(self.status),
            "errors": list(self.errors),
            "frozen": dict(self._frozen),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for key in ("params", "buffers"):
                for n, t in getattr(self, key).items():
                    t.copy_(state[key][n])  # into the same storage: member views and a captured graph stay valid
            self.adam.load_state_dict(state["adam"])
            if self._multiplier is not None:
                self._multiplier.copy_(state["multiplier"])
            for key in ("active", "member_steps", "first_bad_step", "bad_terms"):
                getattr(self, f"_{key}").copy_(state[key])
        for g, s in zip(self.data_generators, state["data_generators"]):
            g.set_state(s.cpu())
        for g, s in zip(self.noise_generators, state["noise_generators"]):
            g.set_state(s.cpu())
        self.step = int(state["step"])
        self._step_t.fill_(self.step)
        self.status, self.errors = list(state["status"]), list(state["errors"])
        self._frozen = dict(state["frozen"])
        self._sums.zero_()
        self._sum_counts.zero_()
        self._graph, self._eager_steps = None, 0  # re-capture after a few eager steps from the new state

    def save(self, path: str | Path) -> None:
        """Write the whole cohort's checkpoint (configs included) that :meth:`load` restores."""
        _atomic_save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | Path, *, backend: str | None = None, graphs: bool | None = None,
             **overrides: Any) -> Cohort:  # fmt: skip
        """Rebuild a cohort from :meth:`save` (``overrides`` of ``train`` settings apply to every member)."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        configs = [{**c, "train": {**c["train"], **overrides}} if overrides else c for c in state["configs"]]
        cohort = cls(configs, backend=backend or state["backend"], graphs=graphs)
        cohort.load_state_dict(state)
        return cohort


def _atomic_save(state: dict[str, Any], path: str | Path) -> None:
    write_atomically(path, torch_bytes(state))  # as Trainer.save: never a half-written checkpoint
