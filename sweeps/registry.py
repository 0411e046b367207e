"""Register a picked trial's model in the MLflow Model Registry (``bvae pick --register NAME``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .frontier import CHECKPOINT_ARTIFACT, SweepRef

PICK_TAG = "bvae.pick."  # + rule, trial_id, run_id, beta, rate, distortion, model: the last pick, on the parent run


class RegistryNameError(ValueError):
    """A registered-model name or alias the MLflow Model Registry would refuse; the message names the flag."""


def check_registry_names(name: str, alias: str) -> None:
    """Refuse, before anything is written, a model name or alias that the registry would refuse after the model was
    logged (MLflow's own rules: no '/' or ':' in a name; aliases of letters, digits, '_' and '-', not 'latest' or
    'v<N>')."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import (
        _validate_model_alias_name,
        _validate_model_alias_name_reserved,
        _validate_model_name,
    )

    if not name.strip():
        raise RegistryNameError(f"--register: expected a model name, got {name!r}")
    for flag, checks, value in (("--register", (_validate_model_name,), name),
                                ("--alias", (_validate_model_alias_name, _validate_model_alias_name_reserved), alias)):
        try:
            for check in checks:
                check(value)
        except MlflowException as e:
            raise RegistryNameError(f"{flag}: {e.message}") from None


class CheckpointMissing(RuntimeError):
    """A picked run's checkpoint is not in the artifact store (exit 1: the store's state, not the user's input)."""


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
        try:
            checkpoint = mlflow.artifacts.download_artifacts(run_id=row["run_id"], artifact_path=CHECKPOINT_ARTIFACT,
                                                             dst_path=folder, tracking_uri=client.tracking_uri)  # fmt: skip
        except (MlflowException, OSError) as e:  # the run is in the store, its files are not (an emptied bucket, …)
            where = client.get_run(row["run_id"]).info.artifact_uri
            raise CheckpointMissing(f"--register: the checkpoint of trial {row['trial_id']} (run {row['run_id']}) "
                                    f"cannot be read from its artifacts at {where}: {' '.join(str(e).split())[:200]}; "
                                    f"the run's files are gone from the artifact store (nothing was registered)"
                                    ) from None  # fmt: skip
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
    tags = {"bvae.sweep": row["sweep"], "bvae.trial_id": row["trial_id"], "bvae.beta": row.get("beta")}
    version = client.create_model_version(name, source=source, run_id=row["run_id"],
                                          tags={k: str(v) for k, v in tags.items() if v is not None})  # fmt: skip
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def record_pick(client, ref: SweepRef, row: dict[str, Any], rule: str, model: str | None = None) -> None:
    """Note the pick on the sweep's parent run (tags ``bvae.pick.*``): a value the pick lacks (``beta`` of a
    controlled-capacity trial, ``model`` without ``--register``) is no tag, and an earlier pick's is removed."""
    beta = row.get("beta")
    values = {"rule": rule, "trial_id": row["trial_id"], "run_id": row["run_id"],
              "beta": None if beta is None else str(beta), "rate": f"{row['rate']:.6g}",
              "distortion": f"{row['distortion']:.6g}", "model": model}  # fmt: skip
    tags = {PICK_TAG + k: v for k, v in values.items() if v is not None}
    stale = [k for k in client.get_run(ref.parent_run_id).data.tags if k.startswith(PICK_TAG) and k not in tags]
    for key in stale:
        client.delete_tag(ref.parent_run_id, key)
    for key, value in tags.items():
        client.set_tag(ref.parent_run_id, key, value)
