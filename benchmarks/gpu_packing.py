"""Every way to put a sweep's trials on one device, side by side in one run.

A sweep trains many copies of one small model. The routes measured, all with the same model, data and batch:

* **trial** — one ``Trainer`` alone (on CPU: with all cores);
* **P procs** — P processes, each one trial, sharing the device (on CPU: one core each, ``train.threads: 1`` — the
  way a sweep runs trials on a CPU node; on CUDA: fractional GPUs);
* **cohort K** — :class:`bvae_core.cohort.Cohort` of K members differing in β and seed, trained as one fused model
  (horizontal fusion, HFTA: Wang et al., MLSys 2021), backend ``vmap`` (and ``loop`` where asked);
* on CUDA each route also **with graph capture** (the whole step replayed as one CUDA graph: ``train.cuda_graphs``
  for a trial, which is on by default; the routes without it turn it off).

Per route: images/s (the sum over all members/processes) after a warm-up, and achieved FLOP/s (training FLOPs per
image from ``FlopCounterMode`` on one forward + backward × images/s) over the matmul rate measured in the same run
(bf16 8192² on CUDA — the targets' reference; fp32 and bf16 2048² on CPU, where training runs fp32). Targets:

* CUDA (Burgess, 64 px): the best cohort ≥ 10× the images/s of the best P-process route, and ≥ 5 % of the bf16
  matmul rate;
* CPU: every cohort with K ≥ cores at least as fast as its trials run one per core.

Each measurement runs ``--rounds`` times round robin over the routes (median reported), so the routes see the same
machine load. The exit status is 0 whatever the verdicts.

    python benchmarks/gpu_packing.py                                  # CUDA when present, else CPU
    python benchmarks/gpu_packing.py --device cpu --arch mlp --resolution 32 --ks 1 2 4 8
    python benchmarks/gpu_packing.py --device cuda --ks 1 8 32 128 --procs 4 8 --json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from typing import Any

import torch
from torch.func import functional_call, stack_module_state, vmap
from torch.utils.flop_counter import FlopCounterMode

from bvae_core.cohort import Cohort
from bvae_core.data import Dataset, make_dataset
from bvae_core.memory import training_memory_bytes
from bvae_core.models import build_model
from bvae_core.objectives import gaussian_kl, make_likelihood
from bvae_core.schedules import ScheduleValue
from bvae_core.trainer import Trainer, resolve_device, training_losses

LATENT_DIM, BATCH, LR = 10, 64, 5.0e-4
TARGET_VS_PROCS, TARGET_MATMUL_SHARE = 10.0, 0.05
PAPER_MODELS, PAPER_STEPS, PAPER_AIM_MINUTES = 32, 300_000, 30  # Burgess et al. (2018)'s frontier, one GPU


def paper_frontier_minutes(images_per_s: dict[str, float]) -> tuple[str, float] | None:
    """(route, minutes) the paper-length frontier's training takes at the rate of a cohort of its size — graphed if
    measured — which is what ``search.cohort: auto`` runs it as on one GPU; None if that route was not measured."""
    for label in (f"cohort K={PAPER_MODELS} +graph", f"cohort K={PAPER_MODELS}"):
        rate = images_per_s.get(label)
        if rate and math.isfinite(rate):
            return label, PAPER_MODELS * PAPER_STEPS * BATCH / rate / 60
    return None


# ---------------------------------------------------------------------------------------------------- configs
def make_config(args: argparse.Namespace, seed: int, threads: int | None) -> dict[str, Any]:
    beta = 0.25 * 2 ** (seed % 8)  # members differ in β and seed, as a sweep's do
    train = {"steps": 10**9, "batch_size": BATCH, "lr": LR, "eval_every": 1000, "log_every": 10**9,
             "device": args.device, "precision": args.precision}  # fmt: skip
    if threads is not None:
        train["threads"] = threads
    return {"seed": seed, "dataset": {"name": args.dataset, "resolution": args.resolution},
            "model": {"arch": args.arch, "latent_dim": LATENT_DIM, "likelihood": {"kind": "bernoulli"}},
            "objective": {"beta": beta, "schedule": {"kind": "constant"}}, "train": train}  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- one route
class Route:
    """Something that trains: ``step(n)`` runs n steps; ``images_per_step``."""

    def __init__(self, spec: dict[str, Any], dataset: Dataset | None = None):
        self.spec = spec
        configs = spec["configs"]
        if spec["kind"] == "trial":
            train = {**configs[0]["train"], "cuda_graphs": bool(spec.get("graphs"))}
            self.trainer = Trainer({**configs[0], "train": train}, dataset)
            self.device, self.images_per_step = self.trainer.device, BATCH
            self.run = self.trainer.fit
        else:
            self.cohort = Cohort(configs, dataset, backend=spec.get("backend", "auto"), graphs=spec.get("graphs"))
            self.device, self.images_per_step = self.cohort.device, BATCH * len(configs)
            self.run = self.cohort.fit
        self.captured: bool | None = None

    def warm_up(self, steps: int) -> None:
        self.run(steps)
        sync(self.device)
        if hasattr(self, "cohort") and self.cohort.graphs:
            self.captured = self.cohort._graph is not None
        if hasattr(self, "trainer") and self.trainer.graphs:
            self.captured = self.trainer._graph is not None

    def images_per_s(self, seconds: float, chunk: int) -> tuple[float, float]:
        """Run chunks of ``chunk`` steps for at least ``seconds``: (images per wall second, per CPU second of this
        process — the second stays fair when other processes hold the cores)."""
        steps, start, cpu = 0, time.perf_counter(), time.process_time()
        while True:
            self.run(chunk)
            steps += chunk
            sync(self.device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                images = steps * self.images_per_step
                return images / elapsed, images / max(time.process_time() - cpu, 1e-9)


def worker() -> None:
    """A child process: build its route, warm up, say ready, wait for 'go', train for the given seconds, report."""
    spec = json.loads(sys.stdin.readline())
    route = Route(spec)
    route.warm_up(spec["warmup"])
    print("ready", flush=True)
    sys.stdin.readline()
    rate, per_cpu = route.images_per_s(spec["seconds"], spec["chunk"])
    print(json.dumps({"images_per_s": rate, "per_cpu_s": per_cpu, "captured": route.captured}), flush=True)


def run_processes(spec: dict[str, Any], procs: int) -> tuple[float, float, bool | None]:
    """Aggregate images/s of ``procs`` processes, each running ``spec``, started together after their warm-up."""
    children = [subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}) for _ in range(procs)]  # fmt: skip
    for child in children:
        child.stdin.write(json.dumps(spec) + "\n")
        child.stdin.flush()
    for child in children:
        line = child.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"worker failed before its start: {line!r}")
    for child in children:  # all start within a few ms of each other
        child.stdin.write("go\n")
        child.stdin.flush()
    results = [json.loads(child.stdout.readline()) for child in children]
    for child in children:
        child.wait()
    per_cpu = sum(r["images_per_s"] for r in results) / sum(r["images_per_s"] / r["per_cpu_s"] for r in results)
    return sum(r["images_per_s"] for r in results), per_cpu, results[0]["captured"]


# ---------------------------------------------------------------------------------------------------- reference rates
def flops_per_image(args: argparse.Namespace, device: torch.device) -> float:
    """Training FLOPs (one forward + backward) per image of one model, by FlopCounterMode."""
    shape = (1, args.resolution, args.resolution)
    model = build_model(args.arch, shape, LATENT_DIM).to(device)
    x = torch.rand(BATCH, *shape, device=device).round()
    eps = torch.randn(BATCH, LATENT_DIM, device=device)
    with FlopCounterMode(display=False) as counter:
        out, mu, logvar = model(x, eps)
        distortion, _ = make_likelihood("bernoulli").nll(out, x)
        training_losses(distortion, gaussian_kl(mu, logvar), ScheduleValue(beta=1.0, capacity=None))[1].backward()
    return counter.get_total_flops() / BATCH


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, reps: int = 5) -> float:
    """Best FLOP/s of an ``n × n`` matmul."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    inner = 20 if device.type == "cuda" else 1
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - start) / inner)
    return 2 * n**3 / best


