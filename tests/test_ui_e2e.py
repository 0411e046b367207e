"""End to end through real servers: a tiny real sweep logs to an MLflow tracking server whose artifacts live in an
S3-compatible store (moto), all on 127.0.0.1; then the parent run's R-D figure is checked through the API and in the
MLflow UI, opened in headless Chromium with Playwright.

The browser part needs Debian's ``chromium`` (/usr/bin/chromium) and the ``playwright`` Python package (no
browser download): ``.ci/install_browser.sh`` installs both. Without them it is skipped, except in CI (``CI=true``),
where it fails. Its full-page screenshot is kept as ``test-artifacts/ui_e2e_rd_frontier.png``.
"""

from __future__ import annotations

import io
import os
import re
import struct
import time
from pathlib import Path

import pytest

from servers import create_bucket, logs_on_error, start_mlflow, start_moto

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS_OUT = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
#: As root on these machines: no sandbox, no GPU, and none of Chromium's own calls to the network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
BUCKET, PREFIX = "bvae-e2e", "mlflow-artifacts"
SWEEP = "ui-e2e"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow  # ~60–100 s on 2 busy cores: two servers, Ray, a 4-trial sweep and a browser


def sweep_spec(tmp: Path, tracking_uri: str) -> dict:
    return {
        "name": SWEEP,
        "base": {
            "seed": 0,
            "dataset": {"name": "gaussian", "eigenvalues": [4.0, 2.0, 1.0, 0.5], "n_train": 2000, "n_test": 500},
            "model": {"arch": "linear", "latent_dim": 4, "likelihood": {"kind": "gaussian", "sigma": 1.0}},
            "objective": {"beta": 1.0},
            "train": {"steps": 200, "batch_size": 128, "lr": 3.0e-3, "eval_every": 100, "log_every": 100},
        },
        "search": {"trials": 4, "seed": 0, "sampler": "tpe", "concurrency": 2,
                   "space": {"objective.beta": {"log_uniform": [0.2, 5.0]}}},  # fmt: skip
        "tracking": {"uri": tracking_uri},
        "storage": {"path": str(tmp / "ray_results")},
    }


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    """moto (S3) + an MLflow server with ``--artifacts-destination s3://BUCKET/PREFIX`` on it, each stopped by its
    own pid when the module ends, whatever happens."""
    tmp = tmp_path_factory.mktemp("ui_e2e")
    start = time.monotonic()
    s3 = start_moto(tmp)
    request.addfinalizer(s3.stop)
    create_bucket(s3.url, BUCKET)
    tracking = start_mlflow(tmp / "mlflow.db", f"s3://{BUCKET}/{PREFIX}", s3.url, timeout=None)
    request.addfinalizer(tracking.stop)
    request.getfixturevalue("local_ray")  # Ray starts while the MLflow server imports and migrates
    ray_up = time.monotonic() - start
    tracking.wait_ready(120)
    print(f"moto {s3.url} (pid {s3.pid}), mlflow {tracking.url} (pid {tracking.pid}) up in "
          f"{time.monotonic() - start:.1f} s (Ray in {ray_up:.1f} s); logs in {tmp}")  # fmt: skip
    return {"tmp": tmp, "s3": s3, "mlflow": tracking}


@pytest.fixture(scope="module")
def sweep(stack):
    """A real 4-trial sweep whose tracking URI is the server's http URL."""
    from sweeps.runner import run_sweep
    from sweeps.spec import parse_spec

    with logs_on_error(stack["mlflow"], stack["s3"]):
        start = time.monotonic()
        outcome = run_sweep(parse_spec(sweep_spec(stack["tmp"], stack["mlflow"].url)))
        print(f"sweep took {time.monotonic() - start:.1f} s")
        assert outcome.tracking_uri == stack["mlflow"].url and outcome.parent_run_id
    return outcome


def check_png(data: bytes) -> tuple[int, int]:
    """Width and height of a valid PNG (signature, IHDR, and a full decode)."""
    assert data[:8] == PNG_MAGIC, data[:16]
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decodes every chunk: a truncated or corrupt file raises
        assert image.size == (width, height) and width > 0 and height > 0
    return width, height


def test_frontier_artifacts_go_through_the_server_to_s3(stack, sweep, tmp_path):
    import boto3
    from mlflow import MlflowClient

    from sweeps.tracking import child_runs

    with logs_on_error(stack["mlflow"], stack["s3"]):
        client = MlflowClient(stack["mlflow"].url)
        parent = client.get_run(sweep.parent_run_id)
        assert parent.info.status == "FINISHED"
        assert parent.info.artifact_uri.startswith("mlflow-artifacts:/"), parent.info.artifact_uri  # proxied
        children = child_runs(client, sweep.parent_run_id)
        assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}

        listed = {a.path: a for a in client.list_artifacts(sweep.parent_run_id)}
        assert {"rd_frontier.png", "rd_frontier.html", "frontier.parquet", "spec.yaml"} <= listed.keys(), listed
        assert listed["rd_frontier.png"].file_size > 0 and listed["rd_frontier.html"].file_size > 0

        png = Path(client.download_artifacts(sweep.parent_run_id, "rd_frontier.png", str(tmp_path)))
        data = png.read_bytes()
        assert len(data) == listed["rd_frontier.png"].file_size
        width, height = check_png(data)
        print(f"rd_frontier.png through the server: {width}x{height}, {len(data)} bytes")

        # and the bytes really are in the S3-compatible store, under the server's artifacts destination
        s3 = boto3.client("s3", endpoint_url=stack["s3"].url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX)
                for o in page.get("Contents", [])]  # fmt: skip
        key = next((k for k in keys if k.endswith(f"{sweep.parent_run_id}/artifacts/rd_frontier.png")), None)
        assert key, keys
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data


