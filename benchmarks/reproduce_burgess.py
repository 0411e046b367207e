"""Burgess et al. 2018 ("Understanding disentangling in β-VAE") on dSprites, end to end, next to β-VAE.

    python benchmarks/reproduce_burgess.py --size cpu            # 32 px, short ramp: ~20 min on 2 quiet CPU cores
    python benchmarks/reproduce_burgess.py --size paper          # 64 px, the paper's schedule: a GPU job
    python benchmarks/reproduce_burgess.py --size cpu --seeds 0 --betas   # one capacity run only (smoke test)

Runs (each seed): the controlled-capacity objective with the paper's settings (Burgess model, C: 0 → 25 nats,
γ = 1000, Adam 5e-4, batch 64; §A.1–A.2) and β-VAE at β ∈ {1, 4, 16}. At every evaluation it records the held-out
rate taken apart (``kl/<i>``, ``mi/<i>``, ``mutual_info``, ``marginal_kl``) and the distortion; at the end MIG,
FactorVAE score and DCI (disentanglement_lib's definitions; the ``fast`` sample sizes for ``cpu``, ``full`` for
``paper``). It writes to ``--out``:

- ``fig3_capacity_seed<s>.png``: KL and I(x; z_i) per latent and the distortion over training (their Fig. 3), each
  latent labelled with the factor it encodes most (normalised discrete mutual information, as MIG);
- ``fig4_traversals_<run>.png``: traversals ordered by KL (their Fig. 4);
- ``results.json`` and, on stdout, a table: mean ± sd over seeds, and for the capacity runs the capacity C at which
  each factor's latent first carried 1 nat (the order in which factors come in: position first, then scale, then
  shape and orientation in the paper).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bvae_core import Trainer  # noqa: E402
from bvae_core.evaluation import MI_POINTS, encode_means  # noqa: E402
from bvae_core.trainer import resolve_device  # noqa: E402
from bvae_core.metrics.compute import compute_metrics  # noqa: E402
from bvae_core.metrics.utils import discrete_entropy, discrete_mutual_info, histogram_discretize  # noqa: E402

#: Burgess et al. 2018, §A.2: C ramped 0 → 25 nats over 100,000 iterations, γ = 1000; §A.1: Adam, lr 5e-4.
SIZES: dict[str, dict[str, Any]] = {
    "paper": {"resolution": 64, "steps": 300_000, "ramp": 100_000, "eval_every": 5_000, "n_eval": None,
              "preset": "full", "device": "auto"},  # fmt: skip
    "cpu": {"resolution": 32, "steps": 5_000, "ramp": 4_000, "eval_every": 500, "n_eval": 2_000, "preset": "fast",
            "device": "cpu"},  # fmt: skip
}
C_MAX, GAMMA, LR, BATCH = 25.0, 1000.0, 5.0e-4, 64
METRICS = ("mig", "factorvae_score", "dci")
ONSET_NATS = 1.0


def run_config(size: dict[str, Any], kind: str, seed: int) -> dict[str, Any]:
    """The train config of one run: ``kind`` is ``capacity`` or ``beta=<β>``."""
    if kind == "capacity":
        objective = {"schedule": {"kind": "linear_capacity", "c_max": C_MAX, "ramp_steps": size["ramp"], "gamma": GAMMA}}
    else:
        objective = {"beta": float(kind.split("=")[1]), "schedule": {"kind": "constant"}}
    return {
        "name": f"burgess-{kind}-s{seed}",
        "seed": seed,
        "dataset": {"name": "dsprites", "resolution": size["resolution"]},
        "model": {"arch": "burgess", "latent_dim": 10, "likelihood": {"kind": "bernoulli"}},
        "objective": objective,
        "train": {"steps": size["steps"], "batch_size": BATCH, "lr": LR, "eval_every": size["eval_every"],
                  "n_eval": size["n_eval"], "log_every": size["eval_every"], "device": size["device"],
                  **({"threads": 1} if size["device"] == "cpu" else {})},  # fmt: skip
    }


def latent_factors(trainer: Trainer, n: int = 5000) -> tuple[list[int], np.ndarray]:
    """For each latent, the factor it tells most about: argmax_j I(z_i; f_j)/H(f_j) over ``n`` held-out points
    (encoder means, 20 equal-width bins, as MIG); and that matrix."""
    data = trainer.dataset
    factors = data.test_factors[:n]
    codes = torch.cat([encode_means(trainer.model, data.render(f)) for f in factors.split(500)]).numpy()
    f = factors.cpu().numpy()
    mi = discrete_mutual_info(histogram_discretize(codes, 20), f) / np.maximum(discrete_entropy(f), 1e-12)[None]
    return mi.argmax(1).tolist(), mi


def one_run(size: dict[str, Any], kind: str, seed: int, out: str) -> dict[str, Any]:
    """Train one run and evaluate it (``size``: an entry of :data:`SIZES`, passed whole so that worker processes see
    the command line's overrides)."""
    trainer = Trainer(run_config(size, kind, seed))
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    while trainer.step < size["steps"]:
        trainer.fit(size["eval_every"])
        history.append(trainer.evaluate())
    seconds = time.perf_counter() - started
    encode = partial(encode_means, trainer.model)
    final = {**history[-1], **compute_metrics(METRICS, trainer.dataset, encode, preset=size["preset"], seed=seed)}
    assign, _ = latent_factors(trainer)
    names = trainer.dataset.factor_names
    k = trainer.model.latent_dim
    onset: dict[str, float | None] = {}
    if kind == "capacity":  # C(t) at which the latents of each factor first carried ONSET_NATS of KL together
        for j, name in enumerate(names):
            dims = [i for i in range(k) if assign[i] == j and final[f"kl/{i}"] > 0.5]
            hit = next((h for h in history if dims and sum(h[f"kl/{i}"] for i in dims) >= ONSET_NATS), None)
            onset[name] = None if hit is None else hit["capacity"]
    label = f"{kind}_seed{seed}"
    out_dir = Path(out)
    _figures(trainer, history, assign, names, label, kind, out_dir)
    print(f"  {label}: {seconds / 60:.1f} min, rate {final['rate']:.2f} nats, distortion {final['distortion']:.2f} nats",
          flush=True)  # fmt: skip
    return {"kind": kind, "seed": seed, "seconds": seconds, "final": final, "history": history,
            "latent_factor": [names[j] for j in assign], "onset_capacity": onset}  # fmt: skip


def _figures(trainer: Trainer, history: list[dict[str, float]], assign: list[int], names: tuple[str, ...],
             label: str, kind: str, out_dir: Path) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bvae_core.plots import traversals

    k = trainer.model.latent_dim
    kl = [history[-1][f"kl/{i}"] for i in range(k)]
    x = trainer.dataset.figure_batch(12, 0) if hasattr(trainer.dataset, "figure_batch") else next(trainer.dataset.test_batches(12))
    fig = traversals(trainer.model, trainer.likelihood, x[6:7], kl)
    fig.savefig(out_dir / f"fig4_traversals_{label}.png", dpi=110)
    plt.close(fig)
    if kind != "capacity":
        return
    steps = [h["step"] for h in history]
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for i in sorted(range(k), key=lambda i: -kl[i]):
        if kl[i] < 0.2:
            continue
        style = {"color": colours(assign[i]), "label": f"z{i} ({names[assign[i]]})"}
        axes[0].plot(steps, [h[f"kl/{i}"] for h in history], **style)
        axes[1].plot(steps, [h[f"mi/{i}"] for h in history], **style)
    axes[0].plot(steps, [h["capacity"] for h in history], "k--", label="C(t)")
    axes[0].plot(steps, [h["rate"] for h in history], "k:", label="rate")
    axes[1].plot(steps, [h["mutual_info"] for h in history], "k:", label="I(x; z)")
    axes[2].plot(steps, [h["distortion"] for h in history], "k-")
    axes[0].set_title("KL per latent (nats)", fontsize=9)
    ceiling = min(int(history[-1]["n_eval"]), MI_POINTS)
    axes[1].set_title(f"I(x; z_i) per latent (nats; I(x; z) ≤ ln {ceiling})", fontsize=9)
    axes[2].set_title("distortion (nats)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"controlled capacity, {label}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / f"fig3_{label}.png", dpi=110)
    plt.close(fig)


def _summary(results: list[dict[str, Any]]) -> str:
    cols = ["rate", "mutual_info", "marginal_kl", "distortion", "active_units", "mig", "factorvae_score",
            "dci/disentanglement"]  # fmt: skip
    lines = ["| run | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for kind in dict.fromkeys(r["kind"] for r in results):
        rs = [r for r in results if r["kind"] == kind]
        cells = []
        for c in cols:
            vals = [r["final"][c] for r in rs if c in r["final"] and not math.isnan(r["final"][c])]
            spread = f" ± {statistics.stdev(vals):.2g}" if len(vals) > 1 else ""  # one seed: no spread to show
            cells.append(f"{statistics.mean(vals):.3g}{spread}" if vals else "–")
        lines.append(f"| {kind} | {len(rs)} | " + " | ".join(cells) + " |")
    for r in results:
        if r["onset_capacity"]:
            order = sorted(((c, f) for f, c in r["onset_capacity"].items() if c is not None))
            never = [f for f, c in r["onset_capacity"].items() if c is None]
            came = ("factors come in at C = " + ", ".join(f"{f} {c:.1f}" for c, f in order)) if order else \
                "no factor came in"  # fmt: skip
            lines.append(f"\ncapacity seed {r['seed']}: {came}" + (f"; never: {', '.join(never)}" if never and order else
                                                                   f" ({', '.join(never)})" if never else ""))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--betas", type=float, nargs="*", default=[1.0, 4.0, 16.0], help="β-VAE runs; none: skip")
    ap.add_argument("--steps", type=int, help="override the size's training steps (the ramp scales with it)")
    ap.add_argument("--workers", type=int, default=2, help="runs in parallel (cpu size: one thread each)")
    ap.add_argument("--preset", choices=["fast", "full"], help="override the size's metric sample sizes")
    ap.add_argument("--out", default="runs/reproduce_burgess")
    args = ap.parse_args(argv)
    if args.steps:
        size = SIZES[args.size]
        size["ramp"] = max(1, round(size["ramp"] * args.steps / size["steps"]))
        size["eval_every"] = max(1, min(size["eval_every"], args.steps // 4))
        size["steps"] = args.steps
    if args.preset:
        SIZES[args.size]["preset"] = args.preset
    Path(args.out).mkdir(parents=True, exist_ok=True)
    kinds = ["capacity"] + [f"beta={b:g}" for b in args.betas]
    jobs = [(SIZES[args.size], kind, seed, args.out) for kind in kinds for seed in args.seeds]
    device = resolve_device(SIZES[args.size]["device"])
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")  # fmt: skip
    print(f"# {len(jobs)} runs of {SIZES[args.size]['steps']:,} steps on {device.type} ({device_name}), torch "
          f"{torch.__version__}; a line per finished run", flush=True)  # fmt: skip
    started = time.perf_counter()
    if args.workers > 1 and len(jobs) > 1 and SIZES[args.size]["device"] == "cpu":
        with mp.get_context("spawn").Pool(args.workers) as pool:
            results = pool.starmap(one_run, jobs)
    else:
        results = [one_run(*job) for job in jobs]
    wall = time.perf_counter() - started
    (Path(args.out) / "results.json").write_text(json.dumps({"size": args.size, "device": device_name, "wall_s": wall,
                                                             "runs": results}, indent=1))  # fmt: skip
    print(_summary(results))
    print(f"\n{len(results)} runs in {wall / 60:.1f} min wall (size {args.size}, on {device_name}); figures and "
          f"results.json in {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
