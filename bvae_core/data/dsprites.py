"""dSprites (Matthey et al. 2017), rendered procedurally on the training device (docs/contracts.md, "Datasets").

737,280 binary 64×64 images over five factors: shape {square, ellipse, heart} (3), scale linspace(0.5, 1, 6),
orientation linspace(0, 2π, 40) (both ends included), posX and posY linspace(0, 1, 32). Row-major index order with
posY fastest, as in the published ``.npz``. The geometry below was recovered from the real frames (see
``tests/data/README.md``) and is checked against them in ``tests/test_dsprites.py``.

How rendering is made cheap
---------------------------
The anchor of an image is at pixel coordinate ``16 + 32·k/31`` along each axis (``k`` the posX or posY index). In
units of 1/31 px that is the integer ``496 + 32·k``, so an image is one of the 720 *sprites* (shape, scale,
orientation) shifted by a whole number of pixels plus one of 31 sub-pixel *phases* per axis (``phase = k mod 31``).
At setup, for every sprite, we sample the shape at the centres of a fine grid of spacing 1/31 px (the grid is the
same for every phase) and box-filter it with a 31×31 window: the count at fine position (Y, X) is the number of
samples, out of 961, that fall inside the pixel whose top-left corner sits there — that is, the pixel's area coverage
with 31×31 supersampling. A pixel is on where the coverage is > 0.92. All 31×31 phases of all pixels of a 32×32
window around the anchor (the shape never leaves it) are stored thresholded and bit-packed: one ``int32`` word per
(sprite, phase_y, phase_x, window row), bit c = window column c. That is 720·31·31·32·4 bytes = 88.6 MB.

``render`` is then a gather of 64 words per image (one per canvas row; rows outside the window read a zero word),
a shift of each word by the window's column origin into a 64-bit canvas row, and a byte → 8 pixels lookup.

Building the table does not point-test every fine sample: every shape is a union of at most three convex pieces, so
each fine row meets it in at most three disjoint intervals, computed in closed form; the row-wise box filter of an
interval is a clamp, and the column-wise one a cumulative sum. Orientations ``k`` and ``39 − k`` are mirror images
of each other (θ ↦ 2π − θ with every shape symmetric about its vertical axis), so only orientations 0–19 are
computed and 20–39 are mirrored (which also makes θ = 2π exactly equal to θ = 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import GroundTruthDataset, ImageStatistics

# ---------------------------------------------------------------- geometry (canonical shapes at scale 1, in pixels)
# Shape-local coordinates of a pixel offset (dx, dy) from the anchor: u = (cosθ·dx − sinθ·dy)/s,
# v = (sinθ·dx + cosθ·dy)/s, y pointing down.
SQUARE_HALF_SIDE = 10.0
ELLIPSE_SEMI_AXES = (13.2, 7.65)  # horizontal, vertical
HEART_DISC_RADIUS = 5.5
HEART_DISC_CENTRE = (4.5, -4.25)  # (±4.5, −4.25)
HEART_TRIANGLE = (-1.0, 9.75, 9.25)  # top edge v = −1 of half-width 9.75, apex (0, 9.25)
#: At scale s < 1 the real shapes are slightly fatter than s × (the scale-1 shape): they look like the scaled shape
#: grown by a constant ~``GROW`` px (in canonical units: grown by ``GROW·(1/s − 1)``, so nothing changes at s = 1).
#: Fitted to the real frames' foreground counts: without it small ellipses and hearts miss up to 12–14 pixels.
GROW = 0.5
#: Supersampling factor per pixel axis (fixed by the anchor arithmetic: positions are multiples of 1/31 px).
SUB = 31
#: A pixel is on where more than this many of its SUB×SUB samples are inside the shape (coverage > 0.92).
THRESHOLD = 0.92
_THRESH_COUNT = math.floor(THRESHOLD * SUB * SUB)  # 884: coverage > 0.92 ⇔ count > 884

# ---------------------------------------------------------------- table layout
_WIN = 32  # window side in pixels (the shape's radius is at most 10·√2 ≈ 14.2 px)
_NT = _WIN * SUB  # 992 fine positions per axis in the table (pixel corners)
_NF = _NT + SUB - 1  # 1022 fine sample cells per axis
# Table index j ↔ pixel corner at offset (j − _J0)/31 px from the anchor; fine cell i has its centre at
# (i − _J0 + 1/2)/31 px. For window pixel r (0..31) at phase p: j = 31·r + (30 − p).
_J0 = 16 * SUB + SUB - 1  # 526
_N_ORIENT = 40
_N_HALF = _N_ORIENT // 2  # orientations computed directly; the rest are mirror images
_EMPTY = 4096  # an empty interval is [_EMPTY, −_EMPTY]


def _interval_halfplanes(p, q, r, t, planes):
    """Where a row meets the convex polygon ∩ {α·u + β·v ≤ γ}, with u = p·dx + q and v = r·dx + t.

    Returns (lo, hi) in px (lo > hi when empty).
    """
    lo = torch.full_like(q, -math.inf)
    hi = torch.full_like(q, math.inf)
    for alpha, beta, gamma in planes:
        a = alpha * p + beta * r  # [B, 1]
        rhs = gamma - alpha * q - beta * t  # [B, ny]
        a = a.expand_as(rhs)
        pos, neg = a > 1e-12, a < -1e-12
        bound = rhs / torch.where(pos | neg, a, torch.ones_like(a))
        hi = torch.where(pos, torch.minimum(hi, bound), hi)
        lo = torch.where(neg, torch.maximum(lo, bound), lo)
        flat_out = ~(pos | neg) & (rhs < 0)  # the row is parallel to the edge and outside it
        lo = torch.where(flat_out, torch.full_like(lo, math.inf), lo)
    return lo, hi


def _interval_ellipse(p, q, r, t, uc, vc, a, b):
    """Where a row meets ((u − uc)/a)² + ((v − vc)/b)² ≤ 1. Returns (lo, hi) in px (lo > hi when empty)."""
    qa, tb = (q - uc) / a, (t - vc) / b
    pa, rb = p / a, r / b
    aa = pa * pa + rb * rb  # [B, 1], > 0
    bb = pa * qa + rb * tb
    cc = qa * qa + tb * tb - 1
    disc = bb * bb - aa * cc
    root = torch.sqrt(disc.clamp_min(0))
    lo = torch.where(disc >= 0, (-bb - root) / aa, torch.full_like(disc, math.inf))
    hi = torch.where(disc >= 0, (-bb + root) / aa, torch.full_like(disc, -math.inf))
    return lo, hi


def _to_cells(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """A closed interval in px → the fine cells whose centres lie in it, [a, b] (empty: a = _EMPTY, b = −_EMPTY)."""
    a = torch.ceil(lo.clamp(-100, 100) * SUB + (_J0 - 0.5))
    b = torch.floor(hi.clamp(-100, 100) * SUB + (_J0 - 0.5))
    a, b = a.clamp(0, _NF - 1), b.clamp(0, _NF - 1)
    empty = (a > b) | (lo > hi)
    a = torch.where(empty, torch.full_like(a, _EMPTY), a)
    b = torch.where(empty, torch.full_like(b, -_EMPTY), b)
    return a.long(), b.long()


def _row_cells(shape: int, scale: float, thetas: list[float], device: torch.device) -> tuple[Tensor, Tensor]:
    """Disjoint fine-cell intervals ``[a, b]`` of each fine row (``LongTensor[B, _NF, K]`` each, K ≤ 3 pieces)."""
    dt = torch.float64
    cos = torch.tensor([math.cos(th) for th in thetas], dtype=dt, device=device)[:, None]
    sin = torch.tensor([math.sin(th) for th in thetas], dtype=dt, device=device)[:, None]
    y = (torch.arange(_NF, dtype=dt, device=device) - _J0 + 0.5)[None, :] / SUB  # fine row centres, px
    p, r = cos / scale, sin / scale  # du/ddx, dv/ddx
    q, t = -sin * y / scale, cos * y / scale  # u, v at dx = 0
    g = GROW * (1 / scale - 1)
    pieces = []
    if shape == 0:  # square, grown by g on every side
        h = SQUARE_HALF_SIDE + g
        pieces.append(_interval_halfplanes(p, q, r, t, [(1, 0, h), (-1, 0, h), (0, 1, h), (0, -1, h)]))
    elif shape == 1:  # ellipse, semi-axes grown by g
        a, b = ELLIPSE_SEMI_AXES
        pieces.append(_interval_ellipse(p, q, r, t, 0.0, 0.0, a + g, b + g))
    else:  # heart: two discs and a triangle, each grown by g
        rad = HEART_DISC_RADIUS + g
        cu, cv = HEART_DISC_CENTRE
        pieces.append(_interval_ellipse(p, q, r, t, -cu, cv, rad, rad))
        pieces.append(_interval_ellipse(p, q, r, t, cu, cv, rad, rad))
        top, half, apex = HEART_TRIANGLE
        k1, k2 = apex - top, half  # side edges: k1·|u| + k2·v ≤ k2·apex (+ g·‖(k1, k2)‖ when grown)
        side = k2 * apex + g * math.hypot(k1, k2)
        pieces.append(_interval_halfplanes(p, q, r, t, [(0, -1, -(top - g)), (k1, k2, side), (-k1, k2, side)]))
    cells = [_to_cells(lo, hi) for lo, hi in pieces]
    a = torch.stack([c[0] for c in cells], dim=-1)
    b = torch.stack([c[1] for c in cells], dim=-1)
    if a.shape[-1] > 1:  # make the pieces disjoint: sort by left end, then cut off what earlier pieces cover
        a, order = a.sort(dim=-1)
        b = b.gather(-1, order)
        covered = b[..., :1]
        out_a = [a[..., :1]]
        for k in range(1, a.shape[-1]):
            out_a.append(torch.maximum(a[..., k : k + 1], covered + 1))
            covered = torch.maximum(covered, b[..., k : k + 1])
        a = torch.cat(out_a, dim=-1)
    return a, b


_BYTE_MAGIC = sum(1 << (7 * j) for j in range(8))  # 0x2040810204081
_REVERSED_BYTE = torch.tensor([int(f"{v:08b}"[::-1], 2) for v in range(256)], dtype=torch.uint8)


def _pack_words(bits: Tensor) -> Tensor:
    """``BoolTensor[..., 32]`` → ``IntTensor[...]`` whose bit c is ``bits[..., c]``.

    Each run of 8 bools is read as one little-endian int64 w = Σ b_k·2^(8k) (b_k ∈ {0, 1}); multiplying by
    Σ_j 2^(7j) puts b_k at bit 49 + k, and nothing else lands in bits 49–56 (the product wraps modulo 2^64,
    which leaves them alone).
    """
    w = bits.view(torch.int64)  # [..., 4]
    packed = ((w * _BYTE_MAGIC) >> 49).to(torch.uint8)  # [..., 4]: the cast keeps the low 8 bits
    return packed.view(torch.int32).squeeze(-1)


def _reverse_bits(words: Tensor) -> Tensor:
    """Reverse the 32 bits of each word of an ``IntTensor``, via a byte lookup."""
    b = words.unsqueeze(-1).view(torch.uint8)  # [..., 4], little-endian
    rev = _REVERSED_BYTE.to(words.device)[b.long()].flip(-1).contiguous()
    return rev.view(torch.int32).squeeze(-1)


def _mirror_words(words: Tensor) -> Tensor:
    """Words ``[..., qx, r]`` of a sprite → those of its mirror image (dx ↦ −dx).

    The mirror maps pixel corner x to −x − 1 px, i.e. table column X = 31·c + qx to 1021 − X, which is
    (qx, c) ↦ (29 − qx, 32 − c) for qx ≤ 29 (c = 0 gets nothing) and (30, c) ↦ (30, 31 − c).
    """
    rev = _reverse_bits(words)  # bit c ↦ bit 31 − c
    out = torch.empty_like(words)
    out[..., : SUB - 1, :] = rev[..., : SUB - 1, :].flip(-2) << 1  # bit 31 ↦ 32 falls off the int32
    out[..., SUB - 1, :] = rev[..., SUB - 1, :]
    return out


def _sprite_words(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Fine-cell intervals per row → packed tables ``IntTensor[B, 31, 31, 32]`` of the sprites and of their mirrors.

    Entry [qy, qx, r] has bit c set where the pixel whose corner is at table position (Y, X) = (31·r + qy, 31·c + qx)
    has coverage > 0.92.
    """
    bsz, device = a.shape[0], a.device
    words = torch.zeros(bsz, _NT, SUB, dtype=torch.int32, device=device)  # [B, Y, qx]
    valid = a <= b
    rows = torch.nonzero(valid.any(-1).any(0)).flatten()
    if rows.numel():
        y0, y1 = int(rows[0]), int(rows[-1]) + 1
        x0 = int(torch.where(valid, a, torch.full_like(a, _EMPTY)).min())
        x1 = int(torch.where(valid, b, torch.full_like(b, -_EMPTY)).max()) + 1
        # The shape must stay inside the window, with room for mirroring (columns X ≥ 30 map to 1021 − X ≤ 991).
        if min(x0, y0) < 2 * (SUB - 1) or max(x1, y1) > _NT:
            raise RuntimeError("dSprites: a shape leaves the 32 px window around its anchor")
        ty0 = y0 - (SUB - 1)  # table rows whose pixels can meet the shape: [ty0, y1)
        c0, c1 = (x0 - (SUB - 1)) // SUB, (x1 - 1) // SUB + 1  # window columns likewise: [c0, c1)
        i16 = torch.int16
        # table columns X = 31·c + qx, laid out [qx, c] so that the bits of one word end up contiguous
        xs = torch.arange(c0, c1, device=device)[None, :] * SUB + torch.arange(SUB, device=device)[:, None]
        xs = xs.flatten().to(i16)[None, None, :]
        # Row-wise box filter in closed form: H[y, X] = #{cells X..X+30 of fine row y inside the shape}.
        a16, b16 = a[:, y0:y1].to(i16), (b[:, y0:y1] + 1).to(i16)
        xs_end = xs + SUB
        ny, n = y1 - y0, y1 - ty0
        g = torch.zeros(bsz, SUB + ny + SUB - 1, xs.shape[-1], dtype=i16, device=device)  # H, 31 / 30 zero rows around
        h = g[:, SUB : SUB + ny]
        for k in range(a.shape[-1]):
            part = torch.minimum(xs_end, b16[..., k : k + 1])
            part.sub_(torch.maximum(xs, a16[..., k : k + 1])).clamp_min_(0)
            h.add_(part)
        # Column-wise box filter by cumulative sums (≤ 31·1022 < 2¹⁵: int16 is exact), for table rows ty0 .. y1 − 1.
        cs = g.cumsum_(dim=1)
        bits = torch.zeros(bsz, n, SUB, _WIN, dtype=torch.bool, device=device)  # [B, Y, qx, c]
        cov = (cs[:, SUB : SUB + n] - cs[:, :n]).view(bsz, n, SUB, c1 - c0)
        bits[..., c0:c1] = cov > _THRESH_COUNT
        words[:, ty0:y1] = _pack_words(bits)
    # [B, Y = 31·r + qy, qx] → [B, qy, qx, r]
    words = words.view(bsz, _WIN, SUB, SUB).permute(0, 2, 3, 1).contiguous()
    return words, _mirror_words(words)


