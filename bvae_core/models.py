"""Encoders and decoders. Each encoder maps x to (μ, log σ²) of a diagonal Gaussian q(z|x); each decoder maps z to
the parameters of p(x|z) (logits for Bernoulli, means for Gaussian)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def relu_init_(module: nn.Module) -> nn.Module:
    """He et al. 2015 (eq. 10) initialisation for a ReLU network, in place: every Linear, Conv2d and ConvTranspose2d
    weight ~ N(0, 2/fan_in) (``kaiming_normal_``, fan-in as torch reads it off the weight), every bias 0. Returns
    ``module``.

    Why the Burgess model needs it: PyTorch's default (``kaiming_uniform_(a=√5)``: Var = 1/(3·fan_in), biases
    ±1/√fan_in) multiplies the signal's variance by ~1/6 at every ReLU layer. Through the encoder's 6 hidden layers
    E[z|x] hardly depends on x at initialisation (std over x ≈ 3e-4 on dSprites, against 0.1–0.2 here), the random
    biases dominate, and 25–65 % of the fully connected units are dead for every input (measured; they stay dead).
    This is the initialisation of the known-good PyTorch reproductions of Burgess et al. (He-normal, zero biases).
    It is not what made the capacity objective fail — that was the optimiser (``objectives.capacity_multiplier_step``) — but it
    keeps every unit trainable, which matters most for β-VAE at small β."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


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
        relu_init_(self)

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
        relu_init_(self)

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
    """q(z|x) = N(Ax + a, diag exp(b)): the linear VAE of Lucas et al. (2019, §4), whose posterior variance does not
    depend on x. With a linear decoder and Gaussian data its optimum is the Shannon bound. (A variance exp(Bx + b)
    has the same optimum, B = 0, but on a steep spectrum — eigenvalues 100 … 1e-4 — exp(Bx) starts at thousands of
    nats of KL and Adam takes tens of thousands of steps to undo it.)"""

    def __init__(self, example_shape: tuple[int, ...], latent_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(example_shape), latent_dim))
        self.logvar = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, x: Tensor) -> Tensor:
        mu = self.net(x)
        return torch.cat([mu, self.logvar.to(mu.dtype).expand_as(mu)], dim=1)


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
        """Parameters of p(x|z): logits (Bernoulli) or means (Gaussian). For images use :meth:`decode_mean`."""
        return self.decoder(z)

    #: The likelihood p(x|z) the model was trained with, ``bernoulli`` or ``gaussian``: what :meth:`decode_mean`
    #: needs. Set by the trainer and by ``load_model`` from the run's config.
    likelihood_kind: str = "bernoulli"

    @torch.no_grad()
    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x|z]: images (Bernoulli: sigmoid of the logits, probabilities in [0, 1]; Gaussian: the means)."""
        out = self.decode(z).float()
        return torch.sigmoid(out) if self.likelihood_kind == "bernoulli" else out

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` examples from the model: z ~ N(0, I) (the prior), decoded by :meth:`decode_mean`."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return self.decode_mean(z)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x|z] at the posterior mean z = μ(x): what the reconstruction figures show."""
        return self.decode_mean(self.encode(x)[0])

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
