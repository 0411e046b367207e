"""The ``bvae`` command (also ``python -m sweeps``). Exit codes: 0 success, 2 bad input, 1 anything else."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from typing import NoReturn

from bvae_core.config import ConfigError
from bvae_core.data import DataFileError

from .store import TrackingError


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one β-VAE from a config (no Ray, no MLflow)",
                       description="Train one β-VAE; print progress on stderr and the final metrics as JSON on the "
                                   "last line of stdout.")  # fmt: skip
    p.add_argument("config", help="train config (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value, e.g. --set objective.beta=4 (repeatable)")  # fmt: skip
    p.add_argument("--out", metavar="DIR", help="write the checkpoint, the resolved config, metrics and plots here")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from bvae_core.run import metrics_json, train_from_file

    try:
        metrics = train_from_file(args.config, args.overrides, out=args.out, progress=not args.quiet)
    except ConfigError:
        if _is_sweep_spec(args.config):
            raise ConfigError(f"{args.config} is a sweep spec (it has base and search): run it with `bvae sweep run "
                              f"{args.config}`; `bvae train` takes a train config (what a spec holds as base)") from None
        raise
    print(metrics_json(metrics))
    return 0


def _is_sweep_spec(path: str) -> bool:
    """Whether the file at ``path`` reads as a sweep spec (top-level ``base`` and ``search``)."""
    from bvae_core.config import load_config_file

    try:
        data = load_config_file(path)
    except ConfigError:
        return False
    return "base" in data and "search" in data


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run, resume or submit a sweep (Ray Tune + Optuna, tracked in MLflow)")
    verbs = p.add_subparsers(dest="verb", required=True)
    for verb, text in (("run", "run a sweep from a spec"), ("resume", "continue an interrupted sweep from its storage")):
        v = verbs.add_parser(verb, help=text, description=text)
        v.add_argument("spec", help="sweep spec (YAML)")
        v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override a spec value, e.g. --set search.trials=8 or --set base.train.steps=500")  # fmt: skip
        _add_tracking_uri(v)
        v.set_defaults(func=_cmd_sweep, resume=verb == "resume")
    from .jobs import add_job_verbs

    add_job_verbs(verbs)  # submit, status, logs, stop: a sweep as a Ray job on a cluster


def _add_spec_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="with a spec file: the --set values the sweep ran with (e.g. --set name=…)")


def _add_tracking_uri(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the spec's, else $MLFLOW_TRACKING_URI, else "
                                          "sqlite:///mlflow.db here)")  # fmt: skip


#: Set by a submitted sweep's driver (``sweeps.jobs``): how to continue a sweep that runs as a Ray job.
CONTINUE_HINT_ENV = "BVAE_CONTINUE_HINT"


def resume_command(args: argparse.Namespace) -> str:
    """The ``bvae sweep resume`` line that continues the sweep ``args`` ran: the same spec, ``--set`` values and
    tracking URI, quoted for a POSIX shell (on a cluster, the driver's :data:`CONTINUE_HINT_ENV` instead)."""
    if os.environ.get(CONTINUE_HINT_ENV):
        return os.environ[CONTINUE_HINT_ENV]
    words = ["bvae", "sweep", "resume", args.spec]
    for override in args.overrides:
        words += ["--set", override]
    if args.tracking_uri:
        words += ["--tracking-uri", args.tracking_uri]
    return shlex.join(words)


def errored_line(errored: int, resume: str) -> str:
    """The sweep's last line when ``errored`` trials errored: why, and the command (``resume``) that trains them."""
    what = ("trials errored (each run's bvae.reason tag says why); train them again from their last checkpoints"
            if errored > 1 else "trial errored (its run's bvae.reason tag says why); train it again from its last "
            "checkpoint")  # fmt: skip
    return f"bvae sweep: {errored} {what} with: {resume}"


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    from .progress import summary_table
    from .runner import run_sweep, ui_command

    outcome = run_sweep(spec, resume=args.resume, tracking_uri=args.tracking_uri)
    print(summary_table(outcome.rows))
    from .space import planned_trials

    done = sum(r.status == "COMPLETED" for r in outcome.rows)
    planned = max(len(outcome.rows), planned_trials(spec))  # an interrupted sweep has not started them all
    started = f" ({len(outcome.rows)} started)" if len(outcome.rows) < planned else ""
    print(f"\n{done}/{planned} trials completed{started}. Tracking: {outcome.tracking_uri} "
          f"(experiment {spec.experiment!r}, parent run {outcome.parent_run_id})")  # fmt: skip
    print(f"See it in MLflow: {ui_command(outcome.tracking_uri, outcome.experiment_id)}")
    errored = sum(r.status == "ERROR" for r in outcome.rows)
    if errored and not outcome.interrupted:
        print(errored_line(errored, resume_command(args)), file=sys.stderr)
    if outcome.interrupted:
        print(f"bvae sweep: interrupted; its state is saved. Continue it with: {resume_command(args)}",
              file=sys.stderr)  # fmt: skip
        return 130
    return 1 if errored else 0  # not done: a script's next step (or a cluster's next submit) must know


def _add_frontier_and_pick(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("frontier", help="the R-D frontier of a sweep, from the tracking store",
                       description="Print (or write as Parquet) the frontier table of a sweep: one row per trial with "
                                   "a finite rate and distortion, Pareto ranks, the checkpoint of each.")  # fmt: skip
    f.add_argument("sweep", help="sweep name, parent run id, or the sweep's spec file")
    f.add_argument("--out", metavar="FILE.parquet", help="write the frontier table here, as Parquet")
    f.add_argument("--json", action="store_true", help="print the table as JSON")
    f.add_argument("--experiment", help="MLflow experiment to look in (default: all)")
    _add_spec_overrides(f)
    _add_tracking_uri(f)
    f.set_defaults(func=_cmd_frontier)
    p = sub.add_parser("pick", help="pick β from a sweep's frontier",
                       description="Pick a frontier point by a rule; print β, its hyperparameters, metrics and "
                                   "checkpoint; optionally register its model.")  # fmt: skip
    p.add_argument("sweep", help="sweep name, parent run id, or the sweep's spec file")
    p.add_argument("--rule", required=True, help="knee | max-rate=R | max-distortion=D | max-METRIC (e.g. max-mig)")
    p.add_argument("--max-distortion", type=float, help="with max-METRIC: only points with distortion ≤ D")
    p.add_argument("--register", metavar="NAME", help="register the picked model in the MLflow Model Registry")
    p.add_argument("--alias", help="with --register: alias for the registered version (default: picked)")
    p.add_argument("--json", action="store_true", help="print the pick as one JSON object")
    p.add_argument("--experiment", help="MLflow experiment to look in (default: all)")
    _add_spec_overrides(p)
    _add_tracking_uri(p)
    p.set_defaults(func=_cmd_pick)


def _resolve_sweep(args: argparse.Namespace):
    """(MlflowClient, SweepRef) for SWEEP given as a spec file, a parent run id or a sweep name."""
    from pathlib import Path

    from mlflow import MlflowClient

    from .store import SweepNotFound, check_store_exists, find_sweep, resolve_given_tracking_uri

    name, experiment, spec_uri, key = args.sweep, args.experiment, None, None
    is_spec = args.sweep.endswith((".yaml", ".yml"))
    if args.overrides and not is_spec:
        raise UsageError(f"--set: applies to a spec file, not to the sweep {args.sweep!r}; pass the spec file the "
                         f"sweep ran with")  # fmt: skip
    if is_spec:
        from .runner import sweep_key
        from .spec import load_spec

        spec = load_spec(args.sweep, args.overrides)
        name, experiment, spec_uri, key = spec.name, experiment or spec.experiment, spec.tracking.uri, sweep_key(spec)
    uri, source = resolve_given_tracking_uri(args.tracking_uri, spec_uri, Path.cwd())
    try:
        check_store_exists(uri, source)
        client = MlflowClient(uri)
        return client, find_sweep(client, name, experiment, sweep_key=key)
    except SweepNotFound as e:
        message = str(e)
        if is_spec and not args.experiment and message.startswith("--experiment: "):  # the spec named it
            message = f"{args.sweep}: " + message.removeprefix("--experiment: ")
        raise UsageError(message) from None


def _check_out(out: str) -> None:
    """``frontier --out``: a Parquet file name whose folder exists or can be made (missing folders are made)."""
    from pathlib import Path

    path = Path(out)
    if not out or path.suffix.lower() != ".parquet":
        raise UsageError(f"--out: expected a file name ending in .parquet (the table is written as Parquet), "
                         f"got {out!r}")  # fmt: skip
    if path.is_dir():
        raise UsageError(f"--out: {out} is a directory; expected a file name ending in .parquet")
    folder = next(p for p in path.absolute().parents if p.exists())
    if not folder.is_dir():
        raise UsageError(f"--out: cannot write {out}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out: cannot write {out}: {folder} is not writable")


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _cmd_frontier(args: argparse.Namespace) -> int:
    from .frontier import frontier_rows, write_parquet
    from .pick import HIGHER_IS_BETTER
    from .tables import format_table

    if args.out is not None:
        _check_out(args.out)
    client, ref = _resolve_sweep(args)
    rows = frontier_rows(client, ref)
    if args.out is not None:
        path = write_parquet(rows, args.out)
        print(f"wrote {len(rows)} rows to {path}", file=sys.stderr)
    if args.json:
        print(json.dumps([_public(r) for r in rows], default=str))
        return 0
    scores = [m for m in HIGHER_IS_BETTER if m not in ("active_units", "mutual_info") and any(m in r for r in rows)]
    header = ["trial", "beta", "latent", "schedule", "c_max", "rate", "distortion", *scores, "rank", "frontier", "status"]
    body = [[r["trial_id"], _fmt(r.get("beta")), _fmt(r.get("latent_dim")), r.get("schedule") or "", _fmt(r.get("c_max")),
             f"{r['rate']:.4f}", f"{r['distortion']:.4f}", *(_fmt(r.get(m)) for m in scores), _fmt(r.get("pareto_rank")),
             "*" if r["on_frontier"] else "", r["status"]] for r in rows]  # fmt: skip
    print(f"sweep {ref.name} (parent run {ref.parent_run_id}): {sum(r['on_frontier'] for r in rows)} of {len(rows)} "
          f"points on the frontier")  # fmt: skip
    print(format_table(header, body))
    return 0


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _cmd_pick(args: argparse.Namespace) -> int:
    from .frontier import frontier_of, frontier_rows
    from .pick import (PickError, apply_rule, check_max_distortion, collapse_note, no_knee_reason, parse_rule,
                       pick_summary)
    from .registry import CheckpointMissing, RegistryNameError, check_registry_names, record_pick, register_pick

    try:  # every flag is checked before the store is read or written
        rule = parse_rule(args.rule)
        check_max_distortion(rule, args.rule, args.max_distortion)
        if args.register is None and args.alias is not None:
            raise UsageError(f"--alias: applies only with --register NAME (got --alias {args.alias!r} alone)")
        alias = "picked" if args.alias is None else args.alias
        if args.register is not None:
            check_registry_names(args.register, alias)
    except (PickError, RegistryNameError) as e:
        raise UsageError(str(e)) from None
    client, ref = _resolve_sweep(args)
    rows = frontier_rows(client, ref)
    try:
        row = apply_rule(rows, rule, args.max_distortion)
    except PickError as e:
        raise UsageError(str(e)) from None
    summary = pick_summary(row, args.rule)
    notes = [n for n in (no_knee_reason(frontier_of(rows)) if rule.kind == "knee" else None, collapse_note(row)) if n]
    if notes:
        summary["note"] = "; ".join(notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    model = None
    if args.register is not None:
        try:
            version = register_pick(client, row, args.register, alias)
        except CheckpointMissing as e:
            print(f"bvae pick: error: {e}", file=sys.stderr)
            return 1
        model = f"models:/{args.register}@{alias}"
        summary["registered_model"] = {"name": args.register, "version": version, "alias": alias, "uri": model}
    record_pick(client, ref, row, args.rule, model)
    if args.json:
        print(json.dumps(summary, default=str))
        return 0
    beta = f"β = {row['beta']:.4g}" if row.get("beta") is not None else f"{row.get('schedule')} (C max {_fmt(row.get('c_max'))})"
    print(f"{args.rule} → trial {row['trial_id']}: {beta}, rate {row['rate']:.4f} nats, distortion "
          f"{row['distortion']:.4f} nats")  # fmt: skip
    print("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["params"].items())))
    print("metrics: " + ", ".join(f"{k}={_fmt(v, 6)}" for k, v in summary["metrics"].items()))
    print(f"run: {row['run_id']}  checkpoint: {row.get('checkpoint_uri')}")
    if model:
        print(f"registered: {model} (version {summary['registered_model']['version']})")
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """argparse's errors in one line (its usage block made a mistyped flag 5 lines), pointing at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    parser = _OneLineParser(prog="bvae", description="β-VAE rate-distortion sweeps: train, sweep, pick β.")
    try:
        installed = version("bvae-sweeps")
    except PackageNotFoundError:  # run from a source tree that was never installed
        installed = "(not installed)"
    parser.add_argument("--version", action="version", version=f"bvae {installed}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sweep(sub)
    _add_frontier_and_pick(sub)
    return parser


def _quiet_environment() -> None:
    """No calls home from any library we start (docs/operations.md)."""
    for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}.items():
        os.environ.setdefault(key, value)


def main(argv: Sequence[str] | None = None) -> int:
    from .quiet import quiet_third_party

    _quiet_environment()
    quiet_third_party()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataFileError, UsageError, TrackingError) as e:
        print(f"bvae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = ""
        if args.command == "sweep" and getattr(args, "func", None) is _cmd_sweep:  # a second Ctrl+C, or during start
            hint = f"; what Tune had saved resumes with: {resume_command(args)}"
        print(f"bvae {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader stopped reading (`bvae frontier --json | head`): not an error of ours
        _silence_stdout()
        return 0
    except Exception as e:  # anything else: one line, and the traceback only when asked for
        if os.environ.get("BVAE_DEBUG"):
            raise
        print(f"bvae {args.command}: failed: {type(e).__name__}: {e} (set BVAE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not hit the closed pipe again (the recipe of
    the Python docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a file (captured, replaced): nothing to flush
        pass


if __name__ == "__main__":
    sys.exit(main())
