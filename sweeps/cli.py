"""The ``bvae`` command (also ``python -m sweeps``). Exit codes: 0 success, 2 bad input, 1 anything else."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from bvae_core.config import ConfigError
from bvae_core.data import DataFileError


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
    from bvae_core.run import train_from_file

    metrics = train_from_file(args.config, args.overrides, out=args.out, progress=not args.quiet)
    print(json.dumps(metrics, sort_keys=True))
    return 0


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


def _add_tracking_uri(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the spec's, else sqlite:///mlflow.db here)")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    from .progress import summary_table
    from .runner import run_sweep, ui_command

    outcome = run_sweep(spec, resume=args.resume, tracking_uri=args.tracking_uri)
    print(summary_table(outcome.rows))
    done = sum(r.status == "COMPLETED" for r in outcome.rows)
    print(f"\n{done}/{len(outcome.rows)} trials completed. Tracking: {outcome.tracking_uri} "
          f"(experiment {spec.experiment!r}, parent run {outcome.parent_run_id})")  # fmt: skip
    print(f"Open the MLflow UI: {ui_command(outcome.tracking_uri)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bvae", description="β-VAE rate-distortion sweeps: train, sweep, pick β.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_sweep(sub)
    return parser


def _quiet_environment() -> None:
    """No calls home from any library we start (STACK.md)."""
    for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}.items():
        os.environ.setdefault(key, value)


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataFileError, UsageError) as e:
        print(f"bvae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bvae {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # anything else: one line, and the traceback only when asked for
        if os.environ.get("BVAE_DEBUG"):
            raise
        print(f"bvae {args.command}: failed: {type(e).__name__}: {e} (set BVAE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
