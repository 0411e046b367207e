"""The frontier: Pareto ranks and hypervolume against brute force (property-based), the knee on synthetic convex
fronts, each pick rule, and — on a finished tiny sweep with a real local Ray and MLflow store — the live frontier on
the parent run, the Parquet table, `bvae frontier` / `bvae pick`, and a registered model loaded back by alias."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from sweeps.cli import main
from sweeps.frontier import frontier_rows, find_sweep, hypervolume_2d, pareto_ranks, read_parquet, to_table, write_parquet
from sweeps.pick import PickError, apply_rule, knee, no_knee_reason, parse_rule
from sweeps.registry import record_pick
from sweeps.store import SweepRef

points_2d = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=0, max_size=25).map(
    lambda pts: np.array(pts, dtype=float).reshape(-1, 2))


def brute_force_ranks(points: np.ndarray) -> list[int]:
    ranks, remaining, rank = [-1] * len(points), set(range(len(points))), 0
    while remaining:
        front = {i for i in remaining if not any(
            all(points[j] <= points[i]) and any(points[j] < points[i]) for j in remaining)}  # fmt: skip
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
    return ranks


def brute_force_hypervolume(points: np.ndarray, ref: tuple[float, float]) -> float:
    xs = sorted({*points[:, 0].tolist(), ref[0]}) if len(points) else [ref[0]]
    ys = sorted({*points[:, 1].tolist(), ref[1]}) if len(points) else [ref[1]]
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(zip(xs, xs[1:]), zip(ys, ys[1:])):
        if x1 <= ref[0] and y1 <= ref[1] and any(px <= x0 and py <= y0 for px, py in points):
            area += (x1 - x0) * (y1 - y0)
    return area


@settings(max_examples=200, deadline=None)
@given(points_2d)
def test_pareto_ranks_match_brute_force(points):
    assert pareto_ranks(points).tolist() == brute_force_ranks(points)


@settings(max_examples=200, deadline=None)
@given(points_2d, st.tuples(st.integers(0, 14), st.integers(0, 14)))
def test_hypervolume_matches_brute_force(points, ref):
    assert hypervolume_2d(points, ref) == pytest.approx(brute_force_hypervolume(points, ref))


def test_hypervolume_of_a_staircase():
    assert hypervolume_2d(np.array([[1.0, 3.0], [2.0, 1.0]]), (4.0, 4.0)) == pytest.approx(3 * 1 + 2 * 2)
    assert hypervolume_2d(np.array([[5.0, 1.0]]), (4.0, 4.0)) == 0.0  # beyond the reference


def _rows(xy, **extra):
    return [{"trial_id": f"t{i}", "run_id": f"r{i}", "sweep": "s", "rate": x, "distortion": y, "beta": 1.0 + i,
             "status": "completed", "on_frontier": True, "pareto_rank": 0, **{k: v[i] for k, v in extra.items()}}
            for i, (x, y) in enumerate(xy)]  # fmt: skip


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_knee_of_a_symmetric_convex_front_is_its_middle(scale):
    rates = np.geomspace(0.1, 10, 41)
    points = _rows([(scale * r, 1 / r) for r in rates])
    assert knee(points)["rate"] == pytest.approx(scale * 1.0)


def test_knee_of_an_l_shaped_front_is_the_corner():
    points = _rows([(0, 10), (0.5, 5), (1, 1), (5, 0.6), (10, 0.2)])
    assert knee(points)["rate"] == 1


def test_the_knee_is_below_the_chord_never_a_bulge_above_it():
    """Kneedle's knee is the farthest point *under* the chord; a point far above it (a poor trade-off) is not it —
    the absolute distance picked (9, 35) here."""
    assert knee(_rows([(0, 100), (5, 40), (9, 35), (10, 0)]))["rate"] == 5
    assert knee(_rows([(0, 10), (4, 9.5), (8, 8), (10, 0)]))["rate"] == 0  # concave: no knee, the lowest rate
    assert "below the chord" in no_knee_reason(_rows([(0, 10), (4, 9.5), (8, 8), (10, 0)]))
    assert no_knee_reason(_rows([(0, 100), (5, 40), (9, 35), (10, 0)])) is None


def test_a_frontier_of_fewer_than_three_points_has_no_knee_and_says_so():
    two = _rows([(5, 40), (1, 90)])
    assert knee(two)["rate"] == 1 and "2 points, too few for a knee" in no_knee_reason(two)
    assert "1 point," in no_knee_reason(_rows([(5, 40)]))


def test_pick_rules():
    rows = _rows([(1, 9), (3, 4), (6, 2), (9, 1)], mig=[0.1, 0.5, 0.4, 0.2])
    rows.append({**rows[0], "trial_id": "dominated", "rate": 7, "distortion": 5, "on_frontier": False, "pareto_rank": 1})
    assert apply_rule(rows, parse_rule("max-rate=6.5"))["trial_id"] == "t2"
    assert apply_rule(rows, parse_rule("max-distortion=4"))["trial_id"] == "t1"
    assert apply_rule(rows, parse_rule("max-mig"))["trial_id"] == "t1"
    assert apply_rule(rows, parse_rule("max-mig"), max_distortion=3)["trial_id"] == "t2"
    assert apply_rule(rows, parse_rule("knee"))["on_frontier"]
    with pytest.raises(PickError, match="closest is trial t0"):
        apply_rule(rows, parse_rule("max-rate=0.5"))
    with pytest.raises(PickError, match="closest is trial t3"):
        apply_rule(rows, parse_rule("max-distortion=0.1"))
    for bad in ("kneee", "max-rate=abc", "max-rate"):
        with pytest.raises(PickError, match="--rule"):
            parse_rule(bad)
    for backwards in ("max-nelbo", "max-seed", "max-pareto_rank"):  # the worst fit, or a tie-broken arbitrary point
        with pytest.raises(PickError, match=f"--rule {backwards}: max-METRIC maximises a score where higher is better"):
            parse_rule(backwards)
    assert parse_rule("max-dci/disentanglement").metric == "dci_disentanglement"


def test_a_pick_of_a_collapsed_model_says_so():
    """``knee`` on a frontier without one fell back to its lowest rate — a model with no active unit — and said
    only that there was no knee."""
    from sweeps.pick import collapse_note

    collapsed = {"trial_id": "t0", "rate": 0.0053, "distortion": 114.0, "active_units": 0.0}
    note = collapse_note(collapsed)
    assert note.startswith("trial t0 has no active latent unit (rate 0.0053 nats): its posterior has collapsed")
    assert collapse_note({**collapsed, "active_units": 2.0}) is None
    assert collapse_note({k: v for k, v in collapsed.items() if k != "active_units"}) is None  # not measured


def test_pick_tags_hold_only_what_the_pick_has(tmp_path):
    """A controlled-capacity pick has no β: no ``bvae.pick.beta`` (not 'None'), and none left from an earlier pick."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("tags", artifact_location=str(tmp_path / "artifacts"))
    ref = SweepRef("tags", client.create_run(experiment, tags={"bvae.sweep": "tags"}).info.run_id, experiment)
    beta_row, capacity_row = _rows([(1, 9), (3, 4)])
    capacity_row["beta"] = None

    def pick_tags() -> dict[str, str]:
        return {k: v for k, v in client.get_run(ref.parent_run_id).data.tags.items() if k.startswith("bvae.pick.")}

    record_pick(client, ref, beta_row, "max-rate=2", model="models:/vae@picked")
    assert pick_tags()["bvae.pick.beta"] == "1.0" and pick_tags()["bvae.pick.model"] == "models:/vae@picked"
    record_pick(client, ref, capacity_row, "knee")
    assert pick_tags() == {"bvae.pick.rule": "knee", "bvae.pick.trial_id": "t1", "bvae.pick.run_id": "r1",
                           "bvae.pick.rate": "3", "bvae.pick.distortion": "4"}  # fmt: skip


