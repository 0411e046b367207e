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
from matplotlib.ticker import LogFormatter  # noqa: E402

from .config import schedule_class  # noqa: E402
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


def kl_per_dimension(kl_per_dim: list[float], mi_per_dim: list[float] | None = None) -> Figure:
    """Bar chart of each latent's mean KL in nats, sorted; with ``mi_per_dim`` each KL bar has its mutual
    information I(x; z_i) beside it (``mi/<i>``), so a latent whose KL encodes nothing (KL ≫ MI) stands out."""
    order = sorted(range(len(kl_per_dim)), key=lambda i: -kl_per_dim[i])
    fig, ax = plt.subplots(figsize=(max(4 if mi_per_dim else 3, (0.6 if mi_per_dim else 0.4) * len(order) + 1), 2.6))
    pos = list(range(len(order)))
    width = 0.4 if mi_per_dim else 0.8
    shift = width / 2 if mi_per_dim else 0.0
    ax.bar([p - shift for p in pos], [kl_per_dim[i] for i in order], width, color="tab:blue", label="KL")
    title = f"KL per latent (total {sum(kl_per_dim):.2f} nats)"
    if mi_per_dim:
        ax.bar([p + shift for p in pos], [mi_per_dim[i] for i in order], width, color="tab:orange",
               label="I(x; z_i)")  # fmt: skip
        ax.legend(fontsize=7, frameon=False)
        title = f"KL and I(x; z_i) per latent (rate {sum(kl_per_dim):.2f} nats)"
    ax.set_xticks(pos, [f"z{i}" for i in order], fontsize=7)
    ax.set_ylabel("nats")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


#: Held-out examples shown by the reconstructions (4 of each dSprites shape) and the seed that picks them: fixed, so
#: every trial of a sweep shows the same examples and their figures compare side by side.
FIGURE_EXAMPLES = 12
FIGURE_SEED = 0


#: the figures :func:`save_model_plots` may write
MODEL_FIGURES = ("kl_per_dim.png", "reconstructions.png", "traversals.png")


def save_model_plots(model: VAE, likelihood: Likelihood, dataset: Dataset, metrics: dict[str, float],
                     out_dir: str | Path) -> list[Path]:  # fmt: skip
    """Write ``kl_per_dim.png`` and, for image data, ``reconstructions.png`` and ``traversals.png``.

    Both image figures use :meth:`Dataset.figure_batch` (``FIGURE_EXAMPLES`` held-out examples spread over every
    factor, seed ``FIGURE_SEED``); the traversals start from its middle example."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    kl = [metrics[f"kl/{i}"] for i in range(model.latent_dim)]
    mi = [metrics[f"mi/{i}"] for i in range(model.latent_dim)] if "mi/0" in metrics else None
    figures = {"kl_per_dim.png": kl_per_dimension(kl, mi)}
    if dataset.is_image:
        x = dataset.figure_batch(FIGURE_EXAMPLES, FIGURE_SEED)
        middle = x.shape[0] // 2
        figures["reconstructions.png"] = reconstructions(model, likelihood, x, n=x.shape[0])
        figures["traversals.png"] = traversals(model, likelihood, x[middle : middle + 1], kl)
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


#: The caption of a figure whose title reports the hypervolume ("HV …").
HV_CAPTION = ("HV = hypervolume: the area (nats²) of the plane that the completed trials dominate,\n"
              "up to the sweep's reference point (larger is better)")  # fmt: skip


def point_labels(points: list[dict]) -> list[str | None]:
    """What names each point's setting: ``C=…`` for a capacity schedule (with ``γ=…`` where γ differs between
    the capacity points), else ``β=…``; None when the point has neither."""
    gammas = {p.get("gamma") for p in points if p.get("c_max") is not None and p.get("gamma") is not None}
    labels: list[str | None] = []
    for p in points:
        if p.get("c_max") is not None:
            gamma = f", γ={p['gamma']:.4g}" if len(gammas) > 1 and p.get("gamma") is not None else ""
            labels.append(f"C={p['c_max']:.3g}{gamma}")
        elif p.get("beta") is not None:
            labels.append(f"β={p['beta']:.3g}")
        else:
            labels.append(None)
    return labels


def entropy_label(entropy: float) -> str:
    """The legend entry of the line D = H − R."""
    return f"D = H − R (H = {entropy:.2f} nats)"


def floor_label(floor: float) -> str:
    """The legend entry of the distortion floor E Σ h(xᵢ) (see ``sweeps.frontier_plots.reference_curves``)."""
    return f"D ≥ {floor:.2f} (pixel entropy)"


class _PlainLogFormatter(LogFormatter):
    """matplotlib's choice of which log-axis ticks to label (fewer minor ones over wider ranges), each as a plain
    number: 0.2, 3, 100."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""


