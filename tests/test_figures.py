"""The held-out examples that every figure shows: spread over every factor, seeded, the same for every model."""

import numpy as np
import pytest
import torch

from bvae_core.data import FileDataset, GaussianSource, make_dataset
from bvae_core.data.base import stratified_positions
from bvae_core.data.dsprites import DSprites


@pytest.fixture(scope="module")
def dsprites32():
    return DSprites(resolution=32)  # the quickstart's data: 10,000 held-out combinations


def test_dsprites_figure_batch_covers_shapes_scales_and_positions(dsprites32):
    ds = dsprites32
    pos = ds.figure_positions(12, seed=0)
    f = ds.test_factors[pos]
    assert pos.unique().numel() == 12 and int(pos.max()) < ds.n_test
    assert torch.bincount(f[:, 0], minlength=3).tolist() == [4, 4, 4]  # square, ellipse, heart: 4 each
    assert f[:, 1].unique().numel() == 6  # every scale
    for k in (2, 3, 4):  # orientation, posX, posY: spread over the range, not bunched at one end
        assert f[:, k].unique().numel() >= 10 and int(f[:, k].min()) < 8 and int(f[:, k].max()) >= ds.factor_sizes[k] - 8
    # the first held-out examples used to be the figure: shape 0 at the smallest scale only
    assert torch.equal(ds.figure_positions(12, seed=0), pos)  # seeded: every trial shows the same examples
    images = ds.figure_batch(12, seed=0)
    assert torch.equal(images, ds.render(f)) and images.shape == (12, 1, 32, 32)
    assert not torch.equal(ds.figure_positions(12, seed=1), pos)


def test_held_out_prefix_spans_every_shape(dsprites32):
    """train.n_eval takes a prefix of the held-out split: it must be a uniform sample, not the first shapes."""
    first = dsprites32.test_factors[:1000, 0]
    counts = torch.bincount(first, minlength=3)
    assert counts.min() > 250, counts.tolist()


def test_blobs_figure_batch_spreads_positions():
    ds = make_dataset("blobs", resolution=32)
    f = ds.test_factors[ds.figure_positions(8, seed=0)]
    for k in range(2):  # 8 examples over a 32-value factor: spread over its range (the nearest held-out ones)
        assert f[:, k].unique().numel() >= 6 and int(f[:, k].min()) < 8 and int(f[:, k].max()) >= 24


def test_stratified_positions_on_a_file_sorted_by_factors(tmp_path):
    """A user's file ordered by its factors (as the published dSprites .npz is): the figures still show every value
    of a small factor, and the held-out order is not the file's."""
    shape, pos = np.meshgrid(np.arange(3), np.arange(40), indexing="ij")
    factors = np.stack([shape.ravel(), pos.ravel()], 1)
    images = np.zeros((len(factors), 8, 8), dtype=np.uint8)
    images[np.arange(len(factors)), factors[:, 0], factors[:, 1] % 8] = 255
    np.savez(tmp_path / "d.npz", images=images, factors=factors)
    ds = FileDataset(str(tmp_path / "d.npz"), test_fraction=0.25)
    held_out = ds.test_factors
    assert not torch.equal(held_out[:, 0], held_out[:, 0].sort().values)  # random order, not the file's
    chosen = held_out[ds.figure_positions(6, seed=0)]
    assert sorted(chosen[:, 0].tolist()) == [0, 0, 1, 1, 2, 2]
    x = ds.figure_batch(6, seed=0)
    rows = torch.cat(list(ds.test_batches(7)))[ds.figure_positions(6, seed=0)]
    assert torch.equal(x, rows)


def test_stratified_positions_match_exact_small_factors_and_order_rows():
    g = torch.Generator().manual_seed(0)
    factors = torch.stack([torch.randint(3, (500,), generator=g), torch.randint(100, (500,), generator=g)], 1)
    picked = stratified_positions(factors, 9, torch.Generator().manual_seed(0))
    rows = factors[picked]
    assert rows[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # every value, rows ordered by factor
    assert picked.unique().numel() == 9
    assert stratified_positions(factors, 600, g).numel() == 500  # never more rows than there are


def test_figure_batch_without_factors_is_a_seeded_held_out_sample():
    ds = GaussianSource([4.0, 1.0], n_train=100, n_test=50)
    a, b = ds.figure_batch(8, seed=0), ds.figure_batch(8, seed=0)
    assert torch.equal(a, b) and not torch.equal(a, ds.figure_batch(8, seed=3))
    held_out = {tuple(r) for r in ds.test.tolist()}
    assert all(tuple(r) in held_out for r in a.tolist())
    assert not torch.equal(a, ds.test[:8])


def _config(dataset: dict, likelihood: str = "bernoulli"):
    from bvae_core.config import parse_config

    return parse_config({"dataset": dataset, "model": {"arch": "mlp", "likelihood": {"kind": likelihood}}})


def test_reference_curves_say_what_bounds_each_dataset():
    from bvae_core.data.dsprites import IMAGE_STATISTICS
    from sweeps.frontier_plots import reference_curves

    # binary images (64 px): the entropy line, with H the entropy of the rendered images (some coincide)
    assert reference_curves(_config({"name": "dsprites", "resolution": 64})) == {"entropy": IMAGE_STATISTICS[64].entropy}
    # pooled pixels (32 px, the quickstart): the floor E Σ h(x), not a line that bounds nothing
    assert reference_curves(_config({"name": "dsprites", "resolution": 32})) == {"floor": IMAGE_STATISTICS[32].pixel_entropy}
    blobs = reference_curves(_config({"name": "blobs", "resolution": 32, "grid": 8}))
    ds = make_dataset("blobs", resolution=32, grid=8)
    x = ds.render(ds.unravel(torch.arange(64))).double()
    h = -(torch.special.xlogy(x, x) + torch.special.xlogy(1 - x, 1 - x)).flatten(1).sum(1).mean()
    assert set(blobs) == {"floor"} and abs(blobs["floor"] - float(h)) < 1e-3
    assert reference_curves(_config({"name": "dsprites", "resolution": 64}, "gaussian")) == {}


def test_html_page_labels_capacity_points_and_explains_hv():
    from sweeps.frontier_plots import html_page

    points = [
        {"trial_id": "a", "rate": 2.0, "distortion": 40.0, "beta": 4.0, "schedule": "constant", "on_frontier": True},
        {"trial_id": "b", "rate": 6.0, "distortion": 25.0, "beta": None, "c_max": 8.0, "gamma": 1000.0,
         "schedule": "linear_capacity", "on_frontier": True},
    ]
    page = html_page(points, "quickstart: 2 completed trials, HV 812.5", floor=9.7)
    # (plotly writes non-ASCII characters as JSON escapes)
    assert "HV = hypervolume" in page and '"text":["\\u03b2=4","C=8"]' in page
    assert '"D \\u2265 9.70 (pixel entropy)"' in page
