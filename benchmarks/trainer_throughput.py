#!/usr/bin/env python
"""Training throughput of :class:`bvae_core.trainer.Trainer` against the same training written the plain way.

Burgess β-VAE, dSprites at 64 px and 32 px, batch 64, Bernoulli likelihood. For each resolution it measures, in one
process and on the same machine state:

* **ours** — ``Trainer(config)``: cold start (dSprites render tables, model + optimizer, one ``evaluate()``), steady
  training images/s, and end-to-end images/s for ``--steps`` steps *including* the cold start;
* **plain** — a ``DataLoader`` over images pre-rendered up front with the same dataset (that rendering, and the
  held-out images for its evaluation, count toward its cold start), ``loss.item()`` every step, plain
  ``torch.optim.Adam``, the same model and loss, one evaluation over the same held-out split;
* the share of our step time spent on data: ``dataset.train_batch`` alone for the same number of batches;
* achieved model FLOP/s (training FLOPs per image from ``FlopCounterMode`` on one forward+backward × images/s) over the
  fp32 matmul FLOP/s torch reaches here (2048² matmuls on CPU, 4096² on CUDA, best of several, same thread count).

Everything runs round robin, chunk by chunk (ours, plain, our data alone, the loader alone, a matmul timing), so
that all figures of a chunk see the same machine load. Steady figures are medians over the chunks after the warm-up
chunk — over the *quiet* ones only (both loops got ≥ 90 % of the CPU time their threads could use) when there are at
least three: on a machine shared with other processes a chunk during which they took a core measures them, not us.
The data share and the matmul share are *paired*: each chunk's figure over the one measured next to it, then the
median. Targets, per resolution: ours never slower than the plain loop end to end (cold start included); ≥ 60 % of the
fp32 matmul rate; data ≤ 10 % of step time. PASS/FAIL is printed; the exit status is 0 either way. A run during which
other processes held the cores is flagged with a WARNING.

    python benchmarks/trainer_throughput.py [--steps 300] [--threads N] [--device auto|cpu|cuda] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from functools import partial
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from bvae_core.data import make_dataset
from bvae_core.models import build_model
from bvae_core.objectives import bernoulli_nll, beta_vae_loss, gaussian_kl
from bvae_core.trainer import Trainer, resolve_device

ARCH, LATENT_DIM, BATCH, LR, SEED = "burgess", 10, 64, 5.0e-4, 0
EVAL_BATCH = 512  # the Trainer's default train.eval_batch_size; the plain evaluation uses the same
TARGET_MATMUL_SHARE = 0.60
TARGET_DATA_SHARE = 0.10
QUIET = 0.90  # a chunk is "quiet" when both trainings had ≥ 90 % of the CPU time their threads could use


# ---------------------------------------------------------------------------------------------------- timing helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` with the device synchronised on both sides."""
    seconds, _, result = timed_cpu(device, fn)
    return seconds, result


