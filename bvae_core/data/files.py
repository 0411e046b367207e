"""Datasets read from a user's files: ``.npz`` or Parquet, from a local path (or any URI pyarrow.fs opens, e.g. s3://).

- ``.npz``: an image array (key ``image``/``images``/``imgs``/``x``, or the one named by ``image_column``) of shape
  ``[N, H, W]``, ``[N, C, H, W]``, ``[N, H, W, C]`` or ``[N, d]``, and optionally integer factors ``[N, K]``
  (key ``factors`` or ``latents_classes``, as in the published dSprites file) with ``factor_names``.
- Parquet: one row per example; the image column holds encoded image bytes (PNG, …; also Hugging Face's
  ``{bytes, path}`` struct; palette images as their colours, grey+alpha as 2 channels) or a flat list of numbers
  (give ``image_shape``, the shape of one example as stored — ``[H, W]``, ``[C, H, W]``, or ``[H, W, C]`` with C of
  1 to 4 — unless it is a square single-channel image); integer columns are the factors (or those named by
  ``factor_columns``), less the index pandas stored with the table.

uint8 and bool images are scaled to [0, 1]; float data is used as it is (finite values only, and within [0, 1] for the
Bernoulli likelihood: :func:`check_likelihood_support`). The held-out split is a seeded random ``test_fraction`` of the
rows.
"""

from __future__ import annotations

import io
import zipfile
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from .base import Dataset

_IMAGE_KEYS = ("image", "images", "imgs", "x")
_FACTOR_KEYS = ("factors", "latents_classes")


class DataFileError(ValueError):
    """The user's data file cannot be used; the message names the file and what was expected."""


def _open_bytes(path: str) -> bytes:
    import pyarrow.fs

    try:
        fs, inner = pyarrow.fs.FileSystem.from_uri(path) if "://" in path else (pyarrow.fs.LocalFileSystem(), path)
        with fs.open_input_file(inner) as f:
            return f.read()
    except FileNotFoundError:
        raise DataFileError(f"dataset.path: no such file: {path}") from None
    except OSError as e:
        if "No such file" in str(e) or "does not exist" in str(e):  # pyarrow's remote file systems say it this way
            raise DataFileError(f"dataset.path: no such file: {path}") from None
        raise DataFileError(f"dataset.path: cannot read {path}: {e}") from None


def _load_npz(path: str, image_key: str) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    try:
        raw = _open_bytes(path)
        if not raw.startswith(b"PK"):
            raise DataFileError(f"dataset.path: {path} is not a .npz file (not a zip archive of arrays)")
        npz = np.load(io.BytesIO(raw), allow_pickle=False)
    except DataFileError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # a cut-off or damaged archive
        raise DataFileError(f"dataset.path: {path} is not a readable .npz file ({type(e).__name__}: {e})") from None
    if image_key != _IMAGE_KEYS[0] and image_key not in npz.files:  # named by the user: no guessing
        raise DataFileError(f"dataset.image_column: {path} has no array {image_key!r} (arrays: "
                            f"{', '.join(npz.files)})")  # fmt: skip
    keys = [image_key] if image_key in npz.files else [k for k in _IMAGE_KEYS if k in npz.files]
    if not keys:
        raise DataFileError(f"dataset.path: {path} has no image array (looked for {', '.join(_IMAGE_KEYS)}; "
                            f"found {', '.join(npz.files)}); name it with dataset.image_column")  # fmt: skip
    def read(key: str) -> np.ndarray:
        try:
            return npz[key]
        except ValueError:  # numpy refuses arrays of Python objects without allow_pickle (which runs code)
            raise DataFileError(f"dataset.path: {path}: array {key!r} holds Python objects (saved with "
                                f"allow_pickle); store it as numbers (strings for factor_names)") from None  # fmt: skip

    images = read(keys[0])
    factor_key = next((k for k in _FACTOR_KEYS if k in npz.files), None)
    factors = read(factor_key) if factor_key else None
    names = [str(n) for n in read("factor_names")] if "factor_names" in npz.files else None
    return images, factors, names


def _decode_image(value, shape: list[int] | None) -> np.ndarray:
    if isinstance(value, dict):  # Hugging Face datasets' Image feature
        value = value.get("bytes")
    if isinstance(value, (bytes, bytearray)):
        from PIL import Image

        image = Image.open(io.BytesIO(value))
        if image.mode in ("P", "PA"):  # palette indices: the colours they stand for
            image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
        elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGB")
        pixels = np.asarray(image)
        return pixels if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # decoded [H, W, C]: channels first
    arr = np.asarray(value)
    if shape is not None:
        return arr.reshape(shape)
    side = math.isqrt(arr.size)
    return arr.reshape(side, side) if side * side == arr.size else arr


