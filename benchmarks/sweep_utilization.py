#!/usr/bin/env python
"""How much of the machine a sweep spends training: ``run_sweep`` against the same trials run one after another.

One process, one run, two phases on the same machine:

1. **sweep** — ``sweeps.runner.run_sweep`` exactly as ``bvae sweep run`` calls it (all its callbacks: MLflow
   tracking, the live frontier, progress; checkpoints; the trainable's final plots): embedded local Ray on
   127.0.0.1 with ``num_cpus`` = the cores this process may use, a fresh temporary sqlite MLflow store, a temporary
   storage folder, telemetry off; ``--trials`` trials of dSprites 32 px, ``--arch`` mlp|burgess, latent 10,
   batch 64, lr 5e-4, ``resources: {cpu: 1}`` (one one-thread trial per core, actors reused), β searched by TPE on
   ``log_uniform [0.25, 32]``, ``--evals`` evaluations (each with a checkpoint and an MLflow report) per trial on
   ``--n-eval`` held-out images.
2. **plain** — the same trials (model, data, steps, batch, evaluations) one after another with the plain loop of
   the core benchmark, reused from ``benchmarks/trainer_throughput.py`` (its ``Plain``: a ``DataLoader`` over
   images pre-rendered once, ``loss.item()`` every step, plain Adam, β = 1 — the same arithmetic for any β; the
   rendering counts toward the plain wall time, once; a fresh model and optimizer per trial). It runs with the
   thread count that a short paired probe (1 thread vs all cores, interleaved) finds faster at that moment
   (``--plain-threads best``, the default), so the baseline is the best one-after-another run the machine gives
   then: on a machine shared with other processes a multi-thread torch loop can collapse (10× slower) when another
   process holds a core, and comparing against that would flatter the sweep. ``--plain-threads N`` forces N.

How "training time" is measured, without editing the sweep code: ``run_sweep`` imports
``sweeps.trainable.train_trial`` when it is called, so the benchmark puts a wrapper under that name (a closure
defined here, shipped to the Ray workers by value with cloudpickle). Inside the worker, for the duration of one
trial, the wrapper times every ``Trainer`` method a trial calls (``__init__``, ``fit``, ``evaluate``, ``save``,
``load_state_dict``), every function of ``sweeps.trainable`` (the dataset cache, the final plots, the
disentanglement metrics — found by introspection), ``parse_spec``, and ``tune.report`` (through a stand-in for the
trainable's ``tune`` module); then it calls the real ``train_trial`` and undoes everything. Training time is the
wall time inside ``Trainer.fit`` (the steps and their periodic host syncs for the train metrics); everything else —
spec parsing, dataset tables, model build, evaluation, checkpoint write, plots, and the time ``tune.report`` blocks
until the driver (Tune's controller, the callbacks, the experiment-state snapshot) lets the trial continue — is not.
Each trial writes its figures (wall-clock start/end, worker pid and process start, images = steps × batch trained
inside ``fit``, CPU time of the ``fit`` thread) to a JSON file in the temporary folder before every report and at
its end; the driver reads them after the sweep. In the driver (where Tune's callbacks run) the benchmark times
``init_ray``, Tune's experiment-state snapshot (``TuneController.checkpoint``) and every callback hook of every
callback separately (``CallbackList`` patched to call Tune's own code one callback at a time), which also captures
the ``MLflowTracking`` instance Tune used: the MLflow cost per report is its own ``report_seconds`` (time inside
MLflow calls per ``on_trial_result``).

Figures (targets: utilisation ≥ 85 %, sweep throughput ≥ 1.3× one after another; PASS/FAIL printed, exit status 0):

1. utilisation = Σ (trial time inside ``Trainer.fit`` × cpus per trial) / (``run_sweep`` wall time × cores), the wall
   time of the whole call (Ray start included), and also without the Ray start;
2. MLflow time per ``on_trial_result``: mean and p95, ms;
3. sweep training images/s = Σ images trained / ``run_sweep`` wall time, against Σ images / wall time of the plain
   one-after-another run, and their ratio;

and where the other core-seconds went: Ray start; Ray up → the first worker process (the driver's callback setup:
MLflow parent run — a fresh store creates its tables —, the live frontier's reference point); worker start → first
trial (imports); gaps between trials on a reused actor; each timed part inside the trials; the tail where a core
has no trial left. Also: the driver's CPU time, the load average, the share of the machine busy (any process), and
the share of a core the training threads actually got (a shared machine is noisy: compare only runs with similar
load, and read the WARNING).

    python benchmarks/sweep_utilization.py [--trials 8] [--steps N] [--arch mlp|burgess] [--evals 3]
                                           [--n-eval 5000] [--plain-threads best|N] [--warm-store] [--json]
"""