def build_table(device: torch.device | str = "cpu", chunk: int = 5) -> Tensor:
    """The packed render table ``IntTensor[720·31·31·32 + 1]`` (a zero word at the end), built on ``device``."""
    device = torch.device(device)
    # The packing relies on int64 products wrapping modulo 2^64 and on little-endian views: check both here.
    probe = torch.rand(64, 32, generator=torch.Generator().manual_seed(0)) < 0.5
    expect = (probe.long() << torch.arange(32)).sum(-1)
    got = _pack_words(probe.to(device)).long().cpu() & 0xFFFFFFFF
    rev = _reverse_bits(_pack_words(probe.to(device))).long().cpu() & 0xFFFFFFFF
    if not (torch.equal(got, expect) and torch.equal(rev, (probe.flip(-1).long() << torch.arange(32)).sum(-1))):
        raise RuntimeError(f"dSprites: bit packing does not work as expected on {device}")
    orientations = torch.linspace(0, 2 * math.pi, _N_ORIENT, dtype=torch.float64).tolist()
    dims = (3, 6, _N_ORIENT, SUB, SUB, _WIN)
    flat = torch.zeros(math.prod(dims) + 1, dtype=torch.int32, device=device)  # + a zero word for off-window rows
    table = flat[:-1].view(dims)
    scales = torch.linspace(0.5, 1, 6, dtype=torch.float64).tolist()
    for shape in range(3):
        for si, scale in enumerate(scales):
            for k0 in range(0, _N_HALF, chunk):
                ks = list(range(k0, min(k0 + chunk, _N_HALF)))
                a, b = _row_cells(shape, scale, [orientations[k] for k in ks], device)
                words, mirrored = _sprite_words(a, b)
                table[shape, si, ks[0] : ks[-1] + 1] = words
                # orientation 39 − k = 2π − θ_k is the mirror image of orientation k
                table[shape, si, _N_ORIENT - 1 - ks[-1] : _N_ORIENT - ks[0]] = mirrored.flip(0)
    return flat


