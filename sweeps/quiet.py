"""Third-party messages that do not concern a user of ``bvae`` — silenced one by one, by logger and message, so that
the project's own lines come first and every other warning still shows.

| source | message | why it is noise here |
|---|---|---|
| MLflow (`mlflow.store.db.utils`, alembic) | "Creating initial MLflow database tables…", "Updating database tables", migrations | a new local store is expected |
| MLflow (`mlflow.pytorch`) | "Saving pytorch model by Pickle … requires exercising caution" | `bvae pick --register` saves the VAE class on purpose (`pt2` loses `encode`/`decode`); the user's own store |
| MLflow (`mlflow.pytorch`) | "Stored model version '2.13.0+cpu' does not match installed PyTorch version '2.13.0'" | a local build label, not a version difference |
| MLflow (`mlflow.utils.requirements_utils`) | "Found torch version (2.13.0+cpu) contains a local version label …" | `bvae pick --register` logs `torch==2.13.0`, which is what a user installs |
| MLflow | artifact download/upload progress bars | one small checkpoint |
| MLflow | "🏃 View run … at: http://…" on stdout for every run ended on a server | one line per trial in the middle of the summary; the sweep prints where to look |
| Ray Tune (`ray.tune.tune`) | "Experiment has been interrupted … Resume experiment with: Tuner.restore(…)" | `bvae sweep` prints its own line: `bvae sweep resume SPEC` |
| Ray Tune (`ray.tune.tune`) | "Trials did not complete: [train_trial_…]" | each errored trial has its progress line and reason; the sweep's last line says how to train them again |
| Ray Jobs client (`…dashboard_sdk`, `…runtime_env.packaging`) | "Uploading package gcs://…", "Creating a file package for local module …", "Successfully pushed file package …" | `bvae sweep submit` says what it submitted, as which job |
| Ray Jobs client (`…job.sdk`) | "WebSocket closed for job … with close code 1000" | the normal end of `--wait`/`logs --follow`; the job's status line follows |
| Ray (`…authentication_token_setup`) | "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out" | the embedded Ray keeps Ray's secure default (token auth, on 127.0.0.1); nothing to do |

The opposite notice ("Token authentication is *disabled* … Anyone with network access …") is kept: it concerns the
user. Tune's "Stop signal received (e.g. via SIGINT/Ctrl+C) … Press CTRL+C … to skip", a timestamped log line, is
said in the project's words (:data:`STOP_LINE`; a submitted sweep's driver, which has no terminal, says its own).
"""

from __future__ import annotations

import logging
import os
import re
import sys

_SILENCED: dict[str, re.Pattern[str]] = {
    "ray.tune.tune": re.compile(r"Experiment has been interrupted|Trials did not complete"),
    "ray._private.authentication.authentication_token_setup": re.compile(r"Token authentication is enabled for this"),
    "ray.dashboard.modules.dashboard_sdk": re.compile(r"Uploading package |Package \S+ already exists"),
    "ray._private.runtime_env.packaging": re.compile(r"Creating a file package for local|Successfully pushed file "
                                                     r"package"),  # fmt: skip
    "ray.dashboard.modules.job.sdk": re.compile(r"WebSocket closed for job \S+ with close code 1000\b"),
    "mlflow.utils.requirements_utils": re.compile(r"version \([^)]*\) contains a local version label"),
    "mlflow.store.db.utils": re.compile(r"Creating initial MLflow database tables|Updating database tables"),
    "alembic.runtime.migration": re.compile(r"Context impl|Will assume|Running upgrade"),
    "mlflow.pytorch": re.compile(r"Pickle or CloudPickle format requires|Stored model version '([^'+]+)(\+[^']*)?' "
                                 r"does not match installed PyTorch version '\1(\+[^']*)?'"),  # fmt: skip
}


#: What a stop (Ctrl+C) prints in place of Tune's line; ``sweeps.jobs`` sets the driver's.
STOP_LINE = "bvae sweep: stopping; Tune saves the sweep's state (Ctrl+C again skips that)"


class _StopInOurWords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Stop signal received"):
            print(STOP_LINE, file=sys.stderr, flush=True)
            return False
        return True


class _DropMatching(logging.Filter):
    def __init__(self, pattern: re.Pattern[str]):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def quiet_third_party() -> None:
    """Install the filters above (idempotent) and turn MLflow's artifact progress bars off unless asked for."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "🏃 View run …" per trial on stdout
    for name, pattern in _SILENCED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))
    tune_logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _StopInOurWords) for f in tune_logger.filters):
        tune_logger.addFilter(_StopInOurWords())
