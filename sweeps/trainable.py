"""The Ray Tune trainable: a trial's flat parameters → :class:`bvae_core.Trainer`; report the contract metrics and a
checkpoint every ``train.eval_every`` steps; continue from ``tune.get_checkpoint()`` after a restore."""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from ray import tune

from bvae_core import NonFiniteLossError, Trainer
from bvae_core.atomic import torch_bytes, write_atomically
from bvae_core.data import Dataset, GroundTruthDataset, make_dataset
from bvae_core.trainer import resolve_device

from .cohorts import REPEAT_KEY, RUNGS_KEY, STOPPED_KEY, is_cohort, member_folder, member_id
from .member_scheduler import MemberJudge, evaluation_index
from .faults import fault_plan
from .outcome import DONE_KEY, NOTICE_KEY
from .spec import parse_spec

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.json"  # held-out rate and C(t) at every evaluation: the KL-against-capacity plot

#: Training metrics that are not ``train/*`` terms but are reported with each evaluation (docs/contracts.md).
TRAINING_STATE_METRICS = ("capacity_multiplier",)


def training_metrics(latest: dict[str, Any]) -> dict[str, Any]:
    """What a report carries from the latest training log: the ``train/*`` means and the capacity multiplier λ."""
    return {k: v for k, v in latest.items() if k.startswith("train/") or k in TRAINING_STATE_METRICS}

# Datasets built in this worker process, reused by later trials on the same actor (reuse_actors=True): dSprites'
# render tables cost seconds to build and are the same for every trial.
_DATASETS: dict[str, Dataset] = {}


def _dataset_for(config) -> Dataset:
    device = resolve_device(config.train.device)
    key = json.dumps([config.dataset.model_dump(mode="json"), str(device)], sort_keys=True)
    if key not in _DATASETS:
        _DATASETS.clear()  # keep one: a worker serves one sweep
        options = config.dataset.model_dump(exclude={"name"})
        _DATASETS[key] = make_dataset(config.dataset.name, device, **options)
    return _DATASETS[key]


def cap_gpu_memory(share: float) -> float | None:
    """Tell a trial with a fractional GPU (``resources.gpu`` < 1) its share: cap this process's CUDA memory to that
    fraction of the device Ray assigned it (Ray packs ``1/share`` trials on one GPU and enforces nothing itself).
    Returns the fraction set, or None (no CUDA, or a whole GPU)."""
    if not 0 < share < 1 or not torch.cuda.is_available():
        return None
    device = torch.cuda.current_device()  # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU
    torch.cuda.set_per_process_memory_fraction(share, device)
    return share


def train_trial(params: dict[str, Any], spec: dict[str, Any]) -> None:
    """Function trainable. ``params`` are the trial's flat sampled parameters (or, for a fused cohort, its members':
    :mod:`sweeps.cohorts`); ``spec`` the raw sweep spec."""
    sweep = parse_spec(spec)
    if is_cohort(params):
        _train_cohort(params, sweep)
        return
    config = sweep.trial_config(params)
    cap_gpu_memory(sweep.resources.gpu)
    trainer = Trainer(config, dataset=_dataset_for(config))
    checkpoint = tune.get_checkpoint()
    faults, trial_id = fault_plan(), tune.get_context().get_trial_id()
    history: list[dict[str, float]] = []
    notice = None
    if checkpoint is not None:
        notice = _restore(lambda candidate: history.extend(_load(trainer, candidate)), checkpoint, lambda: trainer.step)
    total, latest_train = config.train.steps, {}
    # Always end with a report: a trial restored from its final checkpoint (it finished, but the driver died before
    # Tune recorded that) reports its final, deterministic evaluation again instead of ending with no result.
    while True:
        try:
            if trainer.step < total:
                trainer.fit(min(config.train.eval_every, total - trainer.step), on_log=latest_train.update)
            if faults is not None:
                faults.check(trial_id, params, trainer.step, restored=checkpoint is not None)
        except NonFiniteLossError as e:
            # No retry can help a diverged trial: report it as such (the searcher tells Optuna FAIL).
            tune.report({"rate": math.nan, "distortion": math.nan, "step": float(trainer.step), DONE_KEY: False,
                         "error": str(e)})  # fmt: skip
            return
        metrics = trainer.evaluate()
        metrics.update(training_metrics(latest_train))
        metrics[DONE_KEY] = trainer.step >= total
        if notice:
            metrics[NOTICE_KEY], notice = notice, None  # said once, on the first report after the restore
        if metrics[DONE_KEY] and sweep.eval.metrics:
            metrics.update(_disentanglement(trainer.model, trainer.dataset, sweep.eval.metrics, sweep.eval.preset,
                                            config.seed))  # fmt: skip
        if not history or history[-1]["step"] != trainer.step:
            history.append({"step": trainer.step, "rate": metrics["rate"], "capacity": metrics.get("capacity")})
        with tempfile.TemporaryDirectory() as folder:
            if metrics[DONE_KEY]:
                _save_final(trainer, Path(folder) / CHECKPOINT_FILE)
            else:
                trainer.save(Path(folder) / CHECKPOINT_FILE)
            (Path(folder) / HISTORY_FILE).write_text(json.dumps(history))
            if metrics[DONE_KEY]:
                _write_trial_plots(trainer.model, trainer.likelihood, trainer.dataset, metrics, history, Path(folder))
            _report(metrics, folder)
        if metrics[DONE_KEY]:
            return