#: The rendered grid's images, counted once by ``DSprites(resolution).image_statistics()`` over all 737,280 factor
#: combinations (``tests/test_dsprites.py`` recounts them, marked slow). Not all images differ: at 64 px 21,264
#: images are rendered by two combinations, 64 by three and 160 by four (θ = 0 and θ = 2π, and small shapes whose
#: nearby orientations rasterise alike), so H = ln 737,280 − Σ m·ln m / 737,280 = 13.4693 nats, not ln 737,280 =
#: 13.5107. At 32 px pooling merges a few more (21,354 / 80 / 160), and the pooled pixels' own entropy
#: E Σ h(xᵢ) is 9.6967 nats per image.
IMAGE_STATISTICS: dict[int, ImageStatistics] = {
    64: ImageStatistics(combinations=737_280, distinct=715_408, entropy=13.469251222300587, pixel_entropy=0.0),
    32: ImageStatistics(combinations=737_280, distinct=715_286, entropy=13.469010472677166, pixel_entropy=9.696668060750087),
}


class DSprites(GroundTruthDataset):
    """Procedural dSprites at 64 px (or 32 px: the 64 px image average-pooled 2×2, values in {0, ¼, ½, ¾, 1})."""

    name = "dsprites"
    factor_names = ("shape", "scale", "orientation", "posX", "posY")
    factor_sizes = (3, 6, 40, 32, 32)

    @property
    def entropy_nats(self) -> float:
        """H of the image of a uniformly drawn factor combination, in nats (:data:`IMAGE_STATISTICS`)."""
        return IMAGE_STATISTICS[self.resolution].entropy

    def __init__(self, resolution: int = 64, n_test: int | None = None, split_seed: int = 0,
                 device: torch.device | str = "cpu"):  # fmt: skip
        if resolution not in (64, 32):
            raise ValueError(f"dataset.resolution: expected 64 or 32, got {resolution}")
        self.resolution = resolution
        self.example_shape = (1, resolution, resolution)
        self.device = torch.device(device)
        self._table = build_table(self.device)
        self._zero_word = self._table.numel() - 1
        self._make_luts(self.device)
        self._init_split(n_test, split_seed)
        self.to(device)

    def _make_luts(self, device: torch.device) -> None:
        byte = torch.arange(256, device=device)
        bits = ((byte[:, None] >> torch.arange(8, device=device)) & 1).float()  # [256, 8]: byte → 8 pixels
        self._lut64 = bits
        # 32 px: a byte of an even canvas row and the byte below it → 4 pooled pixels
        pair = bits[:, None, :] + bits[None, :, :]  # [256, 256, 8]
        self._lut32 = (pair.view(256, 256, 4, 2).sum(-1) / 4).reshape(65536, 4)

    def _move_tables(self, device: torch.device) -> None:
        self._table = self._table.to(device)
        self._lut64 = self._lut64.to(device)
        self._lut32 = self._lut32.to(device)

    @property
    def table_bytes(self) -> int:
        """Memory held by the render tables."""
        return sum(t.numel() * t.element_size() for t in (self._table, self._lut64, self._lut32))

    def render(self, factor_indices: Tensor) -> Tensor:
        if factor_indices.dim() != 2 or factor_indices.shape[1] != 5:
            shape = tuple(factor_indices.shape)
            raise ValueError(f"DSprites.render: expected factor indices of shape [n, 5], got {shape}")
        out_device = factor_indices.device
        f = factor_indices.to(self.device, torch.long)
        n = f.shape[0]
        sprite = (f[:, 0] * 6 + f[:, 1]) * _N_ORIENT + f[:, 2]
        px, py = f[:, 3], f[:, 4]
        # window origin in pixels (anchor 16 + 32k/31 → floor − 16) and table phase offset 30 − (k mod 31)
        x0, y0 = (px * 32) // SUB, (py * 32) // SUB
        qx, qy = (SUB - 1) - px % SUB, (SUB - 1) - py % SUB
        base = ((sprite * SUB + qy) * SUB + qx) * _WIN - y0  # word index of canvas row 0 (row r = i − y0)
        rows = torch.arange(64, device=self.device)
        rel = rows[None, :] - y0[:, None]
        idx = torch.where((rel >= 0) & (rel < _WIN), base[:, None] + rows[None, :], self._zero_word)
        words = self._table[idx].long() & 0xFFFFFFFF  # [n, 64]: bit c = window column c
        canvas = words << x0[:, None]  # bit j = canvas column j (x0 ≤ 32, so 64 bits suffice)
        byts = canvas.view(torch.uint8).view(n, 64, 8)  # little-endian: byte k = columns 8k..8k+7
        if self.resolution == 64:
            img = self._lut64.index_select(0, byts.reshape(-1).long()).view(n, 1, 64, 64)
        else:
            pair = byts[:, 0::2].long() * 256 + byts[:, 1::2].long()  # [n, 32, 8]
            img = self._lut32.index_select(0, pair.reshape(-1)).view(n, 1, 32, 32)
        return img.to(out_device)