from __future__ import annotations

import os

# No calls home, Ray on loopback: before anything imports ray or mlflow (docs/operations.md).
for _key, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ.setdefault(_key, _value)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any, Callable  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package: the core benchmark
import trainer_throughput as core  # noqa: E402  (the plain loop)

TARGET_UTILISATION = 0.85
TARGET_SPEEDUP = 1.30
# ~1 minute per trial, two at a time on 2 quiet cores. A sweep pays fixed seconds (Ray start ~6 s, each worker's
# imports ~4 s, the last trial's tail) that a short trial cannot amortise: at the quickstart's 3000 mlp steps (~21 s a
# trial) this machine measured 76.5 % utilisation and 1.12×, at 10,000 steps 91.4 % and 1.44× (README, "Benchmarks").
DEFAULT_STEPS = {"mlp": 10_000, "burgess": 2_500}
RESOLUTION, HIDDEN = 32, 256
BETA_RANGE = [0.25, 32.0]


def cores_available() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def loadavg() -> float:
    return os.getloadavg()[0]


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores from /proc/stat (busy includes every process on the machine)."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return math.nan, math.nan
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Share of all cores busy (any process) between two ``machine_busy`` readings."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else math.nan


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# ---------------------------------------------------------------------------------------------------- the spec
def build_spec(args: argparse.Namespace, folder: Path, cores: int) -> dict[str, Any]:
    eval_every = math.ceil(args.steps / args.evals)
    return {
        "name": "sweep-utilisation",
        "base": {
            "seed": core.SEED,
            "dataset": {"name": "dsprites", "resolution": RESOLUTION},
            "model": {"arch": args.arch, "latent_dim": core.LATENT_DIM, "hidden": HIDDEN,
                      "likelihood": {"kind": "bernoulli"}},
            "objective": {"beta": 1.0, "schedule": {"kind": "constant"}},
            "train": {"steps": args.steps, "batch_size": core.BATCH, "lr": core.LR, "eval_every": eval_every,
                      "n_eval": args.n_eval, "log_every": 100, "device": "cpu"},
        },
        "search": {"objectives": ["rate", "distortion"], "sampler": "tpe", "trials": args.trials, "seed": 0,
                   "space": {"objective.beta": {"log_uniform": BETA_RANGE}}},
        "resources": {"cpu": 1, "gpu": 0},
        "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "sweep-utilisation"},
        "storage": {"path": str(folder / "ray_results")},
        "ray": {"address": None, "num_cpus": cores},
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------- worker side
def make_timed_trainable(timings_dir: str) -> Callable[[dict, dict], None]:
    """A drop-in for ``sweeps.trainable.train_trial`` that times one trial's parts inside the Ray worker.

    Everything it needs is imported inside, so that cloudpickle ships it by value (this file is not importable on
    the workers). For the duration of one trial (one trial per actor at a time) it wraps with timers: the
    ``Trainer`` methods a trial calls (``__init__``, ``fit``, ``evaluate``, ``save``, ``load_state_dict``), every
    function of ``sweeps.trainable`` itself (``_dataset_for``, the final plots, the disentanglement metrics, … —
    whatever the trainable has, found by introspection, so a new helper is timed without editing this file),
    ``parse_spec``, and ``tune.report`` (through a stand-in for the trainable's ``tune`` module). Only the
    outermost timed call counts toward a part (no double counting). Everything is undone after the trial, so a
    reused actor starts each trial from the real code. The record goes to ``<timings_dir>/<trial_id>.json``, also
    before every report (a trial that dies leaves its figures so far)."""

    def train_trial(params: dict, spec: dict) -> None:
        import inspect as _inspect
        import json as _json
        import os as _os
        import time as _time
        from pathlib import Path as _Path

        from ray import tune as _tune

        import sweeps.trainable as _st
        from bvae_core.trainer import Trainer as _Trainer

        clock = _time.perf_counter
        rec = {"trial_id": _tune.get_context().get_trial_id(), "pid": _os.getpid(), "start": _time.time(), "end": None,
               "first_fit_start": None, "parts_s": {}, "calls": {}, "nested_s": {}, "images": 0, "fit_cpu_s": 0.0,
               "report_s": [], "process_cpu_s": 0.0, "events": [], "trainable_file": _st.__file__}  # fmt: skip
        cpu0, t_start, depth = _time.process_time(), clock(), [0]
        try:  # when this worker process started (spawn → trial = process start + imports + Ray's actor setup)
            with open("/proc/self/stat") as f:
                ticks = float(f.read().rsplit(")", 1)[1].split()[19])
            with open("/proc/stat") as f:
                boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))
            rec["process_start"] = boot + ticks / _os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, StopIteration):
            rec["process_start"] = None
        out = _Path(timings_dir) / f"{rec['trial_id']}.json"

        def dump() -> None:
            rec["process_cpu_s"] = _time.process_time() - cpu0
            tmp = out.with_suffix(".tmp")
            tmp.write_text(_json.dumps(rec))
            tmp.replace(out)

        def timed(name, fn, before=None, after=None):
            def wrapper(*a, **k):
                if before is not None:
                    before(*a)
                step0 = getattr(a[0], "step", None) if a else None
                t0, c0 = clock(), _time.thread_time()
                depth[0] += 1
                try:
                    return fn(*a, **k)
                finally:
                    depth[0] -= 1
                    dt = clock() - t0
                    bucket = rec["parts_s"] if depth[0] == 0 else rec["nested_s"]
                    bucket[name] = bucket.get(name, 0.0) + dt
                    rec["calls"][name] = rec["calls"].get(name, 0) + 1
                    rec["events"].append((name, round(t0 - t_start, 4), round(dt, 4)))
                    if after is not None:
                        after(a, step0, _time.thread_time() - c0)

            wrapper.__wrapped__ = fn
            return wrapper

        def fit_before(self, *_):
            if rec["first_fit_start"] is None:
                rec["first_fit_start"] = _time.time()

        def fit_after(a, step0, cpu):
            self = a[0]
            rec["images"] += (self.step - (step0 or 0)) * self.config.train.batch_size
            rec["fit_cpu_s"] += cpu

        undo = []
        for name in ("__init__", "fit", "evaluate", "save", "load_state_dict"):
            original = _Trainer.__dict__[name]
            label = "Trainer()" if name == "__init__" else f"Trainer.{name}"
            hooks = {"before": fit_before, "after": fit_after} if name == "fit" else {}
            setattr(_Trainer, name, timed(label, original, **hooks))
            undo.append((_Trainer, name, original))
        for name, fn in list(vars(_st).items()):
            own = _inspect.isfunction(fn) and fn.__module__ == _st.__name__ and name != "train_trial"
            if own or name == "parse_spec":
                setattr(_st, name, timed(name, fn))
                undo.append((_st, name, fn))

        def report(metrics, checkpoint=None):
            dump()
            t0 = clock()
            try:
                return _tune.report(metrics, checkpoint=checkpoint)
            finally:
                dt = clock() - t0
                rec["report_s"].append(dt)
                rec["events"].append(("tune.report", round(t0 - t_start, 4), round(dt, 4)))

        class TuneStandIn:
            def __getattr__(self, name):
                return getattr(_tune, name)

        stand_in = TuneStandIn()
        stand_in.report = report
        undo.append((_st, "tune", _st.tune))
        _st.tune = stand_in
        real = _st.__dict__.get("_real_train_trial", _st.train_trial)
        try:
            return real(params, spec)
        finally:
            for owner, name, original in reversed(undo):
                setattr(owner, name, original)
            rec["end"] = _time.time()
            dump()

    return train_trial


