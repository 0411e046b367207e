#!/usr/bin/env python
"""Wall time of each disentanglement metric at the ``fast`` and ``full`` presets, on a Burgess β-VAE over dSprites.

Builds dSprites (procedural, ``--resolution`` px) and a ``burgess`` model with 10 latents, trains it for
``--train-steps`` steps (0, the default: untrained), then standardises the encoder means (the output layer rescaled so
that each mean has unit standard deviation over the data: an untrained encoder's means barely move, and the FactorVAE
score would prune every dimension and skip its votes), and times
``compute_metrics([name], dataset, encode_means, preset)`` for each metric alone — what a sweep pays per evaluation —
printing each figure as it finishes. The count of examples each metric renders and encodes is printed with it.

``--project`` prints, after the fast preset, the full preset's time of MIG, SAP and the intervention scores
extrapolated linearly in the number of examples (their cost is encoding, and SAP's SVMs and MIG's histograms are
close to linear) — marked as a projection, not a measurement. DCI is not projected: a GBT's cost per tree grows less
than linearly with the points at these sizes.

    python benchmarks/metrics_cost.py [--resolution 64] [--device auto] [--presets fast,full] [--metrics mig,dci,...]
                                      [--train-steps 0] [--threads N] [--project] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

import torch

from bvae_core.evaluation import encode_means
from bvae_core.metrics import METRIC_NAMES, PRESETS, compute_metrics
from bvae_core.trainer import Trainer, resolve_device

LATENT_DIM, SEED = 10, 0


def examples_encoded(name: str, params: dict) -> int:
    """How many examples ``compute_metrics([name])`` renders and encodes with these parameters."""
    if name in ("mig",):
        return params["num_train"]
    if name in ("dci", "sap"):
        return params["num_train"] + params["num_test"]
    if name == "factorvae_score":
        return params["num_variance_estimate"] + params["batch_size"] * (params["num_train"] + params["num_eval"])
    return 2 * params["batch_size"] * (params["num_train"] + params["num_eval"])  # betavae_score: pairs


@torch.no_grad()
def standardise_means(model: torch.nn.Module, dataset, encode) -> None:
    """Rescale the encoder's output layer so that each mean has zero mean and unit std over 2,048 examples."""
    factors = dataset.sample_factors(2048, torch.Generator().manual_seed(SEED + 1)).to(dataset.device)
    means = encode(dataset.render(factors)).double()
    mu, std = means.mean(0), means.std(0).clamp_min(1e-12)
    layer = model.encoder.fc[-1]  # rows [0, latent_dim) give the means (VAE.encode: chunk(2))
    k = mu.numel()
    layer.weight[:k] /= std.to(layer.weight)[:, None]
    layer.bias[:k] = (layer.bias[:k] - mu.to(layer.bias)) / std.to(layer.bias)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolution", type=int, default=64, choices=(32, 64))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--presets", default="fast,full", help="comma-separated, in order (default fast,full)")
    ap.add_argument("--metrics", default=",".join(METRIC_NAMES), help="comma-separated (default: all)")
    ap.add_argument("--train-steps", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads on CPU")
    ap.add_argument("--encode-batch-size", type=int, default=512)
    ap.add_argument("--project", action="store_true", help="after fast, print the full preset's projected time")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line at the end")
    args = ap.parse_args(argv)
    presets = [p for p in args.presets.split(",") if p]
    names = [n for n in args.metrics.split(",") if n]
    for p in presets:
        if p not in PRESETS:
            ap.error(f"--presets: unknown preset {p!r}; expected {', '.join(PRESETS)}")
    for n in names:
        if n not in METRIC_NAMES:
            ap.error(f"--metrics: unknown metric {n!r}; expected {', '.join(METRIC_NAMES)}")
    try:
        device = resolve_device(args.device)
    except ValueError as e:  # cuda asked for where there is none: one line
        raise SystemExit(f"--device: {str(e).split(': ', 1)[-1]}") from None
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores, load average {load:.1f}", flush=True)  # fmt: skip
    start = time.perf_counter()
    config = {
        "name": "metrics-cost", "seed": SEED,
        "dataset": {"name": "dsprites", "resolution": args.resolution},
        "model": {"arch": "burgess", "latent_dim": LATENT_DIM, "likelihood": {"kind": "bernoulli"}},
        "train": {"steps": max(args.train_steps, 1), "batch_size": 64, "eval_every": max(args.train_steps, 1),
                  "device": str(device)},
    }  # fmt: skip
    trainer = Trainer(config)
    if args.train_steps > 0:
        trainer.fit(args.train_steps)
    model, dataset = trainer.model, trainer.dataset
    encode = functools.partial(encode_means, model, batch_size=args.encode_batch_size)
    standardise_means(model, dataset, encode)
    print(f"# dSprites {args.resolution} px + burgess ({args.train_steps} training steps): "
          f"{time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip

    # how many dimensions the FactorVAE prune keeps (with none, its votes are skipped and its time means nothing)
    factors = dataset.sample_factors(2048, torch.Generator().manual_seed(SEED)).to(dataset.device)
    means = encode(dataset.render(factors)).numpy()
    active = int((means.std(axis=0, ddof=1) >= 0.05).sum())
    print(f"# dimensions with std ≥ 0.05 (FactorVAE keeps them): {active} of {LATENT_DIM}", flush=True)

    rows = []
    print(f"{'preset':<6} {'metric':<16} {'seconds':>9} {'examples':>10} {'examples/s':>10}  value", flush=True)
    for preset in presets:
        for name in names:
            params = PRESETS[preset][name]
            sync(device)
            t0 = time.perf_counter()
            value = compute_metrics([name], dataset, encode, preset, seed=SEED, encode_batch_size=args.encode_batch_size)
            sync(device)
            seconds = time.perf_counter() - t0
            n = examples_encoded(name, params)
            shown = ", ".join(f"{k}={v:.3f}" for k, v in value.items())
            print(f"{preset:<6} {name:<16} {seconds:>9.1f} {n:>10,} {n / seconds:>10,.0f}  {shown}", flush=True)
            rows.append({"preset": preset, "metric": name, "seconds": seconds, "examples": n, **value})
        if preset == "fast" and args.project:
            for row in [r for r in rows if r["preset"] == "fast" and r["metric"] != "dci"]:
                name = row["metric"]
                scale = examples_encoded(name, PRESETS["full"][name]) / row["examples"]
                print(f"{'full':<6} {name:<16} {row['seconds'] * scale:>9.0f} "
                      f"{examples_encoded(name, PRESETS['full'][name]):>10,} {'':>10}  (projected ×{scale:.1f}, not measured)",
                      flush=True)  # fmt: skip
    if args.json:
        print(json.dumps({"device": str(device), "resolution": args.resolution, "train_steps": args.train_steps,
                          "active_dims": active, "rows": rows}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
