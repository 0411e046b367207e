"""The R-D figure of a sweep as PNG (matplotlib) and as an interactive HTML page (Plotly, self-contained: no
network needed to view it) whose points show their trial, β, latent size and schedule on hover."""

from __future__ import annotations

import io
import math
from typing import Any

from bvae_core.config import TrainConfig, schedule_class
from bvae_core.plots import (
    HV_CAPTION,
    entropy_label,
    floor_label,
    point_labels,
    rate_distortion_figure,
    staircase,
)


def reference_curves(base: TrainConfig) -> dict[str, Any]:
    """What the data bounds the plane with (keyword arguments of :func:`png_bytes` and :func:`html_page`): the
    Shannon R(D) curve for a ``gaussian`` source (in the nats of the Gaussian likelihood: D = SSE/(2σ²) +
    d/2·ln 2πσ²); with a Bernoulli likelihood on dSprites or blobs, the line D = H − R where the images are binary
    (dSprites at 64 px) and the floor D ≥ E Σ h(xᵢ) where pixels take values inside (0, 1) (dSprites at 32 px,
    blobs)."""
    data = base.dataset
    if data.name == "gaussian" and base.model.likelihood.kind == "gaussian":
        from bvae_core.data import water_filling

        sigma, lam = base.model.likelihood.sigma, data.eigenvalues
        const = 0.5 * len(lam) * math.log(2 * math.pi * sigma**2)
        thetas = [min(lam) * 0.02 * (max(lam) * 50 / (min(lam) * 0.02)) ** (i / 199) for i in range(200)]
        curve = [water_filling(lam, t) for t in thetas]
        return {"bound": ([r for r, _ in curve], [d / (2 * sigma**2) + const for _, d in curve])}
    if data.name in ("dsprites", "blobs") and base.model.likelihood.kind == "bernoulli":
        stats = _image_statistics(data)
        if stats is None:
            return {}
        if stats.pixel_entropy == 0:
            # binary images: the distortion is −log p(x|z) of discrete data, so D ≥ H(X|Z) ≥ H − I(x; z) ≥ H − R
            return {"entropy": stats.entropy}
        # Pixels in (0, 1) (dSprites at 32 px is the 64 px image 2×2-average-pooled; blobs are Gaussian): the
        # Bernoulli cross-entropy of such a pixel is h(x) + KL(x ‖ p) ≥ h(x), so D ≥ the grid's mean Σ h(xᵢ) at any
        # rate; it is no likelihood of discrete data and D = H − R no bound. (The bound that the rate does give,
        # 4·D ≥ H − R + E Σ ln C(4, 4xᵢ) at 32 px, lies below that floor everywhere: 9.48 nats at R = 0.)
        return {"floor": stats.pixel_entropy}
    return {}


def _image_statistics(data):
    """The grid's :class:`~bvae_core.data.base.ImageStatistics`: dSprites' are constants (counted once over its
    737,280 images); a blobs grid is rendered (≤ 100,000 images, well under a second per 1,000)."""
    if data.name == "dsprites":
        from bvae_core.data.dsprites import IMAGE_STATISTICS

        return IMAGE_STATISTICS.get(data.resolution)
    from bvae_core.data import make_dataset

    dataset = make_dataset(data.name, "cpu", **{**data.model_dump(exclude={"name"}), "n_test": 1})
    return dataset.image_statistics() if dataset.num_combinations <= 100_000 else None


