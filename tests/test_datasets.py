"""Blobs, the Gaussian source and user files (.npz, Parquet): shapes, factors, splits and clear errors."""

import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bvae_core.data import DataFileError, FileDataset, GaussianSource, make_dataset


def test_blobs_factors_and_rendering():
    ds = make_dataset("blobs", resolution=32, grid=8, sigma=1.5)
    assert ds.factor_names == ("posX", "posY") and ds.factor_sizes == (8, 8)
    f = torch.tensor([[0, 0], [7, 0], [0, 7]])
    img = ds.render(f)
    assert img.shape == (3, 1, 32, 32) and img.min() >= 0 and img.max() <= 1
    # the brightest pixel moves right with posX and down with posY
    peak = [divmod(int(i.argmax()), 32) for i in img[:, 0]]  # (row, col)
    assert peak[1][1] > peak[0][1] and peak[1][0] == peak[0][0]
    assert peak[2][0] > peak[0][0] and peak[2][1] == peak[0][1]


def test_ground_truth_split_is_disjoint_and_batches_come_from_train():
    ds = make_dataset("blobs", resolution=32, grid=8, n_test=10)
    test = set(ds._test_flat.tolist())
    assert len(test) == 10 and not test & set(ds._train_flat.tolist())
    g = torch.Generator().manual_seed(0)
    f = ds.sample_factors(1000, g)
    assert f.min() == 0 and f[:, 0].max() == 7 and f[:, 1].max() == 7
    assert torch.equal(ds.unravel(ds.ravel(f)), f)
    assert ds.test_factors.shape == (10, 2)
    batches = list(ds.test_batches(4))
    assert [b.shape[0] for b in batches] == [4, 4, 2]


def test_ground_truth_rejects_impossible_test_size():
    with pytest.raises(ValueError, match="dataset.n_test"):
        make_dataset("blobs", grid=4, n_test=16)


def test_gaussian_source_covariance_matches_spectrum():
    ds = GaussianSource([4.0, 1.0, 0.25], rotate=True, n_train=200_000, n_test=10)
    cov = torch.cov(ds.train.T.double())
    eig = torch.linalg.eigvalsh(cov).flip(0)
    assert torch.allclose(eig, torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64), rtol=0.02)
    assert cov[0, 1].abs() > 0.05  # rotated: not axis-aligned
    assert ds.rate_distortion(1.0) == pytest.approx((0.5 * np.log(4.0), 1.0 + 1.0 + 0.25))
    assert ds.n_test == 10 and ds.example_shape == (3,)


