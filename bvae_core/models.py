"""Encoders and decoders. Each encoder maps x to (μ, log σ²) of a diagonal Gaussian q(z|x); each decoder maps z to
the parameters of p(x|z) (logits for Bernoulli, means for Gaussian)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _conv_stack_side(resolution: int) -> int:
    if resolution not in (32, 64):
        raise ValueError(f"model: conv architectures take 32 or 64 px images, got {resolution} px")
    return resolution // 16  # four stride-2 layers


class BurgessEncoder(nn.Module):
    """Burgess et al. 2018, §A.1: 4 conv layers (32 ch, 4×4, stride 2), 2 FC layers of 256, one FC layer giving the
    mean and log-variance of the latents. ReLU throughout."""

    def __init__(self, channels: int, resolution: int, latent_dim: int):
        super().__init__()
        side = _conv_stack_side(resolution)
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(),
        )  # fmt: skip
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * side * side, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, 2 * latent_dim),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x))


class BurgessDecoder(nn.Module):
    """The transpose of :class:`BurgessEncoder` (Burgess et al. 2018, §A.1)."""

    def __init__(self, channels: int, resolution: int, latent_dim: int):
        super().__init__()
        self.side = _conv_stack_side(resolution)
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, 32 * self.side * self.side), nn.ReLU(),
        )  # fmt: skip
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, 2, 1),
        )  # fmt: skip

    def forward(self, z: Tensor) -> Tensor:
        return self.deconv(self.fc(z).view(-1, 32, self.side, self.side))


def _bn_block(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.LeakyReLU(0.01)]


class ConvEncoder(nn.Module):
    """The tutorial's variant: 4 conv layers (3×3, stride 2; 32→64→128→256 ch) with BatchNorm and LeakyReLU(0.01)."""

    def __init__(self, channels: int, resolution: int, latent_dim: int):
        super().__init__()
        side = _conv_stack_side(resolution)
        widths = [channels, 32, 64, 128, 256]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths, widths[1:]):
            layers += _bn_block(nn.Conv2d(cin, cout, 3, 2, 1), cout)
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(256 * side * side, 2 * latent_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: FC to 256×s×s, 4 transposed convs with BatchNorm/LeakyReLU, a 3×3 output conv."""

    def __init__(self, channels: int, resolution: int, latent_dim: int):
        super().__init__()
        self.side = _conv_stack_side(resolution)
        self.fc = nn.Linear(latent_dim, 256 * self.side * self.side)
        widths = [256, 128, 64, 32, 32]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths, widths[1:]):
            layers += _bn_block(nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1), cout)
        self.net = nn.Sequential(*layers, nn.Conv2d(32, channels, 3, padding=1))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.fc(z).view(-1, 256, self.side, self.side))


class MLPEncoder(nn.Module):
    def __init__(self, example_shape: tuple[int, ...], latent_dim: int, hidden: int):
        super().__init__()
        d = math.prod(example_shape)
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 2 * latent_dim),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    def __init__(self, example_shape: tuple[int, ...], latent_dim: int, hidden: int):
        super().__init__()
        self.example_shape = tuple(example_shape)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, math.prod(example_shape)),
        )  # fmt: skip

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.example_shape)


class LinearEncoder(nn.Module):
    """q(z|x) = N(Ax + a, diag exp(Bx + b)): with a linear decoder and Gaussian data this reaches the Shannon bound."""

    def __init__(self, example_shape: tuple[int, ...], latent_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(example_shape), 2 * latent_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LinearDecoder(nn.Module):
    def __init__(self, example_shape: tuple[int, ...], latent_dim: int):
        super().__init__()
        self.example_shape = tuple(example_shape)
        self.net = nn.Linear(latent_dim, math.prod(example_shape))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.example_shape)


class VAE(nn.Module):
    """An encoder/decoder pair with the reparameterisation z = μ + σ·ε (Kingma & Welling 2014, §2.4)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int):
        super().__init__()
        self.encoder, self.decoder, self.latent_dim = encoder, decoder, latent_dim

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) of q(z|x), each ``[n, latent_dim]``."""
        mu, logvar = self.encoder(x).float().chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Parameters of p(x|z): logits (Bernoulli) or means (Gaussian)."""
        return self.decoder(z)

    def forward(self, x: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(decoder output, μ, log σ²); ``eps`` is the reparameterisation noise (None: decode the posterior mean)."""
        mu, logvar = self.encode(x)
        z = mu if eps is None else mu + (0.5 * logvar).exp() * eps
        return self.decode(z).float(), mu, logvar


def build_model(arch: str, example_shape: tuple[int, ...], latent_dim: int, hidden: int = 256) -> VAE:
    """Build a :class:`VAE` for examples of ``example_shape`` (``(C, H, W)`` images or ``(d,)`` vectors)."""
    if arch in ("burgess", "conv"):
        if len(example_shape) != 3 or example_shape[1] != example_shape[2]:
            raise ValueError(f"model.arch: {arch} needs square images (C, H, W), got examples of shape {example_shape}")
        channels, resolution = example_shape[0], example_shape[1]
        enc_cls, dec_cls = (BurgessEncoder, BurgessDecoder) if arch == "burgess" else (ConvEncoder, ConvDecoder)
        return VAE(enc_cls(channels, resolution, latent_dim), dec_cls(channels, resolution, latent_dim), latent_dim)
    if arch == "mlp":
        return VAE(MLPEncoder(example_shape, latent_dim, hidden), MLPDecoder(example_shape, latent_dim, hidden), latent_dim)
    if arch == "linear":
        return VAE(LinearEncoder(example_shape, latent_dim), LinearDecoder(example_shape, latent_dim), latent_dim)
    raise ValueError(f"model.arch: expected burgess, conv, mlp or linear, got {arch!r}")
