"""Figures of one trained model: reconstructions, latent traversals ordered by KL (Burgess et al. 2018, Fig. 4) and
the KL of each latent dimension. Each function returns a matplotlib Figure; :func:`save_model_plots` writes PNGs."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from .data.base import Dataset  # noqa: E402
from .models import VAE  # noqa: E402
from .objectives import Likelihood  # noqa: E402


def _image_grid(images: torch.Tensor, rows: int, cols: int, row_labels: list[str] | None = None,
                title: str = "") -> Figure:  # fmt: skip
    """``images [rows*cols, C, H, W]`` in [0, 1] as a grid: one mosaic drawn by a single ``imshow`` (one axes per
    image costs ~1 s for a 10×9 traversal grid; the mosaic ~0.1 s)."""
    images = images[: rows * cols].detach().float().clamp(0, 1).cpu()
    channels, height, width = images.shape[1:]
    pad = max(1, height // 16)
    mosaic = torch.ones(channels, rows * (height + pad) - pad, cols * (width + pad) - pad)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        mosaic[:, r * (height + pad) : r * (height + pad) + height, c * (width + pad) : c * (width + pad) + width] = images[i]
    picture = mosaic[0].numpy() if channels == 1 else mosaic.permute(1, 2, 0).numpy()
    fig, ax = plt.subplots(figsize=(cols * 0.9 + (0.8 if row_labels else 0), rows * 0.9 + (0.3 if title else 0)))
    ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (height + pad) + height / 2 for r in range(rows)] if row_labels else [],
                  row_labels or [], fontsize=8)  # fmt: skip
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


@torch.no_grad()
def reconstructions(model: VAE, likelihood: Likelihood, x: torch.Tensor, n: int = 8) -> Figure:
    """Top row: held-out inputs; bottom row: decoded means at the posterior means."""
    model.eval()
    x = x[:n]
    mu, _ = model.encode(x)
    recon = likelihood.mean(model.decode(mu).float())
    return _image_grid(torch.cat([x, recon]), 2, x.shape[0], ["input", "recon"], "reconstructions (held out)")


@torch.no_grad()
def traversals(model: VAE, likelihood: Likelihood, x: torch.Tensor, kl_per_dim: list[float], steps: int = 9,
               limit: float = 2.5) -> Figure:  # fmt: skip
    """One row per latent, ordered by decreasing KL: z_i swept over [−limit, limit] with the other latents at the
    posterior mean of one held-out example (Burgess et al. 2018, Fig. 4)."""
    model.eval()
    mu, _ = model.encode(x[:1])
    order = sorted(range(len(kl_per_dim)), key=lambda i: -kl_per_dim[i])
    values = torch.linspace(-limit, limit, steps, device=mu.device)
    z = mu.repeat(len(order) * steps, 1)
    for row, dim in enumerate(order):
        z[row * steps : (row + 1) * steps, dim] = values
    images = likelihood.mean(model.decode(z).float())
    labels = [f"z{d} {kl_per_dim[d]:.2f}" for d in order]
    return _image_grid(images, len(order), steps, labels, f"traversals z ∈ [−{limit}, {limit}], rows by KL (nats)")


def kl_per_dimension(kl_per_dim: list[float]) -> Figure:
    """Bar chart of each latent's mean KL in nats, sorted."""
    order = sorted(range(len(kl_per_dim)), key=lambda i: -kl_per_dim[i])
    fig, ax = plt.subplots(figsize=(max(3, 0.4 * len(order) + 1), 2.6))
    ax.bar(range(len(order)), [kl_per_dim[i] for i in order], color="tab:blue")
    ax.set_xticks(range(len(order)), [f"z{i}" for i in order], fontsize=7)
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"KL per latent (total {sum(kl_per_dim):.2f} nats)", fontsize=9)
    fig.tight_layout()
    return fig


def save_model_plots(model: VAE, likelihood: Likelihood, dataset: Dataset, metrics: dict[str, float],
                     out_dir: str | Path) -> list[Path]:  # fmt: skip
    """Write ``kl_per_dim.png`` and, for image data, ``reconstructions.png`` and ``traversals.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    kl = [metrics[f"kl/{i}"] for i in range(model.latent_dim)]
    figures = {"kl_per_dim.png": kl_per_dimension(kl)}
    if dataset.is_image:
        x = next(dataset.test_batches(16))
        figures["reconstructions.png"] = reconstructions(model, likelihood, x)
        figures["traversals.png"] = traversals(model, likelihood, x, kl)
    paths = []
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        paths.append(out_dir / name)
    model.train(was_training)
    return paths


def staircase(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The frontier drawn as the boundary of the region it dominates: (rate, distortion) points sorted by rate."""
    xs, ys = [], []
    for i, (x, y) in enumerate(sorted(points)):
        if i:
            xs.append(x)
            ys.append(ys[-1])
        xs.append(x)
        ys.append(y)
    return xs, ys


_MARKERS = {"constant": "o", "linear_capacity": "s", "warmup": "^", "free_bits": "D"}
_SCHEDULE_LABELS = {"constant": "β-VAE (constant β)", "linear_capacity": "controlled capacity (C ramp)",
                    "warmup": "KL warm-up", "free_bits": "free bits"}  # fmt: skip


