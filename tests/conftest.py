import os

# No calls home from anything a test starts (docs/operations.md).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keeps Ray on 127.0.0.1; read at `import ray`
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


import pytest


@pytest.fixture(scope="session")
def local_ray():
    """One real local Ray for the session, on loopback only (docs/operations.md: Ray rewrites 127.0.0.1 to the machine's
    routable address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set before `import ray`)."""
    import ray
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before this file set the variable
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             logging_level="WARNING")  # fmt: skip
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        yield
    finally:
        ray.shutdown()
