#!/usr/bin/env bash
# Everything that needs a GPU, in one run of at most 9 minutes on an H100/H200: the CUDA tests that CI skips, then the
# GPU figures — every packing route side by side, and what `search.cohort: auto` chooses for a 32-trial sweep.
# Figures land in $OUT (default ./gpu_results).
#
#   bash benchmarks/gpu_checks.sh                            # from a checkout; the project need not be installed
#   GPU_CHECKS_DEVICE=cpu bash benchmarks/gpu_checks.sh      # a dry run on a CPU machine (a minute): checks the script
#
# Needs torch, pydantic, optuna, pyyaml, numpy, pytest — not Ray or MLflow (the free-memory probe runs in this process
# when Ray is missing). Wheels in $WHEELS (default ./.whl), if that folder exists, are installed first into a private
# folder (pip --no-index --no-deps): how the checks run on a GPU machine with no package index.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_results}"
DEVICE="${GPU_CHECKS_DEVICE:-cuda}"
WHEELS="${WHEELS:-.whl}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
mkdir -p "$OUT"
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true MPLBACKEND=Agg PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if compgen -G "$WHEELS/*.whl" > /dev/null; then
  site="${TMPDIR:-/tmp}/gpu_checks_site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$WHEELS"/*.whl \
    || { echo "gpu_checks: could not install the wheels in $WHEELS" >&2; exit 2; }
  export PYTHONPATH="$PYTHONPATH:$site"  # ahead of site-packages: a carried wheel replaces the machine's version
fi
"$PYTHON" - <<'PY' || exit 2
import importlib.util, sys
missing = [m for m in ("torch", "numpy", "yaml", "pydantic", "optuna", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_checks: missing Python packages: {', '.join(missing)} (install them, or put their wheels in $WHEELS)")
PY

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
  PACKING=(--device cuda --ks 1 8 32 128 --procs 4 8 --seconds 3)
else
  echo "dry run on $DEVICE: the CUDA tests skip, the figures are not a GPU's" | tee "$OUT/device.txt"
  PACKING=(--device "$DEVICE" --arch mlp --resolution 32 --ks 1 2 --procs 2 --seconds 1 --rounds 1 --no-conv-compare)
fi
"$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" \
  | tee -a "$OUT/device.txt"

echo "== CUDA tests (CI skips them)"
# -rfEs: failures and errors in the summary too (a bare -rs would hide them); the whole output is kept
timeout 180 "$PYTHON" -m pytest -q -rfEs -p no:cacheprovider tests/test_trainer.py tests/test_cohort.py tests/test_memory.py \
  -k "cuda" 2>&1 | tee "$OUT/cuda_tests.txt" | tail -60

echo "== every route on one device"
timeout 300 "$PYTHON" benchmarks/gpu_packing.py "${PACKING[@]}" 2>&1 | tee "$OUT/gpu_packing.txt" | tail -40

echo "== search.cohort: auto, as a user's first GPU sweep says it"
timeout 60 "$PYTHON" - <<'PY' 2>&1 | tee "$OUT/auto_cohort.txt"
import importlib.util

from sweeps import cohort_size
from sweeps.spec import parse_spec

if importlib.util.find_spec("ray") is None:  # the same probe, in this process instead of a Ray task on the GPU
    cohort_size.gpu_free_bytes = lambda gpu, local: cohort_size._free_gpu_bytes()
    print("(Ray is not installed here: the GPU's free memory is read in this process)")
else:
    import ray

    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
spec = parse_spec({"name": "auto", "base": {"dataset": {"name": "dsprites"}, "model": {"arch": "burgess", "latent_dim": 10}},
                   "search": {"trials": 32, "space": {"objective.beta": {"log_uniform": [0.5, 16]}}},
                   "resources": {"cpu": 1, "gpu": 1}})
resolved, choice = cohort_size.resolve_cohort(spec, parallel=1)
print(f"search.cohort: auto -> {resolved.search.cohort}: {choice.why}")
PY
echo "== figures in $OUT"