# ---------------------------------------------------------------- on a finished tiny sweep
@pytest.fixture(scope="module")
def finished_sweep(local_ray, tmp_path_factory):
    from sweeps.runner import run_sweep
    from sweeps.spec import parse_spec

    tmp = tmp_path_factory.mktemp("frontier")
    data = {
        "name": "tinyfront",
        "base": {
            "seed": 0,
            "dataset": {"name": "gaussian", "eigenvalues": [4.0, 2.0, 1.0, 0.5], "n_train": 5000, "n_test": 1000},
            "model": {"arch": "linear", "latent_dim": 4, "likelihood": {"kind": "gaussian", "sigma": 1.0}},
            "train": {"steps": 400, "batch_size": 128, "lr": 5.0e-3, "eval_every": 200},
        },
        "search": {"trials": 5, "sampler": "grid", "concurrency": 2,
                   "space": {"objective.beta": {"choice": [0.2, 0.5, 1.0, 2.0, 6.0]}}},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db"},
        "storage": {"path": str(tmp / "ray_results")},
    }  # fmt: skip
    outcome = run_sweep(parse_spec(data))
    return outcome, tmp


@pytest.mark.slow
def test_live_frontier_on_the_parent_run(finished_sweep):
    outcome, _ = finished_sweep
    client = MlflowClient(outcome.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    history = client.get_metric_history(parent.info.run_id, "hypervolume")
    assert [m.step for m in history] == [1, 2, 3, 4, 5]
    values = [m.value for m in history]
    assert all(b >= a - 1e-9 for a, b in zip(values, values[1:]))  # fixed reference: never decreases
    assert values[-1] > 0
    assert float(parent.data.params["frontier.reference_rate"]) == 50.0
    # the default reference distortion is the zero-rate distortion of the source: Σλ/2 + d/2·ln 2π
    assert float(parent.data.params["frontier.reference_distortion"]) == pytest.approx(7.5 / 2 + 2 * math.log(2 * math.pi), rel=0.05)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"frontier.parquet", "rd_frontier.png", "rd_frontier.html", "spec.yaml"} <= artifacts
    html = client.download_artifacts(parent.info.run_id, "rd_frontier.html")
    text = open(html, encoding="utf-8").read()
    assert "Shannon R(D)" in text and "latent = 4" in text and "trial " in text  # the bound and the hover text
    assert "β = " in text or "\\u03b2 = " in text
    rows = frontier_rows(client, find_sweep(client, "tinyfront"))
    assert len(rows) == 5 and sum(r["on_frontier"] for r in rows) >= 3
    assert client.get_metric_history(parent.info.run_id, "frontier_size")[-1].value == sum(r["on_frontier"] for r in rows)
    for row in rows:
        run = client.get_run(row["run_id"])
        assert run.data.tags["bvae.on_frontier"] == ("true" if row["on_frontier"] else "false")
        assert run.data.metrics["pareto_rank"] == row["pareto_rank"]
        assert {"checkpoint/checkpoint.pt", "checkpoint/kl_per_dim.png"} <= {
            a.path for a in client.list_artifacts(row["run_id"], "checkpoint")}
    # β orders the points along the frontier: more β, less rate
    by_beta = sorted(rows, key=lambda r: r["beta"])
    assert [r["rate"] for r in by_beta] == sorted((r["rate"] for r in rows), reverse=True)


