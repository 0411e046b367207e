"""Every architecture at 32 and 64 px and any latent size; the Burgess model is exactly the paper's §A.1."""

import pytest
import torch
from torch import nn

from bvae_core.models import build_model


@pytest.mark.parametrize("arch", ["burgess", "conv", "mlp", "linear"])
@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("latent_dim", [1, 7])
def test_shapes(arch, resolution, latent_dim):
    model = build_model(arch, (1, resolution, resolution), latent_dim)
    x = torch.rand(2, 1, resolution, resolution)
    out, mu, logvar = model(x, torch.randn(2, latent_dim))
    assert out.shape == x.shape and mu.shape == logvar.shape == (2, latent_dim)
    loss = out.sum() + mu.sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_vector_models():
    for arch in ("mlp", "linear"):
        out, mu, _ = build_model(arch, (5,), 3)(torch.randn(4, 5), torch.randn(4, 3))
        assert out.shape == (4, 5) and mu.shape == (4, 3)
    with pytest.raises(ValueError, match="model.arch"):
        build_model("burgess", (5,), 3)


def test_burgess_is_the_papers_architecture():
    model = build_model("burgess", (1, 64, 64), 10)
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [(32, (4, 4), (2, 2))] * 4
    fcs = [m for m in model.encoder.modules() if isinstance(m, nn.Linear)]
    assert [f.out_features for f in fcs] == [256, 256, 20]  # 2 FC of 256, then mean and log-variance of 10 latents
    assert all(isinstance(m, (nn.ReLU, nn.Conv2d, nn.Linear, nn.Sequential, nn.Flatten)) for m in model.encoder.modules()
               if m is not model.encoder)  # fmt: skip
    deconvs = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(d.out_channels, d.kernel_size, d.stride) for d in deconvs] == [(32, (4, 4), (2, 2))] * 3 + [(1, (4, 4), (2, 2))]
    assert [f.out_features for f in model.decoder.modules() if isinstance(f, nn.Linear)] == [256, 256, 32 * 4 * 4]


def test_conv_variant_uses_batchnorm_and_leaky_relu():
    model = build_model("conv", (3, 64, 64), 8)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8
    assert all(m.negative_slope == 0.01 for m in model.modules() if isinstance(m, nn.LeakyReLU))
    assert model(torch.rand(2, 3, 64, 64), torch.randn(2, 8))[0].shape == (2, 3, 64, 64)
