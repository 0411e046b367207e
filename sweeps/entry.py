"""The ``bvae`` command's entry point (also ``python -m sweeps``): Ctrl+C while torch and Ray load — the first second
or so — ends with one line and exit 130, not an import traceback, and is not lost: a KeyboardInterrupt raised inside
torch's C extension while it imports is swallowed there (the command then ran on, training, as if never stopped), so
during the imports Ctrl+C is only noted, and acted on once they are done."""

from __future__ import annotations

import signal
import sys


def main() -> int:
    pressed: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:  # (raised by another handler, had one been set)
        pressed.append(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        print("bvae: interrupted", file=sys.stderr)
        return 130
    return cli_main()