COHORT_FILE = "cohort.pt"


def _train_cohort(params: dict[str, Any], sweep) -> None:
    """A fused cohort (``search.cohort``): the members' configurations trained as one model. Every report carries each
    member's metrics under ``members``; the final checkpoint a plain ``Trainer`` checkpoint and the figures per
    member (``member_<j>/``), beside the whole cohort's state for a restore."""
    from bvae_core.cohort import ACTIVE, FAILED, Cohort

    members = params["members"]
    configs = [sweep.trial_config(m["params"]) for m in members]
    cap_gpu_memory(sweep.resources.gpu)
    cohort = Cohort(configs, dataset=_dataset_for(configs[0]))
    size, train = len(configs), configs[0].train
    histories: list[list[dict[str, Any]]] = [[] for _ in range(size)]
    checkpoint = tune.get_checkpoint()
    faults, trial_id = fault_plan(), tune.get_context().get_trial_id()
    notice = None
    if checkpoint is not None:
        notice = _restore(lambda candidate: _load_cohort(cohort, candidate, histories), checkpoint, lambda: cohort.step)
    latest: list[dict[str, float]] = [{} for _ in range(size)]

    def keep_train_metrics(per_member: list[dict[str, float]]) -> None:
        for k, metrics in enumerate(per_member):
            latest[k].update(metrics)

    judge = None
    if params.get(RUNGS_KEY) and sweep.search.scheduler is not None:  # early stopping per member
        judge = MemberJudge(params[RUNGS_KEY], sweep.search.scheduler.metric)
    last: dict[int, dict[str, Any]] = {}  # the latest result of each member stopped or failed

    while True:
        # Members not training at the start of this round (stopped or failed, then reported) repeat that result.
        reported = [status != ACTIVE for status in cohort.status]
        if cohort.step < train.steps and any(cohort.active):
            cohort.fit(min(train.eval_every, train.steps - cohort.step), on_log=keep_train_metrics)
        if faults is not None:
            faults.check(trial_id, params, cohort.step, restored=checkpoint is not None)
        fresh = [k for k in range(size) if not reported[k] and cohort.status[k] != FAILED]
        results: dict[str, dict[str, Any]] = {}
        for k, metrics in zip(fresh, cohort.evaluate(fresh)):
            metrics.update(training_metrics(latest[k]))
            metrics["step"] = float(cohort.member_steps(k))
            metrics[DONE_KEY] = cohort.member_steps(k) >= train.steps
            if metrics[DONE_KEY] and sweep.eval.metrics:
                metrics.update(_disentanglement(cohort.member_model(k), cohort.dataset, sweep.eval.metrics,
                                                sweep.eval.preset, configs[k].seed))  # fmt: skip
            if not histories[k] or histories[k][-1]["step"] != metrics["step"]:
                histories[k].append({"step": metrics["step"], "rate": metrics["rate"], "capacity": metrics.get("capacity")})
            results[str(k)] = metrics
            if judge is not None and not metrics[DONE_KEY]:
                evaluation = evaluation_index(metrics["step"], train.eval_every)
                if judge.should_stop(member_id(trial_id, k), evaluation, metrics):
                    cohort.stop(k)  # stops updating; its checkpoint is kept as of this evaluation
                    if cohort.status[k] != FAILED:  # (stop syncs first: a member found diverged is FAIL below)
                        metrics[STOPPED_KEY] = True
                        last[k] = metrics
        for k in range(size):
            if cohort.status[k] == FAILED and not reported[k]:  # its loss went non-finite: masked, the others trained on
                last[k] = results[str(k)] = _member_failure(cohort, k)
            elif reported[k]:
                if k not in last:  # restored: what it reported before (a stopped member's frozen model evaluates the same)
                    last[k] = (_member_failure(cohort, k) if cohort.status[k] == FAILED else
                               {**cohort.evaluate([k])[0], "step": float(cohort.member_steps(k)), DONE_KEY: False})  # fmt: skip
                results[str(k)] = {**last[k], REPEAT_KEY: True}
        done = cohort.step >= train.steps or not any(cohort.active)
        report: dict[str, Any] = {"members": results, "step": float(cohort.step), DONE_KEY: done}
        if notice:
            report[NOTICE_KEY], notice = notice, None
        with tempfile.TemporaryDirectory() as folder:
            cohort.save(Path(folder) / COHORT_FILE)
            (Path(folder) / HISTORY_FILE).write_text(json.dumps(histories))
            if done:
                for k in (k for k in range(size) if cohort.status[k] != FAILED):
                    own = Path(folder) / member_folder(k)
                    own.mkdir()
                    state = {key: v for key, v in cohort.member_state_dict(k).items() if not key.endswith("optimizer")}
                    write_atomically(own / CHECKPOINT_FILE, torch_bytes(state))  # as _save_final
                    _write_trial_plots(cohort.member_model(k), cohort.likelihood, cohort.dataset, results[str(k)],
                                       histories[k], own)  # fmt: skip
            _report(report, folder)
        if done:
            return