def png_bytes(points: list[dict], title: str, color_by: str = "beta", **curves: Any) -> bytes:
    import matplotlib.pyplot as plt

    fig = rate_distortion_figure(points, color_by=color_by, title=title, **curves)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def html_page(points: list[dict], title: str, color_by: str = "beta", bound=None, entropy: float | None = None,
              floor: float | None = None) -> str:  # fmt: skip
    import plotly.graph_objects as go

    fig = go.Figure()
    values = [p.get(color_by) for p in points if p.get(color_by) is not None]
    log_color = color_by == "beta" and values and min(values) > 0
    cmin, cmax = (None, None)
    if values:
        scaled = [math.log10(v) if log_color else v for v in values]
        cmin, cmax = min(scaled), max(scaled)
    first_scale = True
    for kind in sorted({p.get("schedule") or "?" for p in points}):
        for colored in (True, False):
            group = [p for p in points if (p.get("schedule") or "?") == kind and (p.get(color_by) is not None) == colored]
            if not group:
                continue
            hover = [f"trial {p['trial_id']}<br>β = {p.get('beta')}<br>latent = {p.get('latent_dim')}<br>"
                     f"schedule = {kind}" + (f" (C max {p['c_max']:.3g}" + (f", γ {p['gamma']:.3g}" if p.get("gamma") is not None else "") + ")"
                                             if p.get("c_max") is not None else "")
                     + f"<br>rate = {p['rate']:.4g} nats<br>distortion = {p['distortion']:.4g} nats"
                     + ("<br><b>on the frontier</b>" if p.get("on_frontier") else "") for p in group]  # fmt: skip
            marker = {"symbol": schedule_class(kind).symbol, "size": 10, "line": {"width": 0.5, "color": "black"}}
            if colored:
                marker.update(color=[math.log10(p[color_by]) if log_color else p[color_by] for p in group],
                              colorscale="Viridis", cmin=cmin, cmax=cmax, showscale=first_scale,
                              colorbar={"title": f"log10 {color_by}" if log_color else color_by})  # fmt: skip
                first_scale = False
            else:
                marker["color"] = "lightgray"
            fig.add_trace(go.Scatter(x=[p["rate"] for p in group], y=[p["distortion"] for p in group],
                                     mode="markers", name=kind if colored else f"{kind} (no {color_by})", text=hover,
                                     hovertemplate="%{text}<extra></extra>", marker=marker))  # fmt: skip
    front = sorted((p for p in points if p.get("on_frontier")), key=lambda p: p["rate"])
    if front:
        xs, ys = staircase([(p["rate"], p["distortion"]) for p in front])
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="frontier", line={"color": "crimson"},
                                 hoverinfo="skip"))  # fmt: skip
        fig.add_trace(go.Scatter(x=[p["rate"] for p in front], y=[p["distortion"] for p in front], mode="text",
                                 text=[label or "" for label in point_labels(front)],
                                 textposition="top right", showlegend=False, hoverinfo="skip"))  # fmt: skip
    if bound is not None:
        top = 1.5 * max((p["rate"] for p in points), default=1.0) + 0.5
        bound = tuple(zip(*[(r, d) for r, d in zip(*bound) if r <= top])) or ([], [])
        fig.add_trace(go.Scatter(x=list(bound[0]), y=list(bound[1]), mode="lines", name="Shannon R(D)",
                                 line={"dash": "dash", "color": "black"}))  # fmt: skip
    if entropy is not None and points:
        top = min(entropy, max(p["rate"] for p in points) * 1.05 + 1e-9)
        fig.add_trace(go.Scatter(x=[0, top], y=[entropy, entropy - top], mode="lines", name=entropy_label(entropy),
                                 line={"dash": "dot", "color": "gray"}))  # fmt: skip
    if floor is not None and points:
        top = max(p["rate"] for p in points) * 1.05 + 1e-9
        fig.add_trace(go.Scatter(x=[0, top], y=[floor, floor], mode="lines", name=floor_label(floor),
                                 line={"dash": "dashdot", "color": "gray"}))  # fmt: skip
    fig.update_layout(title=title, xaxis_title="rate (nats per example)", yaxis_title="distortion (nats per example)",
                      template="plotly_white", legend={"x": 1.12})  # fmt: skip
    if "HV" in title:
        fig.add_annotation(text=HV_CAPTION.replace("\n", "<br>"), xref="paper", yref="paper", x=0, y=-0.2, showarrow=False,
                           font={"size": 11, "color": "dimgray"}, xanchor="left")  # fmt: skip
    return fig.to_html(include_plotlyjs=True, full_html=True)
