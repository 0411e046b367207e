#!/usr/bin/env bash
# Everything that needs a GPU, in one run (about 8 minutes on an H100/H200): the CUDA tests that CI skips, then the
# GPU figures — every packing route side by side, and one auto-sized cohort sweep. Figures land in $OUT (default
# ./gpu_results). Run from the repository root with the project installed:  bash benchmarks/gpu_checks.sh
set -uo pipefail
OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"

echo "== CUDA tests (CI skips them)"
timeout 300 python -m pytest -q -rs tests/test_trainer.py tests/test_cohort.py tests/test_cohort_size.py -k "cuda" \
  2>&1 | tail -15 | tee "$OUT/cuda_tests.txt"

echo "== every route on one device (Burgess, 64 px)"
timeout 360 python benchmarks/gpu_packing.py --device cuda --ks 1 8 32 128 --procs 4 8 --seconds 3 \
  2>&1 | tee "$OUT/gpu_packing.txt" | tail -30

echo "== search.cohort: auto, as a user's first GPU sweep says it"
timeout 120 python - <<'PY' 2>&1 | tee "$OUT/auto_cohort.txt"
import ray
from sweeps.cohort_size import resolve_cohort
from sweeps.spec import parse_spec

ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
spec = parse_spec({"name": "auto", "base": {"dataset": {"name": "dsprites"}, "model": {"arch": "burgess", "latent_dim": 10}},
                   "search": {"trials": 32, "space": {"objective.beta": {"log_uniform": [0.5, 16]}}},
                   "resources": {"cpu": 1, "gpu": 1}})
print(resolve_cohort(spec, parallel=1)[1])
PY