def test_npz_images_and_factors(tmp_path):
    rng = np.random.default_rng(0)
    imgs = (rng.random((50, 16, 16)) > 0.5).astype(np.uint8)
    factors = rng.integers(0, 3, size=(50, 2))
    np.savez(tmp_path / "d.npz", imgs=imgs, latents_classes=factors, factor_names=np.array(["a", "b"]))
    ds = make_dataset("file", path=str(tmp_path / "d.npz"), test_fraction=0.2)
    assert ds.example_shape == (1, 16, 16) and ds.n_test == 10 and ds.factor_names == ("a", "b")
    x = ds.train_batch(8, torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and set(x.unique().tolist()) <= {0.0, 1.0}
    test = torch.cat(list(ds.test_batches(3)))
    assert test.shape == (10, 1, 16, 16)
    # held-out rows are the ones whose factors are reported
    idx = ds._test_idx
    assert torch.equal(test[:, 0], torch.from_numpy(imgs[idx.numpy()]).float())
    assert torch.equal(ds.test_factors, torch.from_numpy(factors[idx.numpy()]))


def test_npz_uint8_scaled_and_channels_last_transposed(tmp_path):
    imgs = np.full((4, 8, 8, 3), 255, dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=imgs)
    ds = FileDataset(str(tmp_path / "rgb.npz"), test_fraction=0.25)
    assert ds.example_shape == (3, 8, 8)
    assert next(ds.test_batches(4)).max() == 1.0
    np.savez(tmp_path / "la.npz", images=np.zeros((4, 8, 8, 2), dtype=np.uint8))  # grey + alpha, channels last
    assert FileDataset(str(tmp_path / "la.npz"), test_fraction=0.25).example_shape == (2, 8, 8)  # was (8, 8, 2)


@pytest.mark.parametrize(("arrays", "options", "message"), [
    ({"images": np.zeros((40, 0, 0))}, {}, "its examples hold no values (each of shape (1, 0, 0))"),
    ({"images": np.full((40, 4, 4), 1e300)}, {}, "values beyond float32's range (largest magnitude 1e+300)"),
    ({"images": np.zeros((40, 4, 4))}, {"image_shape": [16]}, "dataset.image_shape: [16] is not the shape of the "
                                                               "examples of"),
])  # fmt: skip
def test_npz_files_that_cannot_train_are_named_with_why(tmp_path, arrays, options, message):
    """Were: numpy's "zero-size array to reduction operation"; a non-finite loss at step 1; silently ignored."""
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(DataFileError, match=re.escape(message)):
        FileDataset(str(tmp_path / "x.npz"), **options)


def test_an_image_shape_that_matches_a_npz_is_a_no_op(tmp_path):
    """A space may offer a .npz beside Parquet files whose rows need ``image_shape``: the same shape is no error."""
    np.savez(tmp_path / "x.npz", images=np.zeros((40, 4, 4), np.uint8))
    assert FileDataset(str(tmp_path / "x.npz"), image_shape=[4, 4]).example_shape == (1, 4, 4)
    assert FileDataset(str(tmp_path / "x.npz"), image_shape=[1, 4, 4]).example_shape == (1, 4, 4)  # one channel


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_parquet_png_column_and_integer_factors(tmp_path):
    rng = np.random.default_rng(1)
    imgs = [(rng.random((12, 12)) * 255).astype(np.uint8) for _ in range(20)]
    table = pa.table({"image": [_png(i) for i in imgs], "shape": list(range(20)), "note": ["x"] * 20})
    pq.write_table(table, tmp_path / "d.parquet")
    ds = make_dataset("file", path=str(tmp_path / "d.parquet"), test_fraction=0.1)
    assert ds.example_shape == (1, 12, 12) and ds.factor_names == ("shape",)
    first = int(ds._test_idx[0])
    assert torch.allclose(next(ds.test_batches(2))[0, 0], torch.from_numpy(imgs[first]).float() / 255)


def test_parquet_list_column_with_shape(tmp_path):
    table = pa.table({"pixels": [[0.5] * 12 for _ in range(6)]})
    pq.write_table(table, tmp_path / "v.parquet")
    ds = make_dataset("file", path=str(tmp_path / "v.parquet"), image_column="pixels", image_shape=[3, 2, 2],
                      test_fraction=0.5)  # fmt: skip
    assert ds.example_shape == (3, 2, 2) and ds.factors is None


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing.npz", "no such file: .*missing.npz$"),
    (lambda p: (p / "junk.npz").write_text("junk") and p / "junk.npz", "junk.npz is not a .npz file"),
    (lambda p: (p / "x.txt").write_text("hi") and p / "x.txt", "expected a .npz or .parquet"),
    (lambda p: np.savez(p / "k.npz", other=np.zeros((3, 2))) or p / "k.npz", "no image array"),
    (lambda p: (p / "bad.parquet").write_bytes(b"not parquet") and p / "bad.parquet", "not a readable Parquet"),
    (lambda p: pq.write_table(pa.table({"img": [[1, 2]]}), p / "c.parquet") or p / "c.parquet", "no column 'image'"),
])  # fmt: skip
def test_file_errors_name_the_problem(tmp_path, make, message):
    with pytest.raises(DataFileError, match=message):
        make_dataset("file", path=str(make(tmp_path)))


