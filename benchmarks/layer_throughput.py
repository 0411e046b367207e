#!/usr/bin/env python
"""Where the Burgess model's training FLOP/s go, layer by layer: each conv / transposed conv of
``bvae_core.models`` (Burgess et al. 2018, §A.1) timed alone — forward + backward, batch 64, channels_last as the
Trainer runs it, the first layer without an input gradient as in training — with its FLOPs counted by
``FlopCounterMode``, over the fp32 matmul rate torch reaches in the same run. It also times the same layer written
as one GEMM around ``unfold``/``fold`` (im2col/col2im), the usual rewrite when a library kernel is slow.

It explains ``trainer_throughput.py``'s 32 px figure: at 32 px the single-channel first and last layers and the
2×2/4×4 layers are small problems on which oneDNN runs far below the matmul rate, and the im2col rewrite is slower
still on CPU.

    python benchmarks/layer_throughput.py [--resolution 32|64] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_throughput import matmul_rate  # noqa: E402

from bvae_core.models import build_model  # noqa: E402

BATCH = 64


def conv_as_gemm(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` as unfold (im2col) + one GEMM, channels_last out."""
    n, _, h, w = x.shape
    (k, _), (s, _), (p, _) = layer.kernel_size, layer.stride, layer.padding
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    cols = F.unfold(x, k, padding=p, stride=s).transpose(1, 2).reshape(n * ho * wo, -1)
    out = torch.addmm(layer.bias, cols, layer.weight.reshape(layer.out_channels, -1).t())
    return out.view(n, ho, wo, -1).permute(0, 3, 1, 2)


def deconv_as_gemm(layer: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` as one GEMM + fold (col2im)."""
    n, c, h, w = x.shape
    (k, _), (s, _), (p, _) = layer.kernel_size, layer.stride, layer.padding
    cols = x.permute(0, 2, 3, 1).reshape(n, h * w, c) @ layer.weight.reshape(c, -1)
    size = ((h - 1) * s - 2 * p + k, (w - 1) * s - 2 * p + k)
    return F.fold(cols.transpose(1, 2), size, kernel_size=k, stride=s, padding=p) + layer.bias.view(1, -1, 1, 1)


def conv_layers(resolution: int) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(name, layer, input shape) for every conv layer of the Burgess model at this resolution."""
    model = build_model("burgess", (1, resolution, resolution), 10)
    found: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: found.append((name, m, tuple(i[0].shape))))
             for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]  # fmt: skip
    with torch.no_grad():
        model(torch.zeros(BATCH, 1, resolution, resolution))
    for h in hooks:
        h.remove()
    return found


def median_ms(fn: Callable[[], Any], reps: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def bench_layer(layer: nn.Module, shape: tuple[int, ...], reps: int) -> dict[str, Any]:
    layer = layer.to(memory_format=torch.channels_last)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_(shape[1] > 1)
    grad = torch.randn_like(layer(x))
    alternative = conv_as_gemm if isinstance(layer, nn.Conv2d) else deconv_as_gemm

    def step(forward: Callable[[], torch.Tensor]) -> Callable[[], None]:
        return lambda: forward().backward(grad)

    with FlopCounterMode(display=False) as counter:
        step(lambda: layer(x))()
    flops = counter.get_total_flops()
    native = median_ms(step(lambda: layer(x)), reps)
    gemm = median_ms(step(lambda: alternative(layer, x)), reps)
    with torch.no_grad():
        error = float((alternative(layer, x) - layer(x)).abs().max())
    return {"in": list(shape), "mflop": flops / 1e6, "native_ms": native, "gemm_ms": gemm,
            "native_gflops": flops / native / 1e6, "gemm_max_abs_diff": error}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--resolution", type=int, default=32, choices=[32, 64])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--reps", type=int, default=50, help="timings per layer and variant (median)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    peak = matmul_rate(torch.device("cpu"), 2048, 10)
    rows = [{"layer": name, **bench_layer(layer, shape, args.reps)} for name, layer, shape in conv_layers(args.resolution)]
    total_flops, total_ms = sum(r["mflop"] for r in rows), sum(r["native_ms"] for r in rows)
    report = {"resolution": args.resolution, "threads": args.threads, "batch": BATCH, "matmul_gflops": peak / 1e9,
              "layers": rows, "conv_mflop": total_flops, "conv_ms": total_ms}  # fmt: skip
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"Burgess conv layers at {args.resolution} px, batch {BATCH}, {args.threads} threads, channels_last, "
          f"forward + backward; fp32 matmul 2048²: {peak / 1e9:.1f} GFLOP/s; torch {torch.__version__}")  # fmt: skip
    print(f"{'layer':22s} {'input':18s} {'MFLOP':>7s} {'ms':>7s} {'GFLOP/s':>8s} {'of matmul':>9s} {'im2col ms':>9s}")
    for r in rows:
        print(f"{r['layer']:22s} {'×'.join(map(str, r['in'])):18s} {r['mflop']:7.1f} {r['native_ms']:7.3f} "
              f"{r['native_gflops']:8.1f} {r['native_gflops'] / (peak / 1e9):9.0%} {r['gemm_ms']:9.3f}")  # fmt: skip
    rate = total_flops / total_ms  # MFLOP per ms = GFLOP/s
    print(f"{'all conv layers':41s} {total_flops:7.1f} {total_ms:7.3f} {rate:8.1f} {rate / (peak / 1e9):9.0%} "
          f"{sum(r['gemm_ms'] for r in rows):9.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