def _member_failure(cohort, k: int) -> dict[str, Any]:
    """The result of a member whose loss went non-finite (FAIL, with the step and terms it happened at)."""
    return {"rate": math.nan, "distortion": math.nan, DONE_KEY: False, "step": float(cohort.member_steps(k)),
            "error": cohort.errors[k]}  # fmt: skip


def _load_cohort(cohort, checkpoint: tune.Checkpoint, histories: list[list[dict[str, Any]]]) -> None:
    state, saved = _read_checkpoint(checkpoint, COHORT_FILE)
    cohort.load_state_dict(state)
    for k, history in enumerate(saved[: len(histories)]):
        histories[k][:] = history


#: Seconds between attempts to store a checkpoint whose upload failed (an S3 hiccup): ~1 minute survived in all.
REPORT_RETRY_S = (2.0, 4.0, 8.0, 16.0, 30.0)


def _report(metrics: dict[str, Any], folder: str) -> None:
    """``tune.report`` with the checkpoint in ``folder``, retried when storing it fails (``OSError``: the storage is
    unreachable or refused the write). Tune registers a checkpoint only once every file is stored, so a half-written
    one is never restored; a retry writes a new one."""
    for wait in (*REPORT_RETRY_S, None):
        try:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            return
        except OSError as exc:
            if wait is None:
                raise
            print(f"storing the checkpoint failed ({' '.join(str(exc).split())[:300]}); retrying in {wait:.0f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
            time.sleep(wait)


class CheckpointError(RuntimeError):
    """None of a trial's checkpoints can be read."""


def _read_checkpoint(checkpoint: tune.Checkpoint, name: str) -> tuple[dict[str, Any], list]:
    """The state in ``name`` and the history of a checkpoint; :class:`CheckpointError` naming the file if unreadable."""
    try:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / name, map_location="cpu", weights_only=False)
            history_file = Path(folder) / HISTORY_FILE
            history = json.loads(history_file.read_text()) if history_file.exists() else []
    except Exception as exc:  # noqa: BLE001 - a truncated, corrupt or half-stored checkpoint fails in many ways
        raise CheckpointError(f"{checkpoint.path}/{name} is unreadable ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]})") from None  # fmt: skip
    return state, history