def _load_parquet(path: str, image_column: str, factor_columns: list[str] | None, image_shape: list[int] | None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # An Arrow buffer, not a Python file object (read_table on io.BytesIO leaves work that needs the GIL at exit:
        # apache/arrow#33975, #34314), read by ParquetFile, not read_table: read_table's dataset scanner, once torch
        # is loaded, aborts the interpreter at exit 4 times in 8 ("terminate called without an active exception").
        table = pq.ParquetFile(pa.BufferReader(_open_bytes(path))).read(use_threads=False)
    except pa.ArrowInvalid as e:
        raise DataFileError(f"dataset.path: {path} is not a readable Parquet file ({e})") from None
    if table.num_rows == 0:
        raise DataFileError(f"dataset.path: {path} holds no rows")
    if image_column not in table.column_names:
        raise DataFileError(f"dataset.image_column: {path} has no column {image_column!r} "
                            f"(columns: {', '.join(table.column_names)})")  # fmt: skip
    try:
        images = np.stack([_decode_image(v, image_shape) for v in table.column(image_column).to_pylist()])
    except (ValueError, OSError, TypeError) as e:  # undecodable bytes, rows of other sizes, nulls
        raise DataFileError(f"dataset.image_column: cannot decode column {image_column!r} of {path} ({e}); every row "
                            f"must hold an image of one shape (PNG bytes or a list of numbers)") from None  # fmt: skip
    skipped: dict[str, str] = {}
    if factor_columns is None:
        factor_columns, skipped = _integer_factor_columns(table, image_column)
    missing = [c for c in factor_columns if c not in table.column_names]
    if missing:
        raise DataFileError(f"dataset.factor_columns: {path} has no column {missing[0]!r}")
    for c in factor_columns:
        if table.column(c).null_count:
            raise DataFileError(f"dataset.factor_columns: column {c!r} of {path} has {table.column(c).null_count} "
                                f"empty (null) value(s); every row needs its factor values")  # fmt: skip
    factors = np.stack([table.column(c).to_numpy() for c in factor_columns], axis=1) if factor_columns else None
    return images, factors, factor_columns or None, skipped


def _integer_factor_columns(table, image_column: str) -> tuple[list[str], dict[str, str]]:
    """A Parquet table's factors when ``dataset.factor_columns`` is not given: its integer columns, less the index
    pandas stored with the table (skipped, with why)."""
    import pyarrow as pa

    index = {c for c in (table.schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
    factors, skipped = [], {}
    for c in table.column_names:
        if c == image_column or not pa.types.is_integer(table.schema.field(c).type):
            continue
        if c in index:
            skipped[c] = "the index pandas stored"
        else:
            factors.append(c)
    return factors, skipped


def _to_nchw(images: np.ndarray, path: str) -> np.ndarray:
    if images.ndim == 2:
        return images  # vectors [N, d]
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4:
        if images.shape[-1] in (1, 2, 3, 4) and images.shape[1] not in (1, 2, 3, 4):  # 2: grey + alpha
            return images.transpose(0, 3, 1, 2)
        return images
    raise DataFileError(f"dataset.path: {path}: expected images [N, H, W], [N, C, H, W], [N, H, W, C] or vectors "
                        f"[N, d], got an array of shape {images.shape}")  # fmt: skip


class FileDataset(Dataset):
    """Examples read from a user's ``.npz`` or Parquet file, held in memory on the training device."""

    name = "file"

    def __init__(self, path: str, image_column: str = "image", factor_columns: list[str] | None = None,
                 image_shape: list[int] | None = None, test_fraction: float = 0.1, split_seed: int = 0,
                 device: torch.device | str = "cpu"):  # fmt: skip
        suffix = path.lower().rsplit(".", 1)[-1]
        #: integer Parquet columns not taken as factors (``dataset.factor_columns`` not given), with why
        self.skipped_columns: dict[str, str] = {}
        if suffix == "npz":
            if factor_columns is not None:
                raise DataFileError(f"dataset.factor_columns: applies to Parquet files; a .npz file holds its factors "
                                    f"as one array named {' or '.join(_FACTOR_KEYS)} ([N, n_factors] integers)")  # fmt: skip
            images, factors, names = _load_npz(path, image_column)
            squeezed = lambda shape: [d for d in shape if d != 1]  # noqa: E731 - [1, 64, 64] is [64, 64]
            if image_shape is not None and squeezed(image_shape) != squeezed(images.shape[1:]):  # the same: a no-op
                raise DataFileError(f"dataset.image_shape: {list(image_shape)} is not the shape of the examples of "
                                    f"{path} ({list(images.shape[1:])} as stored); it reshapes Parquet rows stored as "
                                    f"flat lists, and a .npz array keeps its own (leave it out)")  # fmt: skip
        elif suffix in ("parquet", "pq"):
            images, factors, names, self.skipped_columns = _load_parquet(path, image_column, factor_columns,
                                                                         image_shape)  # fmt: skip
        else:
            raise DataFileError(f"dataset.path: expected a .npz or .parquet file, got {path}")
        images = _to_nchw(images, path)
        if 0 in images.shape[1:]:
            raise DataFileError(f"dataset.path: {path}: its examples hold no values (each of shape "
                                f"{tuple(images.shape[1:])})")  # fmt: skip
        n = images.shape[0]
        if n < 3:
            raise DataFileError(f"dataset.path: {path} holds {n} example(s); need at least 3 (2 held out to "
                                f"evaluate, the rest to train)")  # fmt: skip
        if np.issubdtype(images.dtype, np.integer) and images.size and (images.min() < 0 or images.max() > 255):
            raise DataFileError(f"dataset.path: {path}: integer images must hold 0..255 (8-bit pixels) or 0/1, got "
                                f"{images.dtype} values {images.min()} to {images.max()}; store other values as "
                                f"floats")  # fmt: skip
        if images.dtype == np.bool_ or np.issubdtype(images.dtype, np.integer):
            self._scale = 1.0 if images.dtype == np.bool_ or images.max() <= 1 else 1.0 / 255.0
            self._storage = torch.from_numpy(np.ascontiguousarray(images.astype(np.uint8)))
        elif np.issubdtype(images.dtype, np.floating):
            if not np.isfinite(images).all():
                raise DataFileError(f"dataset.path: {path}: the images hold NaN or infinite values")
            with np.errstate(over="ignore"):  # values past float32 become ±inf: refused just below, by name
                self._scale, self._storage = None, torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
            if not torch.isfinite(self._storage).all():  # float64 beyond float32's ±3.4e38 became ±inf
                raise DataFileError(f"dataset.path: {path}: the images hold values beyond float32's range (largest "
                                    f"magnitude {np.abs(images).max():.3g}); training runs in float32")  # fmt: skip
        else:
            raise DataFileError(f"dataset.path: {path}: expected numeric images, got dtype {images.dtype}")
        scale = 1.0 if self._scale is None else self._scale
        self.value_range = (float(images.min()) * scale, float(images.max()) * scale)
        if factors is not None:
            if factors.ndim != 2 or factors.shape[0] != n or not np.issubdtype(factors.dtype, np.integer):
                raise DataFileError(f"dataset.path: {path}: factors must be integers [N, n_factors], one row per image "
                                    f"(got {factors.dtype} of shape {factors.shape} for {n} images)")  # fmt: skip
            if names is not None and len(names) != factors.shape[1]:
                raise DataFileError(f"dataset.path: {path}: factor_names holds {len(names)} name(s) for "
                                    f"{factors.shape[1]} factor column(s); give one name per column")  # fmt: skip
            self.factors = torch.from_numpy(factors.astype(np.int64))
            self.factor_names = tuple(names or [f"factor{i}" for i in range(factors.shape[1])])
        else:
            self.factors, self.factor_names = None, ()
        self.example_shape = tuple(self._storage.shape[1:])
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
        n_test = min(max(2, round(n * test_fraction)), n - 1)  # 2 at least: a held-out variance needs 2
        # seeded random order: a prefix (train.n_eval) is a uniform sample even when the file is sorted by factors
        self._test_idx, self._train_idx = perm[:n_test].clone(), perm[n_test:]
        self.path = path
        self.to(device)

    @property
    def n_test(self) -> int:
        return int(self._test_idx.numel())

    @property
    def test_factors(self) -> Tensor | None:
        return None if self.factors is None else self.factors[self._test_idx.cpu()]

    def to(self, device: torch.device | str) -> "FileDataset":
        self.device = torch.device(device)
        self._storage = self._storage.to(self.device)
        self._test_idx, self._train_idx = self._test_idx.to(self.device), self._train_idx.to(self.device)
        return self

    def _as_float(self, raw: Tensor) -> Tensor:
        return raw if self._scale is None else raw.float() * self._scale

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Tensor:
        pos = torch.randint(self._train_idx.numel(), (batch_size,), generator=generator, device=generator.device)
        return self._as_float(self._storage[self._train_idx[pos.to(self.device)]])

    def test_batches(self, batch_size: int) -> Iterator[Tensor]:
        for idx in self._test_idx.split(batch_size):
            yield self._as_float(self._storage[idx])

    def test_examples(self, positions: Tensor) -> Tensor:
        return self._as_float(self._storage[self._test_idx[positions.to(self.device)]])

    def examples(self, rows: Tensor) -> Tensor:
        """The examples at ``rows`` of the whole file (both splits; the rows of :attr:`factors`), as floats."""
        return self._as_float(self._storage[rows.to(self.device)])


def check_likelihood_support(dataset: Dataset, likelihood: str) -> None:
    """The Bernoulli likelihood's −log p(x|z) is a cross-entropy that needs 0 ≤ x ≤ 1: outside it the distortion goes
    negative and unbounded. Raise ``DataFileError`` naming the file and its range when a file's values do not fit."""
    if likelihood != "bernoulli" or dataset.value_range is None:
        return
    low, high = dataset.value_range
    if low < 0 or high > 1:
        where = getattr(dataset, "path", dataset.name)
        raise DataFileError(f"model.likelihood: bernoulli needs values in [0, 1]; {where} holds {low:g} to {high:g} "
                            f"(scale the images to [0, 1], or set model.likelihood: {{kind: gaussian}})")  # fmt: skip