# ---------------------------------------------------------------------------------------------------- driver side
_CALLBACK_HOOKS = ("setup", "on_step_begin", "on_step_end", "on_trial_start", "on_trial_result", "on_trial_complete",
                   "on_trial_error", "on_checkpoint", "on_experiment_end")  # fmt: skip


class DriverProbes:
    """Timers around driver-side pieces of ``run_sweep``, installed for one call and removed after it: ``init_ray``,
    every Tune callback hook per callback class (``CallbackList`` is patched to time each callback on its own, so
    the project's callbacks *and* Tune's default loggers are covered, whatever the runner puts in the list), Tune's
    experiment-state snapshot, and the substitution of the timed trainable."""

    def __init__(self) -> None:
        self.init_ray_s = math.nan
        self.init_ray_end = math.nan
        self.trackers: list[Any] = []
        self.callback_s: dict[str, dict[str, list[float]]] = {}  # class -> hook -> seconds per call
        self.snapshot_s: list[float] = []
        self._undo: list[Callable[[], None]] = []

    def _patch(self, owner: Any, name: str, make: Callable[[Callable], Callable]) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        setattr(owner, name, make(original))
        self._undo.append(lambda: setattr(owner, name, original))

    def install(self, timings_dir: str) -> None:
        import sweeps.runner as runner
        import sweeps.trainable as trainable
        from ray.tune.callback import CallbackList
        from ray.tune.execution.tune_controller import TuneController

        from sweeps.tracking import MLflowTracking

        def timed_init(original):
            def init_ray(spec):
                t0 = time.perf_counter()
                try:
                    return original(spec)
                finally:
                    self.init_ray_s = time.perf_counter() - t0
                    self.init_ray_end = time.time()

            return init_ray

        self._patch(runner, "init_ray", timed_init)

        def per_callback(hook):
            def make(original):
                def method(cl_self, **info):
                    for cb in cl_self._callbacks:
                        if isinstance(cb, MLflowTracking) and cb not in self.trackers:
                            self.trackers.append(cb)
                        t0 = time.perf_counter()
                        try:  # Tune's own code, one callback at a time
                            original(SimpleNamespace(_callbacks=[cb]), **info)
                        finally:
                            per_class = self.callback_s.setdefault(type(cb).__name__, {})
                            per_class.setdefault(hook, []).append(time.perf_counter() - t0)

                return method

            return make

        for hook in _CALLBACK_HOOKS:
            if hook in CallbackList.__dict__:
                self._patch(CallbackList, hook, per_callback(hook))

        def timed_snapshot(original):
            def checkpoint(ctl_self, *a, **k):
                t0 = time.perf_counter()
                try:
                    return original(ctl_self, *a, **k)
                finally:
                    self.snapshot_s.append(time.perf_counter() - t0)

            return checkpoint

        self._patch(TuneController, "checkpoint", timed_snapshot)
        # run_sweep does `from .trainable import train_trial` when called: it picks up the timed wrapper.
        trainable._real_train_trial = trainable.train_trial
        self._undo.append(lambda: trainable.__dict__.pop("_real_train_trial", None))
        self._patch(trainable, "train_trial", lambda _original: make_timed_trainable(timings_dir))

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()


