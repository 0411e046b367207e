"""Register a picked trial's model in the MLflow Model Registry (``bvae pick --register NAME``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .frontier import CHECKPOINT_ARTIFACT, SweepRef


def register_pick(client, row: dict[str, Any], name: str, alias: str = "picked") -> str:
    """Log the trial's model (``mlflow.pytorch`` flavour: ``mlflow.pytorch.load_model("models:/NAME@ALIAS")``
    returns the VAE, with ``encode(x) -> (μ, log σ²)``, ``decode(z)`` (logits for Bernoulli) and, knowing its
    likelihood from the checkpoint's config, ``decode_mean(z)`` / ``sample(n)`` giving images) to its run as
    ``model/``, create a model version from it, and point ``alias`` at that version. Returns the version."""
    import mlflow.artifacts
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    from bvae_core.trainer import load_model

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = mlflow.artifacts.download_artifacts(run_id=row["run_id"], artifact_path=CHECKPOINT_ARTIFACT,
                                                         dst_path=folder, tracking_uri=client.tracking_uri)  # fmt: skip
        model, config = load_model(checkpoint)
        model_dir = Path(folder) / "model"
        # pickle format keeps the VAE class (encode/decode), unlike the traced pt2 graph
        mlflow.pytorch.save_model(model, str(model_dir), serialization_format="pickle")
        client.log_artifacts(row["run_id"], str(model_dir), artifact_path="model")
    try:
        client.create_registered_model(name, description="β-VAEs picked from rate-distortion sweeps (bvae pick)")
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code) and "already exists" not in str(e):
            raise
    source = f"{client.get_run(row['run_id']).info.artifact_uri.rstrip('/')}/model"
    version = client.create_model_version(name, source=source, run_id=row["run_id"], tags={
        "bvae.sweep": row["sweep"], "bvae.trial_id": row["trial_id"], "bvae.beta": str(row.get("beta"))})  # fmt: skip
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def record_pick(client, ref: SweepRef, row: dict[str, Any], rule: str, model: str | None = None) -> None:
    """Note the pick on the sweep's parent run (tags ``bvae.pick.*``)."""
    tags = {"bvae.pick.rule": rule, "bvae.pick.trial_id": row["trial_id"], "bvae.pick.run_id": row["run_id"],
            "bvae.pick.beta": str(row.get("beta")), "bvae.pick.rate": f"{row['rate']:.6g}",
            "bvae.pick.distortion": f"{row['distortion']:.6g}"}  # fmt: skip
    if model:
        tags["bvae.pick.model"] = model
    for key, value in tags.items():
        client.set_tag(ref.parent_run_id, key, value)
