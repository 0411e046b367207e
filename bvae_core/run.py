"""Train one model to the end with periodic held-out evaluation: what ``bvae train`` runs, usable from a notebook."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import yaml

from .config import ConfigError, TrainConfig, load_config_file, parse_config
from .trainer import GRAPH_WARMUP_STEPS, Trainer


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressPrinter:
    """One line per log interval and per evaluation, on stderr (log-friendly: no carriage returns)."""

    def __init__(self, total_steps: int, stream: TextIO = sys.stderr):
        self.total, self.stream, self.started = total_steps, stream, time.perf_counter()

    def train(self, m: dict[str, float]) -> None:
        step = int(m["step"])
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(step, 1) * (self.total - step)
        knob = f"C {m['capacity']:.2f} λ {m['capacity_multiplier']:.3g}" if "capacity" in m else f"β {m['beta']:.4g}"
        print(f"step {step:>{len(str(self.total))}}/{self.total} {100 * step / self.total:3.0f}%  "
              f"loss {m['train/loss']:.3f}  rate {m['train/rate']:.3f}  distortion {m['train/distortion']:.3f}  "
              f"{knob}  {m.get('images_per_s', 0):,.0f} img/s  eta {_fmt_duration(eta)}",
              file=self.stream, flush=True)  # fmt: skip

    def evaluation(self, m: dict[str, float], latent_dim: int) -> None:
        print(f"eval step {int(m['step'])}: rate {m['rate']:.3f} ± {m['stderr/rate']:.3f} nats  "
              f"distortion {m['distortion']:.3f} ± {m['stderr/distortion']:.3f} nats  "
              f"active units {int(m['active_units'])}/{latent_dim}", file=self.stream, flush=True)  # fmt: skip


def metrics_json(metrics: dict[str, float], **kwargs: Any) -> str:
    """Metrics as strict JSON: a non-finite value (NaN, ±inf, which JSON has no word for) is written ``null``."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in metrics.items()}
    return json.dumps(clean, sort_keys=True, allow_nan=False, **kwargs)


#: the files :func:`train` writes in ``out`` besides the figures
RUN_FILES = ("checkpoint.pt", "config.yaml", "metrics.json")


def train(config: TrainConfig | dict[str, Any], out: str | Path | None = None, progress: bool = True) -> dict[str, float]:
    """Train to ``train.steps``, evaluating every ``train.eval_every`` steps; return the final held-out metrics.

    With ``out``: ``checkpoint.pt`` after every evaluation, then ``config.yaml`` (resolved), ``metrics.json`` and
    the plots of :func:`bvae_core.plots.save_model_plots`; in a folder that holds a run already, that run's files
    move to ``previous/`` first (with a note on stderr: training starts over, it does not continue that run)."""
    cfg = parse_config(config)
    try:
        trainer = Trainer(cfg)
    except ValueError as e:  # a dataset or model option the config schema cannot check (e.g. n_test too large)
        raise ConfigError(str(e)) from None
    if out is not None and not str(out).strip():
        raise ConfigError("out: expected a folder for the run's files, got an empty path")
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(f"out: {out_dir} is a file; expected a folder (new or existing) for the run's files")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"out: cannot create the folder {out_dir}: {e.strerror or e}") from None
        if (out_dir / "checkpoint.pt").is_file():  # said, not silent: the earlier run's files move aside
            from .plots import MODEL_FIGURES

            earlier = [out_dir / name for name in (*RUN_FILES, *MODEL_FIGURES) if (out_dir / name).is_file()]
            aside = out_dir / "previous"
            print(f"note: out: {out_dir} already holds a run (checkpoint.pt); this run starts from step 0, and that "
                  f"run's files ({', '.join(p.name for p in earlier)}) move to {aside}", file=sys.stderr, flush=True)  # fmt: skip
            try:  # none of them may stay beside this run's (a folder mixing two runs), and none is lost
                aside.mkdir(exist_ok=True)
                for name in (*RUN_FILES, *MODEL_FIGURES):  # the run before that one: its files only
                    (aside / name).unlink(missing_ok=True)
                for path in earlier:
                    path.rename(aside / path.name)
            except OSError as e:
                raise ConfigError(f"out: cannot move the earlier run's files in {out_dir} aside: "
                                  f"{e.strerror or e}") from None  # fmt: skip
        try:  # the first write: a folder that exists but is read-only stops here, before any training
            (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        except OSError as e:
            raise ConfigError(f"out: cannot write to the folder {out_dir}: {e.strerror or e}") from None
    short = cfg.objective.schedule.cut_short(cfg.objective.beta, cfg.train.steps)
    if short:  # said, not silent: the run is not the schedule the config describes
        print(f"note: {short}", file=sys.stderr, flush=True)
    printer = ProgressPrinter(cfg.train.steps) if progress else None
    if printer:
        threads = f" with {trainer.threads.describe()}" if trainer.threads is not None else ""
        if trainer.graphs:
            threads = f", the step captured as a CUDA graph after {GRAPH_WARMUP_STEPS} eager steps"
        print(f"training {cfg.model.arch} (latent {cfg.model.latent_dim}) on {cfg.dataset.name} for {cfg.train.steps} "
              f"steps on {trainer.device}{threads}", file=sys.stderr, flush=True)  # fmt: skip
    metrics: dict[str, float] = {}
    while trainer.step < cfg.train.steps:
        trainer.fit(min(cfg.train.eval_every, cfg.train.steps - trainer.step), on_log=printer.train if printer else None)
        metrics = trainer.evaluate()
        if printer:
            printer.evaluation(metrics, cfg.model.latent_dim)
        if out_dir is not None:
            trainer.save(out_dir / "checkpoint.pt")
    if not metrics:
        metrics = trainer.evaluate()
    if out_dir is not None:
        from .plots import save_model_plots

        (out_dir / "metrics.json").write_text(metrics_json(metrics, indent=2))
        save_model_plots(trainer.model, trainer.likelihood, trainer.dataset, metrics, out_dir)
    return metrics


def train_from_file(path: str | Path, overrides: list[str] = (), **kwargs: Any) -> dict[str, float]:
    return train(load_config_file(path, list(overrides)), **kwargs)