def run_sweep_phase(args: argparse.Namespace, folder: Path, cores: int) -> dict[str, Any]:
    import ray
    from ray import cloudpickle

    from sweeps.runner import run_sweep
    from sweeps.spec import parse_spec

    if __name__ != "__main__":  # imported (e.g. by a test): ship this module's functions by value to the workers
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    timings_dir = folder / "trial_timings"
    timings_dir.mkdir()
    spec = parse_spec(build_spec(args, folder, cores))
    if args.warm_store:  # the store's schema created before the clock starts (a store that has seen a sweep)
        from mlflow import MlflowClient

        MlflowClient(spec.tracking.uri).search_experiments()
    probes = DriverProbes()
    probes.install(str(timings_dir))
    load0, busy0, cpu0 = loadavg(), machine_busy(), time.process_time()
    start = time.time()
    t0 = time.perf_counter()
    try:
        outcome = run_sweep(spec, tracking_uri=spec.tracking.uri)
        wall = time.perf_counter() - t0
        end = time.time()
    finally:
        probes.remove()
    driver_cpu, busy1, load1 = time.process_time() - cpu0, machine_busy(), loadavg()
    ray.shutdown()

    trials = [json.loads(p.read_text()) for p in sorted(timings_dir.glob("*.json"))]
    reports = [s for tracker in probes.trackers for s in getattr(tracker, "report_seconds", [])]
    return {
        "wall_s": wall, "start": start, "end": end, "init_ray_s": probes.init_ray_s, "init_ray_end": probes.init_ray_end,
        "trials": trials, "statuses": [row.status for row in outcome.rows],
        "betas": [row.params.get("objective.beta") for row in outcome.rows],
        "mlflow_report_s": reports, "callback_s": probes.callback_s, "snapshot_s": probes.snapshot_s,
        "driver_cpu_s": driver_cpu, "machine_busy": busy_share(busy0, busy1), "load_before": load0, "load_after": load1,
    }  # fmt: skip


_PART_LABELS = {
    "Trainer.fit": "training (Trainer.fit)",
    "Trainer.evaluate": "evaluation (Trainer.evaluate)",
    "Trainer.save": "checkpoint write (Trainer.save)",
    "Trainer()": "model + optimizer (Trainer())",
    "_dataset_for": "dataset tables (_dataset_for)",
    "Trainer.load_state_dict": "checkpoint load (Trainer.load_state_dict)",
    "_write_trial_plots": "final trial plots (_write_trial_plots)",
    "_disentanglement": "disentanglement metrics (_disentanglement)",
    "parse_spec": "spec parsing (parse_spec)",
}