def test_file_values_must_fit_the_likelihood(tmp_path):
    """Bernoulli's cross-entropy needs x in [0, 1]: a float file in 0–255 is refused naming its range (it trained to a
    negative, unbounded distortion before); the Gaussian likelihood takes any finite values; uint8 is scaled first."""
    from bvae_core import Trainer
    from bvae_core.data import check_likelihood_support

    np.savez(tmp_path / "w.npz", images=np.linspace(0, 255, 20 * 16 * 16, dtype=np.float32).reshape(20, 16, 16))
    wide = make_dataset("file", path=str(tmp_path / "w.npz"))
    assert wide.value_range == (0.0, 255.0)
    with pytest.raises(DataFileError, match=r"^model.likelihood: bernoulli needs values in \[0, 1\]; .*w.npz holds 0 to 255"):
        check_likelihood_support(wide, "bernoulli")
    config = {"dataset": {"name": "file", "path": str(tmp_path / "w.npz")}, "model": {"arch": "mlp", "latent_dim": 2}}
    with pytest.raises(DataFileError, match="model.likelihood"):
        Trainer(config)
    Trainer({**config, "model": {**config["model"], "likelihood": {"kind": "gaussian"}}})  # any finite values
    np.savez(tmp_path / "u.npz", images=np.full((20, 16, 16), 255, np.uint8))
    scaled = make_dataset("file", path=str(tmp_path / "u.npz"))
    assert scaled.value_range == (1.0, 1.0)
    check_likelihood_support(scaled, "bernoulli")
    np.savez(tmp_path / "inf.npz", images=np.full((20, 16, 16), np.inf, np.float32))
    with pytest.raises(DataFileError, match="inf.npz: the images hold NaN or infinite values"):
        make_dataset("file", path=str(tmp_path / "inf.npz"))



def test_parquet_palette_and_grey_alpha_pngs_decode_to_their_colours_channels_first(tmp_path):
    """A palette PNG was read as its palette indices (a 16-colour image peaked at 15/255), and grey+alpha came out
    as [32, 32, 2]: 32 channels of 32 × 2 pixels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    grey = [(rng.random((8, 8)) * 255).astype(np.uint8) for _ in range(6)]

    def encoded(image) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    palette = [encoded(Image.fromarray(g).convert("RGB").quantize(16)) for g in grey]
    grey_alpha = [encoded(Image.fromarray(np.stack([g, np.full_like(g, 255)], -1), mode="LA")) for g in grey]
    for name, column, channels in (("p", palette, 3), ("la", grey_alpha, 2)):
        pq.write_table(pa.table({"image": column}), tmp_path / f"{name}.parquet")
        ds = make_dataset("file", path=str(tmp_path / f"{name}.parquet"), test_fraction=0.34)
        assert ds.example_shape == (channels, 8, 8), name
        assert ds.value_range[1] > 0.5, name  # colours, not palette indices
    ds = make_dataset("file", path=str(tmp_path / "la.parquet"), test_fraction=0.34)
    first = int(ds._test_idx[0])
    assert torch.allclose(next(ds.test_batches(1))[0, 0], torch.from_numpy(grey[first]).float() / 255)


def test_parquet_factors_leave_out_the_index_pandas_stored(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"image": [[0.5] * 4] * 6, "shape": [0, 1, 2] * 2}, index=[10, 11, 12, 13, 14, 15])
    frame.to_parquet(tmp_path / "pandas.parquet")  # a non-default index is stored as a column
    ds = make_dataset("file", path=str(tmp_path / "pandas.parquet"), test_fraction=0.34)
    assert ds.factor_names == ("shape",) and ds.skipped_columns == {"__index_level_0__": "the index pandas stored"}


def test_a_file_of_three_examples_holds_two_out_at_the_default_fraction(tmp_path):
    """The README says a file needs 3 examples (2 held out); at the default test_fraction of 0.1 a file of fewer
    than 15 held out 1, which evaluation then refused."""
    np.savez(tmp_path / "three.npz", images=np.zeros((3, 8, 8), np.uint8))
    ds = make_dataset("file", path=str(tmp_path / "three.npz"))
    assert ds.n_test == 2
    np.savez(tmp_path / "forty.npz", images=np.zeros((40, 8, 8), np.uint8))
    assert make_dataset("file", path=str(tmp_path / "forty.npz")).n_test == 4  # the fraction, where it gives ≥ 2


def test_blobs_render_at_any_resolution_for_the_models_that_take_any():
    ds = make_dataset("blobs", resolution=20, grid=5)
    images = ds.render(torch.tensor([[0, 0], [4, 4]]))
    assert images.shape == (2, 1, 20, 20)
    peak = [divmod(int(im.argmax()), 20) for im in images[:, 0]]
    assert peak[0] in ((4, 4), (5, 5)) and peak[1] in ((14, 14), (15, 15))  # centres R/4 and 3R/4, as at 32 and 64 px
