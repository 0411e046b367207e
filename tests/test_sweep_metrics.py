"""Disentanglement metrics in a sweep: computed at the end of each trial on a dataset with factors, logged with
their parameters, in the frontier table, pickable with --rule max-mig, and an R-D figure coloured by MIG."""

import json

import pytest

from mlflow import MlflowClient

from sweeps.cli import main
from sweeps.frontier import find_sweep, frontier_rows
from sweeps.runner import run_sweep
from sweeps.spec import parse_spec


@pytest.mark.slow
def test_sweep_computes_metrics_and_picks_by_mig(local_ray, tmp_path, capsys):
    data = {
        "name": "withmig",
        "base": {
            "seed": 0,
            "dataset": {"name": "blobs", "resolution": 32, "grid": 8, "n_test": 16},
            "model": {"arch": "mlp", "latent_dim": 3, "hidden": 64, "likelihood": {"kind": "bernoulli"}},
            "train": {"steps": 150, "batch_size": 32, "lr": 2.0e-3, "eval_every": 150, "n_eval": 16},
        },
        "search": {"trials": 3, "sampler": "grid", "concurrency": 2,
                   "space": {"objective.beta": {"choice": [0.5, 4.0, 32.0]}}},
        "eval": {"metrics": ["mig", "sap", "factorvae_score"], "preset": "fast"},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
        "storage": {"path": str(tmp_path / "ray_results")},
    }  # fmt: skip
    outcome = run_sweep(parse_spec(data))
    # an 8×8 grid: the 64 combinations are all among sap's 2,000 training draws, and the sweep says so
    assert "note: eval.metrics: sap test on points drawn like the training points" in capsys.readouterr().err
    client = MlflowClient(outcome.tracking_uri)
    rows = frontier_rows(client, find_sweep(client, "withmig"))
    assert len(rows) == 3
    for row in rows:
        run = client.get_run(row["run_id"])
        assert {"mig", "sap", "factorvae_score"} <= run.data.metrics.keys()
        assert 0.0 <= run.data.metrics["mig"] <= 1.0 and 0.0 <= run.data.metrics["factorvae_score"] <= 1.0
        assert run.data.params["eval.mig.num_bins"] == "20" and run.data.params["eval.metrics.preset"] == "fast"
        assert row["mig"] == run.data.metrics["mig"]
        assert "checkpoint/latent_factor_correlation.png" in {a.path for a in client.list_artifacts(row["run_id"], "checkpoint")}
    assert "rd_frontier_mig.png" in {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert main(["pick", "withmig", "--rule", "max-mig", "--tracking-uri", outcome.tracking_uri, "--json"]) == 0
    pick = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    frontier = [r for r in rows if r["on_frontier"]]
    assert pick["trial_id"] == max(frontier, key=lambda r: r["mig"])["trial_id"]
    assert pick["metrics"]["mig"] == max(r["mig"] for r in frontier)
    assert "objective.beta" in pick["params"] and not any(k.startswith("eval.") for k in pick["params"])
    assert pick["eval_params"]["mig.num_bins"] == "20"
    assert main(["pick", "withmig", "--rule", "max-mig", "--tracking-uri", outcome.tracking_uri]) == 0
    hyperparameters = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("hyperparameters:"))
    assert "objective.beta=" in hyperparameters and "eval." not in hyperparameters


@pytest.mark.slow
def test_a_file_datasets_factors_give_mig_and_the_correlation_figure(local_ray, tmp_path):
    import itertools

    import numpy as np
    import torch

    from bvae_core.data import Blobs

    factors = torch.tensor(list(itertools.product(range(8), range(8))))
    images = (Blobs(resolution=32, grid=8).render(factors).numpy() * 255).astype(np.uint8)
    np.savez(tmp_path / "grid.npz", images=images, factors=factors.numpy(), factor_names=np.array(["x", "y"]))
    data = {"name": "filemig",
            "base": {"dataset": {"name": "file", "path": str(tmp_path / "grid.npz")}, "model": {"arch": "mlp", "latent_dim": 3},
                     "train": {"steps": 60, "batch_size": 32, "eval_every": 60, "n_eval": 16}},
            "search": {"trials": 1, "space": {"objective.beta": {"log_uniform": [1e-1, 4]}}},
            "eval": {"metrics": ["mig", "dci"]},
            "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}, "storage": {"path": str(tmp_path / "ray_results")}}  # fmt: skip
    outcome = run_sweep(parse_spec(data))
    client = MlflowClient(outcome.tracking_uri)
    (row,) = frontier_rows(client, find_sweep(client, "filemig"))
    metrics = client.get_run(row["run_id"]).data.metrics
    assert 0.0 <= metrics["mig"] <= 1.0 and 0.0 <= metrics["dci/informativeness"] <= 1.0
    assert "checkpoint/latent_factor_correlation.png" in {a.path for a in client.list_artifacts(row["run_id"], "checkpoint")}


def test_metrics_need_a_dataset_with_factors():
    import pytest

    from sweeps.spec import SpecError

    with pytest.raises(SpecError, match="eval.metrics: not available on the dataset 'gaussian': it has no ground-truth factors"):
        parse_spec({"name": "x", "base": {"dataset": {"name": "gaussian", "eigenvalues": [1.0]},
                                          "model": {"arch": "linear", "likelihood": {"kind": "gaussian"}}},
                    "search": {"space": {"objective.beta": {"uniform": [1, 2]}}},
                    "eval": {"metrics": ["mig"]}})  # fmt: skip
    on_file = {"name": "x", "base": {"dataset": {"name": "file", "path": "d.npz"}},
               "search": {"space": {"objective.beta": {"uniform": [1, 2]}}}, "eval": {"metrics": ["mig", "dci", "sap"]}}
    assert parse_spec(on_file).eval.metrics == ["mig", "dci", "sap"]  # a file's rows and factors will do
    from bvae_core.metrics.compute import CODE_BASED
    from sweeps.spec import _CODE_BASED_METRICS

    assert _CODE_BASED_METRICS == CODE_BASED  # the spec's copy (it does not import scikit-learn) has not drifted
    with pytest.raises(SpecError, match="^eval.metrics: factorvae_score is not available on a file dataset: it renders"):
        parse_spec({**on_file, "eval": {"metrics": ["mig", "factorvae_score"]}})