def _load(trainer: Trainer, checkpoint: tune.Checkpoint) -> list[dict[str, float]]:
    state, history = _read_checkpoint(checkpoint, CHECKPOINT_FILE)
    state.setdefault("optimizer", trainer.optimizer.state_dict())  # a final checkpoint has none (it trains no more)
    trainer.load_state_dict(state)
    return history


def _older_checkpoints(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The trial's other checkpoints that Tune kept (``checkpoint_NNNNNN`` beside this one), newest first."""
    import posixpath
    import re

    import pyarrow.fs as pafs

    parent, name = posixpath.split(checkpoint.path.rstrip("/"))
    found = re.fullmatch(r"checkpoint_(\d+)", name)
    if found is None:
        return []
    infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent))
    older = [(int(m.group(1)), info.path) for info in infos if info.type == pafs.FileType.Directory
             and (m := re.fullmatch(r"checkpoint_(\d+)", info.base_name)) and int(m.group(1)) < int(found.group(1))]  # fmt: skip
    return [tune.Checkpoint(path, filesystem=checkpoint.filesystem) for _, path in sorted(older, reverse=True)]


def _restore(load: Callable[[tune.Checkpoint], None], checkpoint: tune.Checkpoint, step: Callable[[], int]) -> str | None:
    """``load`` the trial's latest checkpoint; if it cannot be read (truncated, corrupt: ``load`` raises
    :class:`CheckpointError`), say which file and fall back to the previous checkpoint Tune kept. Returns the notice
    to report, or None."""
    problems: list[str] = []
    for candidate in [checkpoint, *_older_checkpoints(checkpoint)]:
        try:
            load(candidate)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        return f"{'; '.join(problems)}; restored from {candidate.path} (step {step()})" if problems else None
    raise CheckpointError("; ".join(problems) + "; no earlier checkpoint to restore from")


def _save_final(trainer: Trainer, path: Path) -> None:
    """The last checkpoint of a finished trial, without the optimizer state: nothing trains from it again (a restore
    only re-reports it; ``bvae pick --register`` needs the model), and Adam's two moments are twice the model's size
    (quickstart: 2.7 MB instead of 8.0 MB; also in the tracking store's copy)."""
    state = {key: value for key, value in trainer.state_dict().items() if not key.endswith("optimizer")}
    write_atomically(path, torch_bytes(state))


def _disentanglement(model: torch.nn.Module, dataset: Dataset, names: list[str], preset: str, seed: int) -> dict[str, Any]:
    """The spec's disentanglement metrics on the encoder means, and the parameters they used (logged as params)."""
    from functools import partial

    from bvae_core.evaluation import encode_means
    from bvae_core.metrics import compute_metrics, metric_params

    results: dict[str, Any] = compute_metrics(names, dataset, partial(encode_means, model), preset, seed)
    results["metric_params"] = metric_params(names, preset)
    return results


def _write_trial_plots(model: torch.nn.Module, likelihood: Any, dataset: Dataset, metrics: dict[str, float],
                       history: list[dict], folder: Path) -> None:  # fmt: skip
    """The final checkpoint carries the trial's figures; the tracking callback logs them to the trial's run."""
    import matplotlib.pyplot as plt

    from bvae_core.plots import kl_against_capacity, save_model_plots

    save_model_plots(model, likelihood, dataset, metrics, folder)
    figures = {}
    if history and history[-1].get("capacity") is not None:
        figures["kl_vs_capacity.png"] = kl_against_capacity(history)
    factors = getattr(dataset, "test_factors", None)
    if factors is not None:  # rendered (dsprites, blobs) or stored with the examples (a file with factors)
        from bvae_core.evaluation import encode_means
        from bvae_core.plots import latent_factor_correlation

        factors = factors[:2000]
        examples = (dataset.render(factors) if isinstance(dataset, GroundTruthDataset)
                    else dataset.test_examples(torch.arange(factors.shape[0])))  # fmt: skip
        codes = encode_means(model, examples)
        figures["latent_factor_correlation.png"] = latent_factor_correlation(
            codes.numpy(), factors.cpu().numpy(), dataset.factor_names)  # fmt: skip
    for name, fig in figures.items():
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
