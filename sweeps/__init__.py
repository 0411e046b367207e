"""sweeps: β-VAE rate-distortion sweeps with Ray Tune + Optuna, tracked in MLflow."""

import os

# Keep every byte on this machine unless told otherwise (docs/operations.md): no usage stats or telemetry, and Ray on
# loopback. Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import time, so this must run before `import ray`.
for _key, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}.items():
    os.environ.setdefault(_key, _value)
