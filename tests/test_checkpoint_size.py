"""A finished trial's checkpoint holds what bvae pick --register needs, not the optimizer state it never uses again."""

import pytest
import torch

from bvae_core import Trainer
from bvae_core.trainer import load_model
from sweeps.trainable import _save_final

QUICKSTART_MODEL = {"arch": "mlp", "latent_dim": 6, "hidden": 256, "likelihood": {"kind": "bernoulli"}}


@pytest.mark.parametrize("schedule", [{"kind": "constant"}, {"kind": "linear_capacity", "c_max": 5, "ramp_steps": 4}])
def test_final_checkpoint_is_the_model_without_adam_state(tmp_path, schedule):
    trainer = Trainer({"dataset": {"name": "blobs", "resolution": 32}, "model": QUICKSTART_MODEL,  # 32 px, as quickstart
                       "objective": {"schedule": schedule},
                       "train": {"steps": 4, "eval_every": 4, "batch_size": 8, "device": "cpu", "threads": 1}})  # fmt: skip
    trainer.fit(4)
    trainer.save(tmp_path / "resumable.pt")
    _save_final(trainer, tmp_path / "final.pt")
    full, final = (tmp_path / "resumable.pt").stat().st_size, (tmp_path / "final.pt").stat().st_size
    params = sum(p.numel() for p in trainer.model.parameters())
    assert final < 4 * params + 100_000 < full  # the fp32 weights and little else; Adam keeps two more copies
    model, _ = load_model(tmp_path / "final.pt")  # what bvae pick --register loads
    z = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.decode_mean(z), trainer.model.eval().decode_mean(z))
    assert not [key for key in torch.load(tmp_path / "final.pt", weights_only=False) if "optimizer" in key]
    with pytest.raises(ValueError, match=r"final\.pt: a finished trial's checkpoint.*load_model\("):
        Trainer.load(tmp_path / "final.pt")  # one line saying what to use instead, not KeyError: 'optimizer'
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: not a bvae checkpoint"):
        load_model(tmp_path / "other.pt")
