"""The ``bvae`` command's entry point (also ``python -m sweeps``): the CLI is imported inside a guard, so that Ctrl+C
while torch and Ray load — the first second or so — ends with one line and exit 130, not an import traceback."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from .cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:  # before the CLI's own handling starts (it prints its own line once running)
        print("bvae: interrupted", file=sys.stderr)
        return 130