# ---------------------------------------------------------------------------------------------------- vmap vs grouped
def conv_stack_comparison(args: argparse.Namespace, device: torch.device, k: int, reps: int = 5) -> dict[str, float]:
    """The Burgess model's eight conv layers (encoder convs, then decoder transposed convs) for K members, forward +
    backward: ``vmap(functional_call)`` over stacked weights (what :class:`Cohort` runs) against hand-written grouped
    convolutions (``groups=K``, members' channels side by side). Seconds per step, best of ``reps``, and the largest
    relative difference of the outputs."""
    shape = (1, args.resolution, args.resolution)
    stacks = []
    for seed in range(k):
        torch.manual_seed(seed)
        m = build_model("burgess", shape, LATENT_DIM)
        stacks.append(torch.nn.Sequential(*m.encoder.conv, *m.decoder.deconv).to(device))
    params, buffers = stack_module_state(stacks)
    base = copy.deepcopy(stacks[0]).to("meta")
    layers = []
    for layer in stacks[0]:
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            transposed = isinstance(layer, torch.nn.ConvTranspose2d)
            cls = torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d
            g = cls(k * layer.in_channels, k * layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                    groups=k).to(device)  # fmt: skip
            index = len(layers)
            with torch.no_grad():
                g.weight.copy_(torch.cat([s[index].weight for s in stacks]))
                g.bias.copy_(torch.cat([s[index].bias for s in stacks]))
            layers.append(g)
        else:
            layers.append(torch.nn.ReLU())
    grouped = torch.nn.Sequential(*layers)
    x = torch.rand(k, BATCH, *shape, device=device)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else nullcontext()

    def run_vmap() -> torch.Tensor:
        with autocast:
            y = vmap(lambda p, b, xi: functional_call(base, (p, b), (xi,)))(params, buffers, x)
        y.float().square().sum().backward()
        return y

    def run_grouped() -> torch.Tensor:
        xg = x.permute(1, 0, 2, 3, 4).reshape(BATCH, k * shape[0], *shape[1:])
        with autocast:
            y = grouped(xg)
        y.float().square().sum().backward()
        return y.reshape(BATCH, k, *shape).permute(1, 0, 2, 3, 4)

    out: dict[str, float] = {}
    for name, fn in (("vmap", run_vmap), ("grouped", run_grouped)):
        fn()
        best = float("inf")
        for _ in range(reps):
            sync(device)
            start = time.perf_counter()
            y = fn()
            sync(device)
            best = min(best, time.perf_counter() - start)
        out[f"{name}_s"] = best
        out[f"{name}_y"] = y.detach().float()
    yv, yg = out.pop("vmap_y"), out.pop("grouped_y")
    out["max_rel_diff"] = float((yv - yg).abs().max() / yv.abs().max())
    return out