def rate_distortion_figure(points: list[dict], *, color_by: str = "beta", bound: tuple[list[float], list[float]] | None = None,
                           entropy: float | None = None, floor: float | None = None,
                           title: str = "") -> Figure:  # fmt: skip
    """The R-D plane of a sweep: every point coloured by log β (or ``color_by``), marker by schedule kind, the
    frontier as a staircase, its points labelled β=… (or C=… for a capacity schedule, see :func:`point_labels`),
    and where known the Shannon R(D) curve (``bound``: rates, distortions), the line D = H − R for
    discrete data of entropy H nats, and a distortion ``floor`` no model can go below. A title that reports
    "HV" gets :data:`HV_CAPTION` under the figure.

    ``points``: dicts with ``rate``, ``distortion``, ``on_frontier``, ``schedule`` and the ``color_by`` key (and
    ``c_max``, ``gamma`` for capacity schedules)."""
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
        style = schedule_class(kind)  # each schedule kind says how it is drawn (bvae_core.config)
        marker = style.marker
        ax.scatter([p["rate"] for p in group], [p["distortion"] for p in group], c=colors,
                   marker=marker, s=46, edgecolors="black", linewidths=0.4, zorder=3)  # fmt: skip
        # the legend tells the schedules apart by marker only (the colour belongs to the colour bar)
        handles.append(Line2D([], [], ls="", marker=marker, markersize=7, markerfacecolor="white",
                              markeredgecolor="black", label=style.label if style.label != "?" else kind))  # fmt: skip
    front = sorted((p for p in points if p.get("on_frontier")), key=lambda p: p["rate"])
    if front:
        xs, ys = staircase([(p["rate"], p["distortion"]) for p in front])
        (line,) = ax.plot(xs, ys, color="crimson", lw=1.4, zorder=2, label="frontier")
        handles.append(line)
    # frontier points first, then the capacity points off it (their colour says nothing: they have no β)
    labels = dict(zip(map(id, points), point_labels(points)))
    candidates = front + sorted((p for p in points if not p.get("on_frontier") and p.get("c_max") is not None),
                                key=lambda p: p["rate"])  # fmt: skip
    for p in _spaced([p for p in candidates if labels.get(id(p))], points):
        ax.annotate(labels[id(p)], (p["rate"], p["distortion"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if bound is not None:
        # the bound over the rates the points span (and a little more), so the points are not squeezed into a corner
        top = 1.5 * max((p["rate"] for p in points), default=1.0) + 0.5
        keep = [(r, d) for r, d in zip(*bound) if r <= top]
        handles += ax.plot([r for r, _ in keep], [d for _, d in keep], color="black", ls="--", lw=1, label="Shannon R(D)", zorder=1)
    if entropy is not None and points:
        top = max(p["rate"] for p in points) * 1.05 + 1e-9
        r = [0.0, min(entropy, top)]
        handles += ax.plot(r, [entropy - v for v in r], color="gray", ls=":", lw=1, label=entropy_label(entropy))
    if floor is not None and points:
        handles.append(ax.axhline(floor, color="gray", ls="-.", lw=1, label=floor_label(floor)))
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    bar = fig.colorbar(sm, ax=ax, label=("log-scaled " if isinstance(norm, LogNorm) else "") + color_by)
    if isinstance(norm, LogNorm):  # β as plain numbers (2, 3, 0.5), not matplotlib's 2 × 10^0
        bar.ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
        bar.ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))  # thinned over wide ranges
    ax.set_xlabel("rate (nats per example)")
    ax.set_ylabel("distortion (nats per example)")
    ax.set_title(title or "rate-distortion plane", fontsize=10)
    ax.legend(handles=handles, fontsize=7, loc="best")  # where it hides the fewest points
    ax.grid(alpha=0.3)
    if "HV" in (title or ""):
        fig.text(0.01, 0.01, HV_CAPTION, fontsize=7, color="dimgray")
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    else:
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