def test_frontier_table_equals_the_one_read_back_from_parquet(finished_sweep, tmp_path, capsys):
    outcome, tmp = finished_sweep
    uri = outcome.tracking_uri
    out = tmp_path / "frontier.parquet"
    assert main(["frontier", "tinyfront", "--tracking-uri", uri, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "on the frontier" in printed and "trial" in printed
    client = MlflowClient(uri)
    live = frontier_rows(client, find_sweep(client, "tinyfront"))
    table = to_table(live)
    read = read_parquet(out)
    assert read == table.to_pylist()
    assert list(read[0])[:16] == ["sweep", "trial_id", "run_id", "beta", "latent_dim", "schedule", "c_max", "gamma",
                                  "seed", "rate", "distortion", "nelbo", "active_units", "on_frontier", "pareto_rank",
                                  "checkpoint_uri"]  # fmt: skip
    assert main(["frontier", "tinyfront", "--tracking-uri", uri, "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert [r["trial_id"] for r in as_json] == [r["trial_id"] for r in read]


def test_pick_and_register_then_load_by_alias(finished_sweep, capsys, monkeypatch):
    outcome, _ = finished_sweep
    uri = outcome.tracking_uri
    assert main(["pick", "tinyfront", "--rule", "knee", "--tracking-uri", uri, "--json",
                 "--register", "tinyfront-vae"]) == 0  # fmt: skip
    pick = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"trial_id", "run_id", "beta", "rate", "distortion", "params", "checkpoint_uri"} <= pick.keys()
    assert pick["registered_model"]["uri"] == "models:/tinyfront-vae@picked"
    client = MlflowClient(uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["bvae.pick.trial_id"] == pick["trial_id"] and parent.data.tags["bvae.pick.rule"] == "knee"
    import mlflow
    import mlflow.pytorch

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model("models:/tinyfront-vae@picked")
    x = torch.randn(5, 4)
    mu, logvar = model.encode(x)
    assert mu.shape == (5, 4) and model.decode(mu).shape == (5, 4)
    # a rule no point satisfies: exit 2 and the closest point
    assert main(["pick", "tinyfront", "--rule", "max-rate=0.0001", "--tracking-uri", uri]) == 2
    assert "closest is trial" in capsys.readouterr().err
    assert main(["pick", "nosuchsweep", "--rule", "knee", "--tracking-uri", uri]) == 2
    assert "no sweep named 'nosuchsweep'" in capsys.readouterr().err


def test_mlflow_tracking_uri_is_the_default_store_and_a_bare_host_port_is_refused(finished_sweep, tmp_path, capsys,
                                                                                  monkeypatch):  # fmt: skip
    """Without --tracking-uri (and no spec naming one) frontier and pick read $MLFLOW_TRACKING_URI, as MLflow does
    (the dev stack's `env` exports it); a URI without its scheme is one line, naming where it came from."""
    outcome, _ = finished_sweep
    monkeypatch.chdir(tmp_path)  # no mlflow.db here: the default store would not hold the sweep
    monkeypatch.setenv("MLFLOW_TRACKING_URI", outcome.tracking_uri)
    assert main(["frontier", "tinyfront", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) >= 1
    assert main(["pick", "tinyfront", "--rule", "knee", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["trial_id"]
    assert not list(tmp_path.iterdir())  # no store made here
    for argv, source in ((["--tracking-uri", "127.0.0.1:5000"], "--tracking-uri"), ([], "$MLFLOW_TRACKING_URI")):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "127.0.0.1:5000")
        assert main(["frontier", "tinyfront", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"bvae frontier: error: {source}: '127.0.0.1:5000' is a server address without its scheme; "
                       f"expected http://127.0.0.1:5000 (or a local path / sqlite:///FILE.db)"], err  # fmt: skip


def test_frontier_and_pick_read_a_spec_file_with_the_set_values_the_sweep_ran_with(finished_sweep, tmp_path, capsys):
    """A sweep run with ``--set name=…`` is found from its spec file with the same ``--set`` (as sweep status/logs/stop
    do); without it, or with --set and a sweep name, one line."""
    import yaml

    outcome, _ = finished_sweep
    client = MlflowClient(outcome.tracking_uri)
    spec = yaml.safe_load(open(client.download_artifacts(outcome.parent_run_id, "spec.yaml", str(tmp_path))))
    spec_file = tmp_path / "renamed.yaml"
    spec_file.write_text(yaml.safe_dump({**spec, "name": "renamed"}))
    assert main(["frontier", str(spec_file), "--set", "name=tinyfront", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 5
    assert main(["pick", str(spec_file), "--set", "name=tinyfront", "--rule", "knee", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["trial_id"]
    assert main(["frontier", str(spec_file)]) == 2  # its experiment (by default its name) is not in the store
    assert f"error: {spec_file}: no MLflow experiment 'renamed' in " in capsys.readouterr().err
    assert main(["frontier", "tinyfront", "--set", "name=x", "--tracking-uri", outcome.tracking_uri]) == 2
    assert "--set: applies to a spec file" in capsys.readouterr().err


def test_a_hypervolume_of_zero_says_why():
    from sweeps.live_frontier import hypervolume_label

    assert hypervolume_label(812.46, 3, (50.0, 102.1)) == "HV 812.5"
    assert hypervolume_label(0.0, 0, (50.0, 102.1)) == "HV 0"
    assert hypervolume_label(0.0, 4, (50.0, 102.1)) == ("HV 0 (no point has rate < 50 and distortion < 102.1 nats, "
                                                        "the reference)")  # fmt: skip