# ---------------------------------------------------------------------------------------------------- main
def routes(args: argparse.Namespace, device: torch.device) -> list[tuple[str, dict[str, Any], int]]:
    """(label, spec, processes) for every route."""
    cpu = device.type == "cpu"
    graph_modes = [False] if cpu else [False, True]
    common = {"warmup": args.warmup, "seconds": args.seconds, "chunk": args.chunk}
    out = []
    for graphs in graph_modes:
        tag = " +graph" if graphs else ""
        out.append((f"trial{tag}", {**common, "kind": "trial", "graphs": graphs,
                                    "configs": [make_config(args, 0, None)]}, 0))  # fmt: skip
        for p in args.procs:
            threads = 1 if cpu else None
            out.append((f"{p} procs{tag}", {**common, "kind": "trial", "graphs": graphs,
                                            "configs": [make_config(args, 0, threads)]}, p))  # fmt: skip
        for backend in args.backends:
            for k in args.ks:
                label = f"cohort K={k}{tag}" + (f" ({backend})" if len(args.backends) > 1 else "")
                spec = {**common, "kind": "cohort", "graphs": graphs, "backend": backend,
                        "configs": [make_config(args, s, None) for s in range(k)]}  # fmt: skip
                out.append((label, spec, 0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch", default="burgess", choices=["burgess", "conv", "mlp", "linear"])
    parser.add_argument("--dataset", default="dsprites")
    parser.add_argument("--resolution", type=int, default=None, help="default: 64 on CUDA, 32 on CPU")
    parser.add_argument("--precision", default="auto", help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="default: 1 8 32 128 (CUDA), 1 2 4 8 (CPU)")
    parser.add_argument("--procs", type=int, nargs="+", default=None, help="default: 4 8 (CUDA), the cores (CPU)")
    parser.add_argument("--backends", nargs="+", default=["vmap"], choices=["vmap", "loop"])
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per route (default 10, CPU 3)")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per route and round (default 3, CPU 4)")
    parser.add_argument("--chunk", type=int, default=None, help="steps between device syncs (default 20, CPU 2)")
    parser.add_argument("--rounds", type=int, default=None, help="round-robin repeats, median kept (default 1, CPU 2)")
    parser.add_argument("--no-conv-compare", action="store_true", help="skip the vmap vs grouped-conv table")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    try:
        device = resolve_device(args.device)
    except ValueError as e:  # cuda asked for where there is none: one line
        raise SystemExit(f"--device: {str(e).split(': ', 1)[-1]}") from None
    cpu = device.type == "cpu"
    args.device = device.type
    args.resolution = args.resolution or (32 if cpu else 64)
    args.ks = args.ks or ([1, 2, 4, 8] if cpu else [1, 8, 32, 128])
    args.procs = args.procs or ([os.cpu_count() or 1] if cpu else [4, 8])
    args.warmup = args.warmup or (3 if cpu else 10)
    args.seconds = args.seconds or (4.0 if cpu else 3.0)
    args.chunk = args.chunk or (2 if cpu else 20)
    args.rounds = args.rounds or (2 if cpu else 1)
    if args.arch in ("mlp", "linear") and args.dataset == "gaussian":
        raise SystemExit("use an image dataset")

    name = torch.cuda.get_device_name(device) if not cpu else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    flops = flops_per_image(args, device)
    plan = routes(args, device)
    dataset = make_dataset(args.dataset, device, resolution=args.resolution)  # once, shared by in-process routes
    figures: dict[str, list[float]] = {label: [] for label, _, _ in plan}
    per_cpu: dict[str, list[float]] = {label: [] for label, _, _ in plan}
    captured: dict[str, bool | None] = {}
    memory: dict[str, float] = {}  # CUDA: peak bytes per member (model, Adam, activations, graph pool, eval)
    estimate = training_memory_bytes(make_config(args, 0, None), tuple(dataset.example_shape))  # what auto plans with
    for _ in range(args.rounds):
        for label, spec, procs in plan:
            try:
                if procs:
                    rate, cpu_rate, cap = run_processes(spec, procs)
                else:
                    if not cpu:
                        sync(device)
                        torch.cuda.reset_peak_memory_stats(device)
                        resident = torch.cuda.memory_allocated(device)  # the shared dataset
                    route = Route(spec, dataset)
                    route.warm_up(spec["warmup"])
                    (rate, cpu_rate), cap = route.images_per_s(spec["seconds"], spec["chunk"]), route.captured
                    del route
                    if not cpu:
                        members = len(spec["configs"])
                        memory[label] = (torch.cuda.max_memory_allocated(device) - resident) / members
                        torch.cuda.empty_cache()
            except Exception as e:  # noqa: BLE001 — one route failing (out of memory, a worker, cuDNN) spoils only its row
                print(f"  {label}: failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                      file=sys.stderr, flush=True)  # fmt: skip
                rate, cpu_rate, cap = float("nan"), float("nan"), None
                if not cpu:
                    torch.cuda.empty_cache()
            figures[label].append(rate)
            per_cpu[label].append(cpu_rate)
            captured[label] = cap
            print(f"  {label}: {rate:,.0f} images/s, {cpu_rate:,.0f} per CPU-s", file=sys.stderr, flush=True)
    if cpu:
        mm = {"fp32": matmul_rate(device, torch.float32, 2048), "bf16": matmul_rate(device, torch.bfloat16, 1024, 2)}
        reference = "fp32"
    else:
        mm = {"bf16": matmul_rate(device, torch.bfloat16, 8192), "fp32": matmul_rate(device, torch.float32, 8192)}
        reference = "bf16"

    convs = {}
    if args.arch == "burgess" and not args.no_conv_compare:
        for k in args.ks:
            convs[k] = conv_stack_comparison(args, device, k)
            print(f"  conv stack K={k}: {convs[k]}", file=sys.stderr, flush=True)
    rows = []
    for label, _, procs in plan:
        rate = statistics.median(figures[label])
        rows.append({"route": label, "images_per_s": rate, "images_per_cpu_s": statistics.median(per_cpu[label]),
                     "flop_per_s": rate * flops,
                     "matmul_share": rate * flops / mm[reference], "graph_captured": captured[label],
                     "peak_bytes_per_member": memory.get(label),
                     "rounds": figures[label]})  # fmt: skip
    loaded = cpu and os.getloadavg()[0] > (os.cpu_count() or 1) + 0.5
    # on a machine other processes load, P processes get more of the cores than one: compare per CPU-second then
    by = {r["route"]: r["images_per_cpu_s" if loaded else "images_per_s"] for r in rows}
    verdicts = []
    if cpu:
        base = by[f"{args.procs[-1]} procs"]
        for k in args.ks:
            if k >= (os.cpu_count() or 1):
                for backend in args.backends:
                    label = f"cohort K={k}" + (f" ({backend})" if len(args.backends) > 1 else "")
                    what = " per CPU-second" if loaded else ""
                    verdicts.append((f"{label} ≥ {args.procs[-1]} trials one per core{what}", by[label] / base,
                                     by[label] >= base))  # fmt: skip
    else:
        procs_best = max(v for key, v in by.items() if "procs" in key)
        cohort_best_label = max((key for key in by if key.startswith("cohort")), key=lambda key: by[key])
        cohort_best = by[cohort_best_label]
        share = cohort_best * flops / mm["bf16"]
        verdicts.append((f"{cohort_best_label} ≥ {TARGET_VS_PROCS:g}× best P-process route", cohort_best / procs_best,
                         cohort_best >= TARGET_VS_PROCS * procs_best))  # fmt: skip
        verdicts.append((f"{cohort_best_label} ≥ {TARGET_MATMUL_SHARE:.0%} of the bf16 matmul rate", share,
                         share >= TARGET_MATMUL_SHARE))  # fmt: skip
    paper = paper_frontier_minutes(by)
    result = {"device": name, "torch": torch.__version__, "arch": args.arch, "dataset": args.dataset,
              "resolution": args.resolution, "batch_per_model": BATCH, "precision": args.precision,
              "train_flop_per_image": flops, "matmul_flop_per_s": mm, "estimated_bytes_per_member": estimate, "reference": reference, "routes": rows,
              "verdicts": [{"check": c, "ratio": r, "pass": p} for c, r, p in verdicts], "conv_stack": convs,
              "paper_frontier_training_minutes": None if cpu else paper,
              "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return
    print(f"device: {name} (torch {torch.__version__}); {args.arch} at {args.resolution} px, batch {BATCH} per model, "
          f"precision {args.precision}; {flops / 1e6:.1f} MFLOP per training image")  # fmt: skip
    print("matmul: " + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in mm.items()) + f" (reference: {reference})")
    print(f"{'route':<28} {'images/s':>12} {'per CPU-s':>10} {'GFLOP/s':>10} {'of matmul':>10}  graph")
    for r in rows:
        graph = {None: "", True: "captured", False: "FELL BACK"}[r["graph_captured"]]
        print(f"{r['route']:<28} {r['images_per_s']:>12,.0f} {r['images_per_cpu_s']:>10,.0f} "
              f"{r['flop_per_s'] / 1e9:>10,.1f} {r['matmul_share']:>10.2%}  {graph}")  # fmt: skip
    if memory:
        print(f"device memory per member (peak over the route, fp32 estimate {estimate / 2**20:.0f} MiB — what "
              "search.cohort: auto plans with): " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in memory.items()))
    if loaded:
        print(f"WARNING: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other processes held the "
              "cores; wall-clock figures favour the multi-process route, verdicts use images per CPU-second")
    if convs:
        print("Burgess conv layers, forward + backward, K members: vmap over stacked weights vs grouped convolutions")
        for k, c in convs.items():
            print(f"  K={k:<4} vmap {c['vmap_s'] * 1e3:8.2f} ms   grouped {c['grouped_s'] * 1e3:8.2f} ms   "
                  f"vmap/grouped {c['vmap_s'] / c['grouped_s']:.2f}   outputs differ by ≤ {c['max_rel_diff']:.1e}")
    for check, ratio, ok in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {check}: {ratio:.3g}")
    if not cpu and paper:
        label, minutes = paper
        print(f"the paper-length frontier (sweeps/configs/dsprites_paper_gpu.yaml: {PAPER_MODELS} models × "
              f"{PAPER_STEPS:,} steps × batch {BATCH}) at the {label} rate: {minutes:.0f} min of training, "
              f"before evaluations (aim: {PAPER_AIM_MINUTES} min on an H200)")  # fmt: skip
    print(f"load average: {result['load_average']}")


if __name__ == "__main__":
    main()
