"""The figures: image grids drawn as one mosaic, and the R-D figure's labels and legend."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bvae_core.plots import _image_grid, _spaced, rate_distortion_figure


def test_image_grid_places_every_image_in_its_cell():
    images = torch.zeros(6, 1, 8, 8)
    for i in range(6):
        images[i] = i / 5  # each image one grey level
    fig = _image_grid(images, 2, 3, ["a", "b"], "t")
    picture = fig.axes[0].images[0].get_array()
    pad = 1
    for i in range(6):
        r, c = divmod(i, 3)
        cell = picture[r * (8 + pad) : r * (8 + pad) + 8, c * (8 + pad) : c * (8 + pad) + 8]
        assert float(abs(cell - i / 5).max()) < 1e-6
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b"]


points_strategy = st.lists(st.tuples(st.floats(0, 50), st.floats(0, 200)), min_size=1, max_size=40)


@settings(max_examples=100, deadline=None)
@given(points_strategy)
def test_frontier_labels_keep_their_distance(pairs):
    points = [{"rate": r, "distortion": d} for r, d in sorted(pairs)]
    kept = _spaced(points, points, min_gap=0.06)
    assert kept and kept[0] is points[0]  # the first point is always labelled
    span_r = (max(r for r, _ in pairs) - min(r for r, _ in pairs)) or 1.0
    span_d = (max(d for _, d in pairs) - min(d for _, d in pairs)) or 1.0

    def gap(p, q):
        return math.hypot((p["rate"] - q["rate"]) / span_r, (p["distortion"] - q["distortion"]) / span_d)

    for i, p in enumerate(kept):
        assert all(gap(p, q) >= 0.06 for q in kept[:i])
    for p in points:  # every unlabelled point is near a labelled one: nothing is dropped without a reason
        assert any(gap(p, q) < 0.06 for q in kept) or p in kept


def test_rd_figure_legend_names_schedules_not_colours():
    points = [
        {"rate": 1.0, "distortion": 50.0, "beta": 8.0, "schedule": "constant", "on_frontier": True},
        {"rate": 1.05, "distortion": 49.8, "beta": 7.5, "schedule": "constant", "on_frontier": True},
        {"rate": 9.0, "distortion": 20.0, "beta": 0.5, "schedule": "constant", "on_frontier": True},
        {"rate": 5.0, "distortion": 60.0, "beta": None, "schedule": "linear_capacity", "on_frontier": False},
    ]
    fig = rate_distortion_figure(points, entropy=60.0)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:3] == ["β-VAE (constant β)", "controlled capacity (C ramp)", "frontier"]
    assert any(label.startswith("D = H − R") for label in labels)
    annotations = [t.get_text() for t in ax.texts]
    assert annotations == ["β=8", "β=0.5"]  # β=7.5 sits on top of β=8: not labelled


def test_rd_figure_labels_capacity_points_with_c_max_and_explains_hv():
    points = [
        {"rate": 2.0, "distortion": 40.0, "beta": 4.0, "schedule": "constant", "on_frontier": True},
        {"rate": 6.0, "distortion": 25.0, "beta": None, "c_max": 8.0, "gamma": 1000.0, "schedule": "linear_capacity",
         "on_frontier": True},
        {"rate": 12.0, "distortion": 60.0, "beta": None, "c_max": 15.0, "gamma": 1000.0, "schedule": "linear_capacity",
         "on_frontier": False},
    ]
    fig = rate_distortion_figure(points, title="quickstart: 3 completed trials, 2 on the frontier, HV 812.5")
    assert [t.get_text() for t in fig.axes[0].texts] == ["β=4", "C=8", "C=15"]  # off the frontier too: no β colour
    assert any("HV = hypervolume" in t.get_text() for t in fig.texts)
    points[2]["gamma"] = 100.0  # γ varies between the capacity points: it is named too
    fig = rate_distortion_figure(points, title="no hypervolume here")
    assert [t.get_text() for t in fig.axes[0].texts] == ["β=4", "C=8, γ=1000", "C=15, γ=100"]
    assert not fig.texts


def test_rd_figure_draws_the_pixel_entropy_floor():
    points = [{"rate": 3.0, "distortion": 30.0, "beta": 1.0, "schedule": "constant", "on_frontier": True}]
    fig = rate_distortion_figure(points, floor=9.7)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "D ≥ 9.70 (pixel entropy)" in labels
    floor_line = next(line for line in ax.get_lines() if line.get_label() == "D ≥ 9.70 (pixel entropy)")
    assert list(floor_line.get_ydata()) == [9.7, 9.7]


def test_the_beta_colour_bar_reads_plain_numbers():
    """A log-scaled β bar read 2 × 10^0, 3 × 10^0 under matplotlib's default log formatter; and labelling every
    minor tick as a plain number piled ~30 labels on a bar from 0.01 to 100."""
    from bvae_core.plots import rate_distortion_figure

    def shown(low: float, high: float) -> list[str]:
        points = [{"rate": r, "distortion": 10 - r, "on_frontier": True, "schedule": "constant", "beta": b}
                  for r, b in ((1.0, low), (2.0, (low * high) ** 0.5), (3.0, high))]  # fmt: skip
        fig = rate_distortion_figure(points)
        fig.canvas.draw()
        bar = fig.axes[-1]
        bottom, top = bar.get_ylim()
        ticks = bar.yaxis.get_ticklabels() + bar.yaxis.get_ticklabels(minor=True)
        return [t.get_text() for t in ticks if t.get_text() and bottom <= t.get_position()[1] <= top]

    assert sorted(shown(2.0, 4.5)) == ["2", "3", "4"]
    assert sorted(shown(0.01, 100.0), key=float) == ["0.01", "0.1", "1", "10", "100"]  # the decades only
