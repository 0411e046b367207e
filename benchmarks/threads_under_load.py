"""Training img/s of an MLP β-VAE on ``blobs`` (32 px, batch 64) with ``train.threads`` = 1, every core, and the
default (null: :func:`bvae_core.threads.choose_threads`), on the machine as it is and again while N busy processes
(pure-Python loops this script starts and ends) hold cores.

    python benchmarks/threads_under_load.py [--steps 400] [--busy 1]

Each setting runs in a fresh process, three times, interleaved; the median is printed. On a shared machine the
"idle" row is only as idle as the machine is: the load average is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

RUN = r"""
import sys, time, torch
from bvae_core import Trainer
threads = None if sys.argv[1] == "auto" else int(sys.argv[1])
steps = int(sys.argv[2])
cfg = {"dataset": {"name": "blobs", "resolution": 32},
       "model": {"arch": "mlp", "latent_dim": 4, "hidden": 256},
       "train": {"steps": steps + 50, "batch_size": 64, "eval_every": steps + 50, "device": "cpu", "threads": threads}}
t = Trainer(cfg)
t.fit(50)
start = time.perf_counter()
t.fit(steps)
print(64 * steps / (time.perf_counter() - start), torch.get_num_threads(), t.threads.describe())
"""


def measure(threads: str, steps: int) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", RUN, threads, str(steps)], capture_output=True, text=True, env=env,
                         check=True).stdout.split(maxsplit=2)  # fmt: skip
    return float(out[0]), out[2].strip()


def table(settings: list[str], steps: int, repeats: int) -> dict[str, tuple[float, str]]:
    results: dict[str, list[tuple[float, str]]] = {s: [] for s in settings}
    for _ in range(repeats):
        for s in settings:
            results[s].append(measure(s, steps))
    return {s: (statistics.median(r[0] for r in rs), rs[-1][1]) for s, rs in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--busy", type=int, default=1, help="busy processes to start for the loaded rows")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    settings = ["1", str(cores), "auto"]
    print(f"{cores} cores; MLP on blobs 32 px, batch 64, {args.steps} steps; median of {args.repeats}")
    for busy in (0, args.busy):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(2 if busy else 0)  # let the scheduler see them
            load = os.getloadavg()[0]
            rows = table(settings, args.steps, args.repeats)
        finally:
            for hog in hogs:  # only the processes started here
                hog.kill()
                hog.wait()
        print(f"-- {busy} busy process(es) started here (load average {load:.1f})")
        for s, (ips, chosen) in rows.items():
            name = "default (null)" if s == "auto" else f"threads={s}"
            print(f"  {name:16s} {ips:8,.0f} img/s   [{chosen}]")


if __name__ == "__main__":
    main()
