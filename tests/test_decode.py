"""A trained model gives images in one call: decode_mean(z), sample(n), reconstruct(x) — also once saved and loaded
(load_model, the MLflow model of bvae pick --register)."""

import torch

from bvae_core import Trainer
from bvae_core.trainer import load_model


def _trainer(likelihood: dict, dataset: dict | None = None) -> Trainer:
    return Trainer({"dataset": dataset or {"name": "blobs", "resolution": 32, "grid": 8},
                    "model": {"arch": "mlp", "latent_dim": 3, "hidden": 32, "likelihood": likelihood},
                    "train": {"steps": 10, "eval_every": 10, "batch_size": 16, "device": "cpu", "threads": 1}})  # fmt: skip


def test_bernoulli_decode_mean_is_the_sigmoid_of_the_logits(tmp_path):
    trainer = _trainer({"kind": "bernoulli"})
    trainer.fit(10)
    model = trainer.model.eval()
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    logits = model.decode(z)
    assert logits.min() < 0  # logits, not images
    images = model.decode_mean(z)
    assert torch.allclose(images, torch.sigmoid(logits)) and images.min() >= 0 and images.max() <= 1
    x = trainer.dataset.figure_batch(4)
    assert torch.allclose(model.reconstruct(x), torch.sigmoid(model.decode(model.encode(x)[0])))
    trainer.save(tmp_path / "ckpt.pt")
    loaded, config = load_model(tmp_path / "ckpt.pt")
    assert loaded.likelihood_kind == "bernoulli" == config.model.likelihood.kind
    assert torch.allclose(loaded.decode_mean(z), images)
    a = loaded.sample(6, generator=torch.Generator().manual_seed(1))
    b = loaded.sample(6, generator=torch.Generator().manual_seed(1))
    assert a.shape == (6, 1, 32, 32) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1


def test_gaussian_decode_mean_is_the_decoder_mean(tmp_path):
    trainer = _trainer({"kind": "gaussian", "sigma": 1.0}, {"name": "gaussian", "eigenvalues": [4.0, 1.0],
                                                             "n_train": 200, "n_test": 50})  # fmt: skip
    trainer.save(tmp_path / "ckpt.pt")
    loaded, _ = load_model(tmp_path / "ckpt.pt")
    assert loaded.likelihood_kind == "gaussian"
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.decode_mean(z), loaded.decode(z))


def test_mlflow_pytorch_model_keeps_decode_mean(tmp_path):
    """What bvae pick --register saves (mlflow.pytorch, pickle format) loads back as a VAE that returns images."""
    import mlflow.pytorch

    trainer = _trainer({"kind": "bernoulli"})
    trainer.save(tmp_path / "ckpt.pt")
    model, _ = load_model(tmp_path / "ckpt.pt")
    mlflow.pytorch.save_model(model, str(tmp_path / "model"), serialization_format="pickle",
                              pip_requirements=["torch"])  # skips the requirement inference (a subprocess)
    loaded = mlflow.pytorch.load_model(str(tmp_path / "model"))
    z = torch.zeros(2, 3)
    assert loaded.likelihood_kind == "bernoulli"
    assert torch.allclose(loaded.decode_mean(z), torch.sigmoid(model.decode(z)))