def _spaced(labelled: list[dict], points: list[dict], min_gap: float = 0.06) -> list[dict]:
    """The points of ``labelled`` (sorted by rate) whose labels do not crowd an already kept one: a greedy pass that
    keeps a point only if it lies ``min_gap`` (a fraction of the plotted ranges) from every kept point."""
    if not labelled:
        return []
    span_r = (max(p["rate"] for p in points) - min(p["rate"] for p in points)) or 1.0
    span_d = (max(p["distortion"] for p in points) - min(p["distortion"] for p in points)) or 1.0
    kept: list[dict] = []
    for p in labelled:
        if all(math.hypot((p["rate"] - q["rate"]) / span_r, (p["distortion"] - q["distortion"]) / span_d) >= min_gap
               for q in kept):  # fmt: skip
            kept.append(p)
    return kept


def rate_distortion_figure(points: list[dict], *, color_by: str = "beta", bound: tuple[list[float], list[float]] | None = None,
                           entropy: float | None = None, title: str = "") -> Figure:  # fmt: skip
    """The R-D plane of a sweep: every point coloured by log β (or ``color_by``), marker by schedule kind, the
    frontier as a staircase with β labels, and where known the Shannon R(D) curve (``bound``: rates, distortions)
    or the line D = H − R for discrete data of entropy H nats.

    ``points``: dicts with ``rate``, ``distortion``, ``on_frontier``, ``schedule`` and the ``color_by`` key."""
    from matplotlib.colors import LogNorm, Normalize

    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    values = [p.get(color_by) for p in points]
    known = [v for v in values if v is not None]
    positive = bool(known) and min(known) > 0
    norm = (LogNorm if color_by == "beta" and positive else Normalize)(
        vmin=min(known) if known else 1, vmax=max(known) if known else 1)  # fmt: skip
    cmap = plt.get_cmap("viridis")
    handles = []
    for kind in sorted({p.get("schedule") or "?" for p in points}):
        group = [p for p in points if (p.get("schedule") or "?") == kind]
        colors = [cmap(norm(p[color_by])) if p.get(color_by) is not None else (0.6, 0.6, 0.6, 1) for p in group]
        marker = _MARKERS.get(kind, "P")
        ax.scatter([p["rate"] for p in group], [p["distortion"] for p in group], c=colors,
                   marker=marker, s=46, edgecolors="black", linewidths=0.4, zorder=3)  # fmt: skip
        # the legend tells the schedules apart by marker only (the colour belongs to the colour bar)
        handles.append(Line2D([], [], ls="", marker=marker, markersize=7, markerfacecolor="white",
                              markeredgecolor="black", label=_SCHEDULE_LABELS.get(kind, kind)))  # fmt: skip
    front = sorted((p for p in points if p.get("on_frontier")), key=lambda p: p["rate"])
    if front:
        xs, ys = staircase([(p["rate"], p["distortion"]) for p in front])
        (line,) = ax.plot(xs, ys, color="crimson", lw=1.4, zorder=2, label="frontier")
        handles.append(line)
        for p in _spaced([p for p in front if p.get("beta") is not None], points):
            ax.annotate(f"β={p['beta']:.3g}", (p["rate"], p["distortion"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)  # fmt: skip
    if bound is not None:
        # the bound over the rates the points span (and a little more), so the points are not squeezed into a corner
        top = 1.5 * max((p["rate"] for p in points), default=1.0) + 0.5
        keep = [(r, d) for r, d in zip(*bound) if r <= top]
        handles += ax.plot([r for r, _ in keep], [d for _, d in keep], color="black", ls="--", lw=1, label="Shannon R(D)", zorder=1)
    if entropy is not None and points:
        top = max(p["rate"] for p in points) * 1.05 + 1e-9
        r = [0.0, min(entropy, top)]
        handles += ax.plot(r, [entropy - v for v in r], color="gray", ls=":", lw=1, label=f"D = H − R (H = {entropy:.2f} nats)")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label=("log-scaled " if isinstance(norm, LogNorm) else "") + color_by)
    ax.set_xlabel("rate (nats per example)")
    ax.set_ylabel("distortion (nats per example)")
    ax.set_title(title or "rate-distortion plane", fontsize=10)
    ax.legend(handles=handles, fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def kl_against_capacity(history: list[dict]) -> Figure:
    """Held-out KL (rate) against the capacity target C(t) over training (Burgess et al. 2018, Fig. 3)."""
    fig, ax = plt.subplots(figsize=(4.5, 3.0))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["rate"] for h in history], marker="o", label="KL (held out)")
    ax.plot(steps, [h["capacity"] for h in history], ls="--", label="C(t)")
    ax.set_xlabel("step")
    ax.set_ylabel("nats")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def latent_factor_correlation(codes, factors, factor_names: tuple[str, ...]) -> Figure:
    """Pearson correlation of each latent mean with each ground-truth factor (index), as a heat map."""
    import numpy as np

    codes, factors = np.asarray(codes, dtype=float), np.asarray(factors, dtype=float)
    k, n_factors = codes.shape[1], factors.shape[1]
    corr = np.zeros((k, n_factors))
    for i in range(k):
        for j in range(n_factors):
            if codes[:, i].std() > 0 and factors[:, j].std() > 0:
                corr[i, j] = np.corrcoef(codes[:, i], factors[:, j])[0, 1]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * n_factors, 1.0 + 0.35 * k))
    image = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(n_factors), factor_names, fontsize=8, rotation=30)
    ax.set_yticks(range(k), [f"z{i}" for i in range(k)], fontsize=8)
    for i in range(k):
        for j in range(n_factors):
            ax.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="Pearson r")
    ax.set_title("latent means vs factors", fontsize=9)
    fig.tight_layout()
    return fig