@pytest.fixture(scope="module")
def sync_playwright():
    """Playwright's ``sync_playwright`` when the browser part can run; else skip (before any server starts), or
    fail in CI."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("the playwright Python package")
    if missing:
        reason = f"the MLflow UI test needs {' and '.join(missing)}; run .ci/install_browser.sh"
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return sync_playwright


def test_mlflow_ui_renders_the_frontier_figure(sync_playwright, stack, sweep, tmp_path):
    base = stack["mlflow"].url
    from mlflow import MlflowClient

    client = MlflowClient(base)
    parent = client.get_run(sweep.parent_run_id)
    served = Path(client.download_artifacts(sweep.parent_run_id, "rd_frontier.png", str(tmp_path))).read_bytes()
    url = f"{base}/#/experiments/{parent.info.experiment_id}/runs/{sweep.parent_run_id}/artifacts"
    ARTIFACTS_OUT.mkdir(exist_ok=True)
    shot = ARTIFACTS_OUT / "ui_e2e_rd_frontier.png"
    shot.unlink(missing_ok=True)
    blocked: list[str] = []

    def loopback_only(route):  # the page may reach this server only; anything else is refused and noted
        if route.request.url.startswith((base + "/", "data:", "blob:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with logs_on_error(stack["mlflow"], stack["s3"]), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
            page.context.route("**/*", loopback_only)
            page.set_default_timeout(60_000)  # a loaded 2-core machine: the UI bundle alone takes seconds
            try:
                page.goto(url)
                entry = page.get_by_text("rd_frontier.png", exact=True).first
                entry.wait_for()  # listed in the run's artifact tree
                assert page.get_by_text("rd_frontier.html", exact=True).count() >= 1
                close = page.get_by_role("button", name="Close", exact=True)  # the MLflow Assistant side panel
                if close.count() == 1:
                    close.click()
                entry.click()
                image = page.locator('img[alt="rd_frontier.png"]').first
                image.wait_for()
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
                natural = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
                page.screenshot(path=str(shot), full_page=True)
            except Exception:
                failure = ARTIFACTS_OUT / "ui_e2e_failure.png"
                try:  # what the page showed; never hides the real error
                    page.screenshot(path=str(failure), full_page=True, timeout=15_000)
                    print(f"page {page.url}; screenshot {failure}")
                except Exception as exc:  # noqa: BLE001
                    print(f"page {page.url}; no screenshot ({exc})")
                raise
        finally:
            browser.close()
    print(f"UI {url}: rd_frontier.png shown at natural size {natural[0]}x{natural[1]}; screenshot {shot}")
    if blocked:
        print(f"refused {len(blocked)} off-machine requests: {sorted(set(blocked))[:10]}")
    assert natural[0] > 0 and natural[1] > 0
    assert tuple(natural) == check_png(served)  # the UI shows the very figure the sweep logged
    check_png(shot.read_bytes())


def test_mlflow_ui_opens_the_sweep_experiment_as_model_training(sync_playwright, stack, sweep):
    """The sweep's experiment is tagged as a model-training experiment (``mlflow.experimentKind``), and the links the
    project gives (`sweeps.store.experiment_url`) open it on its runs table — the parent run listed — without
    MLflow 3's GenAI view ("Evaluation runs", traces, the assistant panel). MLflow 3.17 picks that view from a global
    switch (default GenAI) rather than from the tag: the same page without the link's ``workflowType`` is opened
    too, as the control, and what it shows is printed and kept as a screenshot."""
    from mlflow import MlflowClient

    from sweeps.store import experiment_url

    base = stack["mlflow"].url
    client = MlflowClient(base)
    parent = client.get_run(sweep.parent_run_id)
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development", experiment.tags
    link = experiment_url(base, experiment.experiment_id)
    ARTIFACTS_OUT.mkdir(exist_ok=True)
    seen: dict[str, dict] = {}
    with logs_on_error(stack["mlflow"], stack["s3"]), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
            page.context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
                (base + "/", "data:", "blob:")) else route.abort())  # fmt: skip
            page.set_default_timeout(60_000)
            for label, url in (("link", link), ("control", f"{base}/#/experiments/{experiment.experiment_id}")):
                page.goto(url)
                page.get_by_text(experiment.name, exact=True).first.wait_for()  # the experiment's page is up
                if label == "link":  # the runs table: the parent run (named after the sweep; trials fold under it)
                    page.get_by_text(re.compile(r"^\d+ matching runs?$")).first.wait_for()
                    page.get_by_role("link", name=SWEEP, exact=True).first.wait_for()
                page.wait_for_timeout(1500)  # the view settles (its tabs depend on the workflow type)
                shot = ARTIFACTS_OUT / f"ui_e2e_experiment_{label}.png"
                page.screenshot(path=str(shot), full_page=True)
                seen[label] = {"genai": page.get_by_text("Evaluation runs", exact=True).count(), "url": page.url,
                               "shot": str(shot)}  # fmt: skip
        finally:
            browser.close()
    print(f"experiment page {link}: {seen}")
    assert seen["link"]["genai"] == 0, f"the sweep's link opened MLflow's GenAI view; see {seen['link']['shot']}"
    assert "/runs" in seen["link"]["url"], seen["link"]["url"]
    if seen["control"]["genai"]:
        print("without ?workflowType the same experiment opens in the GenAI view: the link is what avoids it")