def timed_cpu(device: torch.device, fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result) of ``fn()``, the device synchronised on both sides."""
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu, result


def utilisation(device: torch.device, wall: float, cpu: float) -> float | None:
    """CPU seconds over wall seconds × threads: ~1 when our threads had the cores to themselves (torch's OpenMP
    threads spin while they wait), well below 1 when other processes took the cores. None on CUDA."""
    return cpu / (wall * torch.get_num_threads()) if device.type == "cpu" and wall > 0 else None


def matmul_rate(device: torch.device, n: int, reps: int, dtype: torch.dtype = torch.float32) -> float:
    """Best FLOP/s of an ``n × n`` matmul over ``reps`` timings (fp32 on CUDA means TF32 off, torch's default)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    inner = 10 if device.type == "cuda" else 1  # a single CUDA matmul is too short to time alone
    for _ in range(2):
        torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(reps):
        seconds, _ = timed(device, lambda: [torch.mm(a, b, out=out) for _ in range(inner)])
        best = min(best, seconds / inner)
    return 2 * n**3 / best


def chunk_plan(steps: int, warmup: int, chunk: int) -> list[int]:
    """Step counts per timed chunk: one warm-up chunk, then chunks of ``chunk`` steps, ``steps`` in all."""
    warmup = min(warmup, steps - 1)
    plan, left = [warmup], steps - warmup
    while left > 0:
        plan.append(min(chunk, left))
        left -= plan[-1]
    return plan


# ---------------------------------------------------------------------------------------------------- the two trainings
def autocast_for(device: torch.device, precision: str) -> Callable[[], Any]:
    """The Trainer's rule: ``auto`` → bf16 autocast on CUDA, fp32 elsewhere."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext
    return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)


def plain_loss(model: torch.nn.Module, x: torch.Tensor, eps: torch.Tensor, autocast) -> tuple[torch.Tensor, ...]:
    """The Trainer's objective with its default schedule (constant, β = 1): E[−log p(x|z)] + β·KL."""
    with autocast():
        out, mu, logvar = model(x, eps)
    distortion = bernoulli_nll(out, x)
    kl = gaussian_kl(mu, logvar)
    return beta_vae_loss(distortion, kl, 1.0), distortion, kl


class Runner:
    """Cold-start parts, each timed: wall seconds in ``cold``, process CPU seconds in ``cold_cpu``."""

    device: torch.device

    def __init__(self) -> None:
        self.cold: dict[str, float] = {}
        self.cold_cpu: dict[str, float] = {}

    def cold_part(self, part: str, fn: Callable[[], Any]) -> Any:
        self.cold[part], self.cold_cpu[part], result = timed_cpu(self.device, fn)
        return result


class Ours(Runner):
    """The Trainer, built the way a user builds it; cold-start parts timed separately."""

    def __init__(self, args: argparse.Namespace, resolution: int, device: torch.device):
        super().__init__()
        self.device = device
        config = {
            "name": "throughput", "seed": SEED,
            "dataset": {"name": "dsprites", "resolution": resolution},
            "model": {"arch": ARCH, "latent_dim": LATENT_DIM, "likelihood": {"kind": "bernoulli"}},
            "train": {"steps": args.steps, "batch_size": BATCH, "lr": LR, "eval_every": args.steps,
                      "eval_batch_size": EVAL_BATCH, "device": str(device), "threads": args.threads,
                      "precision": args.precision, "channels_last": args.channels_last},
        }  # fmt: skip
        # Trainer(config) would build the dataset itself; building it here first only splits the timing in two.
        self.dataset = self.cold_part("data", lambda: make_dataset("dsprites", device, resolution=resolution))
        self.trainer = self.cold_part("model", lambda: Trainer(config, dataset=self.dataset))

    def train(self, steps: int) -> None:
        self.trainer.fit(steps)

    def evaluate(self) -> dict[str, float]:
        return self.trainer.evaluate()


class Plain(Runner):
    """The same training the plain way: DataLoader over pre-rendered images, ``loss.item()`` each step, plain Adam."""

    def __init__(self, args: argparse.Namespace, resolution: int, device: torch.device, n_images: int):
        super().__init__()
        self.device, self.autocast = device, autocast_for(device, args.precision)
        self.train_images, self.test_images = self.cold_part("data", lambda: self._render(resolution, n_images))

        def build():
            torch.manual_seed(SEED)
            model = build_model(ARCH, tuple(self.train_images.shape[1:]), LATENT_DIM).to(device)
            return model, torch.optim.Adam(model.parameters(), lr=LR)

        self.model, self.optimizer = self.cold_part("model", build)
        self.loader = DataLoader(TensorDataset(self.train_images), batch_size=BATCH, shuffle=True, drop_last=True,
                                 pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(SEED))  # fmt: skip
        self._batches = self._forever()
        self.last_loss = math.nan

    def _render(self, resolution: int, n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The same dataset (its render tables), then ``n_images`` training images and the held-out split, on the CPU."""
        dataset = make_dataset("dsprites", self.device, resolution=resolution)
        gen = torch.Generator(device=self.device).manual_seed(SEED)
        train = torch.cat([dataset.train_batch(min(4096, n_images - i), gen).cpu() for i in range(0, n_images, 4096)])
        test = torch.cat([x.cpu() for x in dataset.test_batches(EVAL_BATCH)])
        return train, test

    def _forever(self):
        while True:
            for (x,) in self.loader:
                yield x

    def next_batch(self) -> torch.Tensor:
        return next(self._batches).to(self.device, non_blocking=True)

    def train(self, steps: int) -> None:
        self.model.train()
        for _ in range(steps):
            x = self.next_batch()
            eps = torch.randn(x.shape[0], LATENT_DIM, device=self.device)
            loss, _, _ = plain_loss(self.model, x, eps, self.autocast)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.last_loss = loss.item()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        rate = distortion = 0.0
        for x in self.test_images.split(EVAL_BATCH):
            x = x.to(self.device, non_blocking=True)
            eps = torch.randn(x.shape[0], LATENT_DIM, device=self.device)
            _, nll, kl = plain_loss(self.model, x, eps, self.autocast)
            rate += kl.sum().item()
            distortion += nll.sum().item()
        self.model.train()
        n = self.test_images.shape[0]
        return {"rate": rate / n, "distortion": distortion / n}


def training_flops_per_image(resolution: int, device: torch.device, autocast, example: torch.Tensor) -> float:
    """FLOPs of one forward + backward training step of a fresh Burgess model, per image (FlopCounterMode)."""
    torch.manual_seed(SEED)
    model = build_model(ARCH, tuple(example.shape[1:]), LATENT_DIM).to(device)
    eps = torch.randn(example.shape[0], LATENT_DIM, device=device)
    with FlopCounterMode(display=False) as counter:
        loss, _, _ = plain_loss(model, example, eps, autocast)
        loss.backward()
    return counter.get_total_flops() / example.shape[0]


# ---------------------------------------------------------------------------------------------------- one resolution
def bench_resolution(args: argparse.Namespace, resolution: int, device: torch.device, mm_n: int) -> dict[str, Any]:
    plan = chunk_plan(args.steps, args.warmup, args.chunk)
    n_images = min(args.steps * BATCH, args.plain_images)
    ours = Ours(args, resolution, device)
    plain = Plain(args, resolution, device, n_images)
    gen = torch.Generator(device=device).manual_seed(SEED + 7)  # for the data-alone timings: not the Trainer's

    # Round robin, chunk by chunk, so that every figure of a chunk sees the same machine load: our training, the
    # plain training, our data alone (dataset.train_batch, the same number of batches), the plain loop's data alone
    # (DataLoader + .to(device)), then the fp32 matmul rate. The first chunk is everyone's warm-up.
    t: dict[str, list[float]] = {"ours": [], "plain": [], "ours_data": [], "plain_data": []}
    mm: list[float] = []
    cpu: dict[str, list[float]] = {"ours": [], "plain": []}
    for n in plan:
        for name, fn in (("ours", lambda: ours.train(n)), ("plain", lambda: plain.train(n))):
            wall, cpu_s, _ = timed_cpu(device, fn)
            t[name].append(wall)
            cpu[name].append(cpu_s)
        t["ours_data"].append(timed(device, lambda: [ours.dataset.train_batch(BATCH, gen) for _ in range(n)])[0])
        t["plain_data"].append(timed(device, lambda: [plain.next_batch() for _ in range(n)])[0])
        mm.append(matmul_rate(device, mm_n, args.matmul_reps_per_chunk))
    ours_eval = ours.cold_part("evaluate", ours.evaluate)
    plain_eval = plain.cold_part("evaluate", plain.evaluate)
    if not math.isfinite(plain.last_loss):
        raise FloatingPointError(f"plain loop: non-finite loss at {resolution} px")

    autocast = autocast_for(device, args.precision)
    flops_per_image = training_flops_per_image(resolution, device, autocast, ours.dataset.train_batch(BATCH, gen))

    # Steady figures: medians over the chunks after the warm-up chunk, only the quiet ones when there are ≥ 3 of them
    # (on a shared machine a chunk during which another process took a core says nothing about our code).
    utils = {name: [utilisation(device, w, c) for w, c in zip(t[name], cpu[name])] for name in ("ours", "plain")}
    quiet = [i for i in range(1, len(plan)) if device.type != "cpu" or min(utils["ours"][i], utils["plain"][i]) >= QUIET]
    used = quiet if len(quiet) >= 3 else list(range(1, len(plan)))

    def median_after_warmup(values: list[float]) -> float:
        return statistics.median([values[i] for i in used])

    def summary(name: str, runner) -> dict[str, Any]:
        seconds, data_seconds = t[name], t[f"{name}_data"]
        rates = [n * BATCH / s for n, s in zip(plan, seconds)]
        steady = median_after_warmup(rates)
        cold, train_s = sum(runner.cold.values()), sum(seconds)
        e2e_util = utilisation(device, cold + train_s, sum(runner.cold_cpu.values()) + sum(cpu[name]))
        return {
            "cold_start_s": cold,
            "cold_start_parts_s": dict(runner.cold),
            "train_s": train_s,
            "end_to_end_s": cold + train_s,
            "end_to_end_img_s": args.steps * BATCH / (cold + train_s),
            "steady_img_s": steady,
            "best_chunk_img_s": max(rates[i] for i in used),
            "first_chunk_img_s": rates[0],
            "step_ms": 1e3 * BATCH / steady,
            "data_ms_per_batch": 1e3 * median_after_warmup([d / n for n, d in zip(plan, data_seconds)]),
            # paired: data time over step time of the same chunk, median over the chunks
            "data_share": median_after_warmup([d / s for d, s in zip(data_seconds, seconds)]),
            "model_flop_s": flops_per_image * steady,
            # paired: the chunk's model FLOP/s over the matmul rate measured right after it, median over the chunks
            "matmul_share": median_after_warmup([flops_per_image * r / m for r, m in zip(rates, mm)]),
            "cpu_utilisation_end_to_end": e2e_util,
            "cpu_utilisation_chunks": utils[name],
        }

    result = {
        "resolution": resolution,
        "train_flops_per_image": flops_per_image,
        "plain_images": n_images,
        "chunk_matmul_flop_s": mm,
        "chunks_used": len(used),
        "chunks_quiet": len(quiet),
        "chunks_after_warmup": len(plan) - 1,
        "ours": summary("ours", ours),
        "plain": summary("plain", plain),
        "eval": {"ours": {k: ours_eval[k] for k in ("rate", "distortion")}, "plain": plain_eval},
    }
    o, p = result["ours"], result["plain"]
    e2e_utils = [u for u in (o["cpu_utilisation_end_to_end"], p["cpu_utilisation_end_to_end"]) if u is not None]
    result["quiet_chunks"] = len(quiet)
    result["busy"] = len(quiet) < 3 or (bool(e2e_utils) and min(e2e_utils) < QUIET)
    result["verdict"] = {
        "end_to_end_not_slower": {"pass": o["end_to_end_img_s"] >= p["end_to_end_img_s"],
                                  "value": o["end_to_end_img_s"] / p["end_to_end_img_s"], "target": 1.0},
        "matmul_share": {"pass": o["matmul_share"] >= TARGET_MATMUL_SHARE, "value": o["matmul_share"],
                         "target": TARGET_MATMUL_SHARE},
        "data_share": {"pass": o["data_share"] <= TARGET_DATA_SHARE, "value": o["data_share"],
                       "target": TARGET_DATA_SHARE},
    }  # fmt: skip
    return result


# ---------------------------------------------------------------------------------------------------- report
def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    threads = f" ({m['threads']} threads)" if m["device_type"] == "cpu" else ""
    print(f"Trainer throughput — dSprites, {ARCH}, batch {BATCH}, Bernoulli; {m['device']}{threads}, "
          f"precision {report['precision']}, "
          f"channels_last {report['channels_last']}, {report['steps']} steps "
          f"(warm-up chunk {report['chunks'][0]}, then chunks of {report['chunk']}); torch {m['torch']}")  # fmt: skip
    mm = report["matmul"]
    print(f"fp32 matmul {mm['n']}×{mm['n']}: best {mm['fp32_flop_s'] / 1e9:,.1f} GFLOP/s over the run "
          f"(before {mm['before'] / 1e9:,.1f}, after {mm['after'] / 1e9:,.1f}: best of {mm['reps']}; "
          f"also best of {mm['reps_per_chunk']} after every chunk)"
          + (f"; bf16 {mm['bf16_flop_s'] / 1e9:,.1f}" if mm.get("bf16_flop_s") else ""))  # fmt: skip
    print(f"process one-off (first torch.optim optimizer imports torch._dynamo), paid before either loop: "
          f"{report['process_one_off_s']:.2f} s")
    print(f"load average before/after: {m['load_before']:.2f} / {m['load_after']:.2f}; steady figures are medians over "
          f"the chunks after the warm-up chunk; 'paired' ratios divide each chunk by the figure measured right next to "
          f"it (then the median), so a busy machine skews them less")
    for r in report["results"]:
        o, p = r["ours"], r["plain"]
        quiet = "" if m["device_type"] != "cpu" else (
            f"; steady figures from {r['chunks_used']} of {r['chunks_after_warmup']} chunks"
            f" ({r['chunks_quiet']} quiet: both loops ≥ {100 * QUIET:.0f} % CPU)")
        print(f"\n{r['resolution']} px — {r['train_flops_per_image'] / 1e6:.1f} MFLOP per training image "
              f"(plain loop: {r['plain_images']:,} pre-rendered images){quiet}")  # fmt: skip
        rows = [
            ("cold start, s", lambda d: f"{d['cold_start_s']:.2f}"),
            ("  data (tables / render)", lambda d: f"{d['cold_start_parts_s']['data']:.2f}"),
            ("  model + optimizer", lambda d: f"{d['cold_start_parts_s']['model']:.2f}"),
            ("  one evaluation", lambda d: f"{d['cold_start_parts_s']['evaluate']:.2f}"),
            (f"training {report['steps']} steps, s", lambda d: f"{d['train_s']:.2f}"),
            ("steady img/s (median chunk)", lambda d: fmt_rate(d["steady_img_s"])),
            ("  best chunk img/s", lambda d: fmt_rate(d["best_chunk_img_s"])),
            ("  warm-up chunk img/s", lambda d: fmt_rate(d["first_chunk_img_s"])),
            ("end-to-end img/s (w/ cold)", lambda d: fmt_rate(d["end_to_end_img_s"])),
            ("step, ms", lambda d: f"{d['step_ms']:.2f}"),
            ("data per batch, ms", lambda d: f"{d['data_ms_per_batch']:.3f}"),
            ("data share of step (paired)", lambda d: f"{100 * d['data_share']:.1f} %"),
            ("model GFLOP/s (steady)", lambda d: f"{d['model_flop_s'] / 1e9:.1f}"),
            ("  / matmul of its chunk", lambda d: f"{100 * d['matmul_share']:.1f} %"),
            ("  / best matmul of the run", lambda d: f"{100 * d['matmul_share_vs_best']:.1f} %"),
        ]
        if o["cpu_utilisation_end_to_end"] is not None:
            rows.append(("CPU / (wall × threads), e2e", lambda d: f"{100 * d['cpu_utilisation_end_to_end']:.0f} %"))
        print(f"  {'':30s} {'ours (Trainer)':>16s} {'plain loop':>16s}")
        for label, f in rows:
            print(f"  {label:30s} {f(o):>16s} {f(p):>16s}")
        v = r["verdict"]
        word = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
        print(f"  verdict {r['resolution']} px: "
              f"end-to-end ours ≥ plain {word(v['end_to_end_not_slower']['pass'])} "
              f"({v['end_to_end_not_slower']['value']:.2f}×) | "
              f"≥ {100 * TARGET_MATMUL_SHARE:.0f} % of matmul (paired) {word(v['matmul_share']['pass'])} "
              f"({100 * v['matmul_share']['value']:.1f} %) | "
              f"data ≤ {100 * TARGET_DATA_SHARE:.0f} % of step {word(v['data_share']['pass'])} "
              f"({100 * v['data_share']['value']:.1f} %)")  # fmt: skip
        if r["busy"] and r.get("quiet_chunks", 3) < 3:
            print(f"  WARNING: only {r['quiet_chunks']} quiet chunk(s) were measured (3 wanted): too few to trust; "
                  f"run longer (--steps) or on a quiet machine")  # fmt: skip
        elif r["busy"]:
            print(f"  WARNING: other processes took the cores during this run (CPU utilisation < {100 * QUIET:.0f} %): "
                  f"the figures above understate this code; run again on a quiet machine")


# ---------------------------------------------------------------------------------------------------- main
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="training steps per run, warm-up chunk included (default 300)")
    p.add_argument("--threads", type=int, default=cores, help=f"torch intra-op threads (default: all cores, {cores})")
    p.add_argument("--device", default="auto", help="auto (cuda when present, else cpu) | cpu | cuda | cuda:N")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object instead of the report")
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 32], choices=[64, 32])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="train.precision for both loops (auto: bf16 autocast on CUDA, fp32 on CPU, as the Trainer)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="train.channels_last: false for the Trainer (the plain loop never uses it)")
    p.add_argument("--warmup", type=int, default=20, help="steps of the first, untimed-for-steady chunk (default 20)")
    p.add_argument("--chunk", type=int, default=20, help="steps per timed chunk (default 20)")
    p.add_argument("--plain-images", type=int, default=65_536,
                   help="cap on the images the plain loop pre-renders (default 65,536; it renders steps × 64 up to that)")
    p.add_argument("--matmul-reps", type=int, default=10, help="matmul timings before and after the run (best of)")
    p.add_argument("--matmul-reps-per-chunk", type=int, default=3, help="matmul timings after each chunk (best of)")
    args = p.parse_args(argv)
    if args.steps < 2 or args.threads < 1 or args.warmup < 1 or args.chunk < 1:
        p.error("--steps must be ≥ 2, --threads, --warmup and --chunk ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except ValueError as e:  # cuda asked for where there is none: one line
        raise SystemExit(f"--device: {str(e).split(': ', 1)[-1]}") from None
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    load_before = os.getloadavg()[0]
    # A process-level one-off, paid by whichever loop builds the first optimizer: torch.optim imports torch._dynamo
    # (~1.5 s here). Paid up front and reported apart so that the order of the two loops does not decide the race.
    one_off, _ = timed(device, lambda: torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)]))
    mm_n = 4096 if device.type == "cuda" else 2048
    mm_before = matmul_rate(device, mm_n, args.matmul_reps)
    results = [bench_resolution(args, res, device, mm_n) for res in args.resolutions]
    mm_after = matmul_rate(device, mm_n, args.matmul_reps)
    mm_best = max([mm_before, mm_after] + [m for r in results for m in r["chunk_matmul_flop_s"]])
    for r in results:  # the unpaired figure too: steady model FLOP/s over the best matmul rate of the whole run
        for side in ("ours", "plain"):
            r[side]["matmul_share_vs_best"] = r[side]["model_flop_s"] / mm_best
    report = {
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "device_type": device.type, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_before": load_before, "load_after": os.getloadavg()[0],
        },
        "process_one_off_s": one_off,
        "steps": args.steps, "batch_size": BATCH, "precision": args.precision, "channels_last": args.channels_last,
        "chunk": args.chunk, "chunks": chunk_plan(args.steps, args.warmup, args.chunk),
        "matmul": {"n": mm_n, "reps": args.matmul_reps, "reps_per_chunk": args.matmul_reps_per_chunk,
                   "fp32_flop_s": mm_best, "before": mm_before, "after": mm_after},
        "results": results,
    }  # fmt: skip
    if device.type == "cuda":
        report["matmul"]["bf16_flop_s"] = matmul_rate(device, mm_n, args.matmul_reps, torch.bfloat16)
    report["all_pass"] = all(v["pass"] for r in results for v in r["verdict"].values())
    if args.json:
        json.dump(report, sys.stdout)
        print()
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