def _stats_ms(values: list[float]) -> dict[str, float]:
    return {"mean": 1e3 * statistics.fmean(values) if values else math.nan, "p95": 1e3 * pct(values, 0.95),
            "max": 1e3 * max(values, default=math.nan), "n": len(values), "total_s": sum(values)}  # fmt: skip


def analyse_sweep(raw: dict[str, Any], cores: int, cpus_per_trial: float = 1.0) -> dict[str, Any]:
    trials, wall = raw["trials"], raw["wall_s"]
    fit_s = sum(t["parts_s"].get("Trainer.fit", 0.0) for t in trials)
    images = sum(t["images"] for t in trials)
    core_s = wall * cores
    ray_s = raw["init_ray_s"]
    in_trial = [t["end"] - t["start"] for t in trials]
    report_blocked = [s for t in trials for s in t["report_s"]]
    setup = [t["first_fit_start"] - t["start"] for t in trials if t["first_fit_start"]]
    # Core-seconds outside any trial function, per slot (= actor process; reuse_actors keeps one per core).
    by_pid: dict[int, list[dict]] = {}
    for t in trials:
        by_pid.setdefault(t["pid"], []).append(t)
    first_start = [min(t["start"] for t in ts) - raw["init_ray_end"] for ts in by_pid.values()]
    # … split at the moment the worker process started (it may predate Ray being up: Ray prestarts workers)
    spawn_wait = [max(0.0, min(max(ts[0].get("process_start") or raw["init_ray_end"], raw["init_ray_end"]) -
                                   raw["init_ray_end"], first))
                  for ts, first in zip(by_pid.values(), first_start)]  # fmt: skip
    gaps = []
    for ts in by_pid.values():
        ts = sorted(ts, key=lambda t: t["start"])
        gaps += [b["start"] - a["end"] for a, b in zip(ts, ts[1:])]
    tails = [raw["end"] - max(t["end"] for t in ts) for ts in by_pid.values()]
    idle_slots = max(0, cores - len(by_pid))  # a core that never got a trial
    parts: dict[str, float] = {}
    for t in trials:
        for name, seconds in t["parts_s"].items():
            parts[name] = parts.get(name, 0.0) + seconds
    breakdown = {_PART_LABELS.get("Trainer.fit"): fit_s * cpus_per_trial}
    breakdown["Ray start (init_ray)"] = ray_s * cores
    breakdown["Ray up → first worker process (driver: callbacks' setup, …)"] = sum(spawn_wait) + idle_slots * (wall - ray_s)
    breakdown["worker process start → first trial (imports, actor init)"] = sum(first_start) - sum(spawn_wait)
    breakdown["between trials on a reused actor"] = sum(gaps)
    for name, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        if name != "Trainer.fit":
            breakdown[_PART_LABELS.get(name, name)] = seconds
    breakdown["blocked in tune.report (driver round trip)"] = sum(report_blocked)
    # the timers overlap by a few ms per call: a small negative remainder is noise, left to "unaccounted"
    breakdown["other inside trials (tempdirs, history, …)"] = max(0.0, (
        sum(in_trial) - sum(parts.values()) - sum(report_blocked)))  # fmt: skip
    breakdown["tail (no trial left for the core)"] = sum(tails)
    breakdown["unaccounted"] = core_s - sum(breakdown.values())
    callbacks = {cls: {hook: sum(v) for hook, v in hooks.items()} for cls, hooks in raw["callback_s"].items()}
    return {
        "wall_s": wall,
        "init_ray_s": ray_s,
        "cores": cores,
        "trials_run": len(trials),
        "statuses": raw["statuses"],
        "fit_s": fit_s,
        "images": images,
        "utilisation": fit_s * cpus_per_trial / core_s,
        "utilisation_without_ray_start": fit_s * cpus_per_trial / ((wall - ray_s) * cores),
        "images_per_s": images / wall,
        "fit_images_per_s_per_trial": statistics.median(
            t["images"] / t["parts_s"]["Trainer.fit"] for t in trials if t["parts_s"].get("Trainer.fit")) if trials else math.nan,
        "fit_cpu_share": sum(t["fit_cpu_s"] for t in trials) / fit_s if fit_s else math.nan,
        "trial_s": {"median": statistics.median(in_trial) if in_trial else math.nan,
                    "min": min(in_trial, default=math.nan), "max": max(in_trial, default=math.nan)},
        "setup_s": {"median": statistics.median(setup) if setup else math.nan, "max": max(setup, default=math.nan)},
        "report_blocked_ms": _stats_ms(report_blocked),
        "gap_between_trials_s": {"mean": statistics.fmean(gaps) if gaps else math.nan, "n": len(gaps)},
        "first_trial_start_s": {"mean": statistics.fmean(first_start) if first_start else math.nan},
        "mlflow_ms_per_report": _stats_ms(raw["mlflow_report_s"]),
        "callbacks_s": callbacks,
        "callbacks_total_s": sum(sum(h.values()) for h in callbacks.values()),
        "snapshot_ms": _stats_ms(raw["snapshot_s"]),
        "driver_cpu_s": raw["driver_cpu_s"],
        "machine_busy": raw["machine_busy"],
        "load_before": raw["load_before"],
        "load_after": raw["load_after"],
        "core_seconds": core_s,
        "breakdown_core_s": breakdown,
        "betas": raw["betas"],
        "trials_raw": trials,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------- plain loop
def new_model(plain: "core.Plain", arch: str, seed: int) -> None:
    """A fresh model and plain Adam for the next trial (same model as the sweep's: arch, latent 10, hidden 256)."""
    import torch

    from bvae_core.models import build_model

    torch.manual_seed(seed)
    plain.model = build_model(arch, tuple(plain.train_images.shape[1:]), core.LATENT_DIM, HIDDEN).to(plain.device)
    plain.optimizer = torch.optim.Adam(plain.model.parameters(), lr=core.LR)


def probe_threads(plain: "core.Plain", arch: str, candidates: list[int], steps: int, rounds: int = 4) -> dict[int, float]:
    """Median img/s of the plain loop per thread count, interleaved round by round (same load for each)."""
    import torch

    new_model(plain, arch, core.SEED + 999)
    rates: dict[int, list[float]] = {n: [] for n in candidates}
    for n in candidates:  # warm-up at each thread count
        torch.set_num_threads(n)
        plain.train(max(5, steps // 4))
    live = list(candidates)
    for r in range(rounds):
        for n in live if r % 2 == 0 else live[::-1]:
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            plain.train(steps)
            rates[n].append(steps * core.BATCH / (time.perf_counter() - t0))
        # A thread count more than 2× slower than the best after a round is out (an oversubscribed multi-thread loop
        # on a busy machine can be 10× slower: timing it four times would cost minutes and decide nothing).
        best = max(statistics.median(rates[n]) for n in live)
        live = [n for n in live if 2 * statistics.median(rates[n]) >= best]
    return {n: statistics.median(v) for n, v in rates.items()}


def run_plain_phase(args: argparse.Namespace, cores: int) -> dict[str, Any]:
    import torch

    from bvae_core.trainer import resolve_device

    device = resolve_device("cpu")
    load0, busy0 = loadavg(), machine_busy()
    torch.set_num_threads(1 if args.plain_threads == "best" else int(args.plain_threads))
    n_images = min(args.steps * core.BATCH, 65_536)
    plain = core.Plain(SimpleNamespace(precision="auto"), RESOLUTION, device, n_images)  # renders the data, timed
    render_s = plain.cold["data"]
    plain.test_images = plain.test_images[: args.n_eval]  # the sweep's train.n_eval
    probe = None
    if args.plain_threads == "best":
        candidates = sorted({1, cores})
        probe = probe_threads(plain, args.arch, candidates, steps=args.probe_steps)
        threads = max(probe, key=probe.get)
    else:
        threads = int(args.plain_threads)
    torch.set_num_threads(threads)
    eval_every = math.ceil(args.steps / args.evals)
    chunks = [min(eval_every, args.steps - s) for s in range(0, args.steps, eval_every)]
    fit_s = eval_s = build_s = 0.0
    c0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(args.trials):
        b0 = time.perf_counter()
        new_model(plain, args.arch, core.SEED + i)
        build_s += time.perf_counter() - b0
        for n in chunks:
            f0 = time.perf_counter()
            plain.train(n)
            e0 = time.perf_counter()
            plain.evaluate()
            fit_s += e0 - f0
            eval_s += time.perf_counter() - e0
    loop_s = time.perf_counter() - t0
    cpu = time.process_time() - c0
    if not math.isfinite(plain.last_loss):
        raise FloatingPointError("plain loop: non-finite loss")
    images = args.trials * args.steps * core.BATCH
    wall = render_s + loop_s
    return {
        "threads": threads, "probe_img_s": probe, "render_s": render_s, "wall_s": wall, "train_s": fit_s,
        "evaluate_s": eval_s, "model_build_s": build_s, "images": images, "images_per_s": images / wall,
        "train_images_per_s": images / fit_s, "cpu_per_wall": cpu / loop_s, "machine_busy": busy_share(busy0, machine_busy()),
        "load_before": load0, "load_after": loadavg(),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------- report
def print_report(r: dict[str, Any]) -> None:
    s, p, v = r["sweep"], r["plain"], r["verdict"]
    a = r["args"]
    print(f"Sweep utilisation — {a['trials']} trials × {a['steps']} steps, dSprites {RESOLUTION} px, {a['arch']}, "
          f"batch {core.BATCH}, {a['evals']} evaluations/checkpoints/reports per trial on {a['n_eval']} images; "
          f"{s['cores']} cores, resources cpu 1 per trial; torch {r['torch']}, ray {r['ray']}")  # fmt: skip
    plain_load = (f"; after plain {p['load_after']:.2f}" if p else "")
    print(f"load average (1 min): before the sweep {s['load_before']:.2f}, after it {s['load_after']:.2f}{plain_load}. "
          f"Share of all cores busy (any process on the machine): sweep {100 * s['machine_busy']:.0f} %"
          + (f", plain {100 * p['machine_busy']:.0f} %" if p else ""))  # fmt: skip
    if s["fit_cpu_share"] < 0.9:
        print(f"WARNING: the training threads got only {100 * s['fit_cpu_share']:.0f} % of a core while in "
              f"Trainer.fit: other processes held the cores; absolute figures measure the machine's load too")
    print(f"\nsweep: run_sweep wall {s['wall_s']:.1f} s (Ray start {s['init_ray_s']:.1f} s); "
          f"{s['trials_run']} trials {dict((x, s['statuses'].count(x)) for x in sorted(set(s['statuses'])))}; "
          f"a trial {s['trial_s']['median']:.1f} s median ({s['trial_s']['min']:.1f}–{s['trial_s']['max']:.1f})")
    print(f"  training inside Trainer.fit: {s['fit_s']:.1f} trial-s, {s['images']:,} images; "
          f"{s['fit_images_per_s_per_trial']:,.0f} img/s per trial while in fit (its thread on a CPU "
          f"{100 * s['fit_cpu_share']:.0f} % of that time)")  # fmt: skip
    print(f"  1. utilisation Σ fit × cpu / (wall × cores): {100 * s['utilisation']:.1f} % "
          f"({100 * s['utilisation_without_ray_start']:.1f} % without the Ray start)")
    m = s["mlflow_ms_per_report"]
    print(f"  2. MLflow per on_trial_result (MLflowTracking.report_seconds): mean {m['mean']:.1f} ms, "
          f"p95 {m['p95']:.1f} ms, max {m['max']:.1f} ms over {m['n']} reports")
    b = s["report_blocked_ms"]
    print(f"  a trial blocked in tune.report: mean {b['mean']:.0f} ms, p95 {b['p95']:.0f} ms, max {b['max']:.0f} ms "
          f"({b['n']} reports); Tune experiment snapshots {s['snapshot_ms']['n']} × {s['snapshot_ms']['mean']:.1f} ms "
          f"= {s['snapshot_ms']['total_s']:.1f} s; driver CPU {s['driver_cpu_s']:.1f} s "
          f"({100 * s['driver_cpu_s'] / s['wall_s']:.0f} % of a core)")  # fmt: skip
    print(f"  driver time in Tune callbacks ({s['callbacks_total_s']:.1f} s in all), by callback and hook, s:")
    for cls, hooks in sorted(s["callbacks_s"].items(), key=lambda kv: -sum(kv[1].values())):
        busy = {h: x for h, x in hooks.items() if x >= 0.005}
        if busy:
            print(f"    {cls:24s} " + ", ".join(f"{h} {x:.2f}" for h, x in sorted(busy.items(), key=lambda kv: -kv[1])))
    print(f"  trial start → first training step {s['setup_s']['median']:.2f} s median (max {s['setup_s']['max']:.2f}); "
          f"Ray up → a core's first trial {s['first_trial_start_s']['mean']:.2f} s mean; between trials on a reused "
          + (f"actor {s['gap_between_trials_s']['mean']:.2f} s mean ({s['gap_between_trials_s']['n']})"
             if s["gap_between_trials_s"]["n"] else "actor: none (no actor ran a second trial)"))  # fmt: skip
    print(f"  where the {s['core_seconds']:.0f} core-seconds (wall × cores) went:")
    for k, x in s["breakdown_core_s"].items():
        print(f"    {k:58s} {x:7.1f}  {100 * x / s['core_seconds']:5.1f} %")
    word = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    if p is None:
        print(f"\nverdict: utilisation ≥ {100 * TARGET_UTILISATION:.0f} % {word(v['utilisation']['pass'])} "
              f"({100 * v['utilisation']['value']:.1f} %) | throughput: not measured (--skip-plain)")
        return
    probe = p["probe_img_s"]
    probe_txt = (" (picked by the probe, plain loop img/s: " + ", ".join(
        f"{n} thread{'s' if int(n) > 1 else ''} {x:,.0f}" for n, x in probe.items()) + ")") if probe else ""  # fmt: skip
    print(f"\nplain, one trial after another: {p['threads']} thread(s){probe_txt}; wall {p['wall_s']:.1f} s = render "
          f"{p['render_s']:.1f} + train {p['train_s']:.1f} + evaluate {p['evaluate_s']:.1f} + model builds "
          f"{p['model_build_s']:.1f}; {p['train_images_per_s']:,.0f} img/s while training; process CPU / wall "
          f"{p['cpu_per_wall']:.2f}")  # fmt: skip
    print(f"  3. training images/s: sweep {s['images_per_s']:,.0f} vs one after another {p['images_per_s']:,.0f}: "
          f"{r['speedup']:.2f}×")
    print(f"\nverdict: utilisation ≥ {100 * TARGET_UTILISATION:.0f} % {word(v['utilisation']['pass'])} "
          f"({100 * v['utilisation']['value']:.1f} %) | throughput ≥ {TARGET_SPEEDUP:.1f}× one after another "
          f"{word(v['speedup']['pass'])} ({v['speedup']['value']:.2f}×)")  # fmt: skip


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8, help="trials in the sweep and in the plain run (default 8)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps per trial (default: {DEFAULT_STEPS['mlp']} mlp, {DEFAULT_STEPS['burgess']} burgess)")
    p.add_argument("--arch", default="mlp", choices=["mlp", "burgess"], help="model.arch (default mlp)")
    p.add_argument("--evals", type=int, default=3, help="evaluations (= checkpoints, MLflow reports) per trial (3)")
    p.add_argument("--n-eval", type=int, default=5000, help="train.n_eval: held-out images per evaluation (5000)")
    p.add_argument("--plain-threads", default="best",
                   help="threads of the plain loop: best (probe 1 vs all cores, default) or a number")
    p.add_argument("--probe-steps", type=int, default=None, help="steps per probe timing (default: mlp 100, burgess 30)")
    p.add_argument("--warm-store", action="store_true",
                   help="create the temporary MLflow store's tables before timing (default: a fresh store, as a "
                        "first sweep on a new mlflow.db; its schema creation then counts)")
    p.add_argument("--skip-plain", action="store_true", help="sweep only (no throughput comparison)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object instead of the report")
    args = p.parse_args(argv)
    args.steps = args.steps or DEFAULT_STEPS[args.arch]
    args.probe_steps = args.probe_steps or (100 if args.arch == "mlp" else 30)
    if args.trials < 1 or args.steps < 1 or not 1 <= args.evals <= args.steps or args.n_eval < 1:
        p.error("--trials, --steps, --n-eval ≥ 1 and 1 ≤ --evals ≤ --steps")
    if args.plain_threads != "best" and not (args.plain_threads.isdigit() and int(args.plain_threads) > 0):
        p.error("--plain-threads: best or a positive number")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray
    import torch

    cores = cores_available()
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message} (load {loadavg():.2f})", file=sys.stderr, flush=True)

    log(f"sweep: {args.trials} trials × {args.steps} steps, {args.arch}, {cores} cores")
    with tempfile.TemporaryDirectory(prefix="sweep-util-") as tmp:
        raw = run_sweep_phase(args, Path(tmp), cores)
    sweep = analyse_sweep(raw, cores)
    log(f"sweep done in {sweep['wall_s']:.1f} s; plain loop, one trial after another")
    plain = run_plain_phase(args, cores) if not args.skip_plain else None
    log("done")
    speedup = sweep["images_per_s"] / plain["images_per_s"] if plain else math.nan
    report = {
        "args": vars(args), "torch": torch.__version__, "ray": ray.__version__, "sweep": sweep, "plain": plain,
        "speedup": speedup,
        "verdict": {
            "utilisation": {"value": sweep["utilisation"], "target": TARGET_UTILISATION,
                            "pass": sweep["utilisation"] >= TARGET_UTILISATION},
            "speedup": {"value": speedup, "target": TARGET_SPEEDUP, "pass": bool(speedup >= TARGET_SPEEDUP)},
        },
    }  # fmt: skip
    if args.json:
        json.dump(report, sys.stdout, default=str)
        print()
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
