"""The R-D figure of a sweep as PNG (matplotlib) and as an interactive HTML page (Plotly, self-contained: no
network needed to view it) whose points show their trial, β, latent size and schedule on hover."""

from __future__ import annotations

import io
import math
from typing import Any

from bvae_core.config import TrainConfig
from bvae_core.plots import rate_distortion_figure, staircase


def reference_curves(base: TrainConfig) -> dict[str, Any]:
    """What the data bounds the plane with: the Shannon R(D) curve for a ``gaussian`` source (in the nats of the
    Gaussian likelihood: D = SSE/(2σ²) + d/2·ln 2πσ²) or the entropy H of a discrete dataset (D ≥ H − R)."""
    data = base.dataset
    if data.name == "gaussian" and base.model.likelihood.kind == "gaussian":
        from bvae_core.data import water_filling

        sigma, lam = base.model.likelihood.sigma, data.eigenvalues
        const = 0.5 * len(lam) * math.log(2 * math.pi * sigma**2)
        thetas = [min(lam) * 0.02 * (max(lam) * 50 / (min(lam) * 0.02)) ** (i / 199) for i in range(200)]
        curve = [water_filling(lam, t) for t in thetas]
        return {"bound": ([r for r, _ in curve], [d / (2 * sigma**2) + const for _, d in curve])}
    if data.name == "dsprites" and data.resolution == 64 and base.model.likelihood.kind == "bernoulli":
        # binary images, each of the 737,280 distinct and equally likely: D ≥ H − I(x; z) ≥ H − R. (At 32 px the
        # pooled pixels are not binary, the cross-entropy is no likelihood of discrete data, and the line no bound.)
        return {"entropy": math.log(3 * 6 * 40 * 32 * 32)}
    return {}


def png_bytes(points: list[dict], title: str, color_by: str = "beta", **curves: Any) -> bytes:
    import matplotlib.pyplot as plt

    fig = rate_distortion_figure(points, color_by=color_by, title=title, **curves)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def html_page(points: list[dict], title: str, color_by: str = "beta", bound=None, entropy: float | None = None) -> str:
    import plotly.graph_objects as go

    fig = go.Figure()
    symbols = {"constant": "circle", "linear_capacity": "square", "warmup": "triangle-up", "free_bits": "diamond"}
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
                     f"schedule = {kind}" + (f" (C max {p['c_max']:.3g})" if p.get("c_max") is not None else "")
                     + f"<br>rate = {p['rate']:.4g} nats<br>distortion = {p['distortion']:.4g} nats"
                     + ("<br><b>on the frontier</b>" if p.get("on_frontier") else "") for p in group]  # fmt: skip
            marker = {"symbol": symbols.get(kind, "cross"), "size": 10, "line": {"width": 0.5, "color": "black"}}
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
                                 text=[f"β={p['beta']:.3g}" if p.get("beta") is not None else "" for p in front],
                                 textposition="top right", showlegend=False, hoverinfo="skip"))  # fmt: skip
    if bound is not None:
        top = 1.5 * max((p["rate"] for p in points), default=1.0) + 0.5
        bound = tuple(zip(*[(r, d) for r, d in zip(*bound) if r <= top])) or ([], [])
        fig.add_trace(go.Scatter(x=list(bound[0]), y=list(bound[1]), mode="lines", name="Shannon R(D)",
                                 line={"dash": "dash", "color": "black"}))  # fmt: skip
    if entropy is not None and points:
        top = min(entropy, max(p["rate"] for p in points) * 1.05 + 1e-9)
        fig.add_trace(go.Scatter(x=[0, top], y=[entropy, entropy - top], mode="lines", name="D = H − R",
                                 line={"dash": "dot", "color": "gray"}))  # fmt: skip
    fig.update_layout(title=title, xaxis_title="rate (nats per example)", yaxis_title="distortion (nats per example)",
                      template="plotly_white", legend={"x": 1.12})  # fmt: skip
    return fig.to_html(include_plotlyjs=True, full_html=True)
