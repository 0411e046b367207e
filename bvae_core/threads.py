"""How many CPU threads a run trains with when the config does not say (``train.threads: null``).

torch's default is one intra-op thread per core. On a machine where other processes hold cores that is the slowest
choice there is: every operator ends at a barrier that waits for its slowest thread, and a thread whose core is
taken waits for the scheduler (measured on 2 cores with one other busy process: an MLP on ``blobs`` at 1,717 img/s
with 2 threads and 4,477 img/s with 1; ``benchmarks/threads_under_load.py``). So the default counts the cores that
are free now and takes that many (at least one): all of them on an idle machine, one when the others are busy.
The OpenMP wait policy is left alone: it is read once, when torch's OpenMP runtime starts (at import, before any
config is seen), and with one thread there is no barrier to wait at.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a run uses and why (the ``bvae train`` progress line prints :meth:`describe`)."""

    threads: int
    reason: str  # "train.threads", "OMP_NUM_THREADS", "auto" or "the checkpoint's" (a resumed auto choice)
    cores: int
    busy: float  # cores other processes were using when it was chosen (auto only)

    def describe(self) -> str:
        unit = "thread" if self.threads == 1 else "threads"
        if self.reason == "auto":
            return f"{self.threads} {unit} (auto: load {self.busy:.2f} on {self.cores} cores)"  # load may exceed the cores
        return f"{self.threads} {unit} ({self.reason})"


#: torch's own default, read before anything here changes it: one thread per physical core (hyper-threads add none).
_TORCH_DEFAULT = torch.get_num_threads()


def available_cores() -> int:
    """Cores this process may use: those of its CPU affinity (where the OS has one), at most torch's default."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _TORCH_DEFAULT))


def busy_cores(samples: int = 5, interval_s: float = 0.01) -> float:
    """Cores other processes are using: the larger of the 1-minute load average and the runnable threads right
    now (``procs_running`` in /proc/stat, less this one, averaged over a few samples, so that a process started
    seconds ago counts too). 0 where neither can be read."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    running = []
    for i in range(samples):
        try:
            with open("/proc/stat") as f:
                line = next(line for line in f if line.startswith("procs_running"))
            running.append(max(0, int(line.split()[1]) - 1))
        except (OSError, StopIteration, ValueError):
            break
        if i + 1 < samples:
            time.sleep(interval_s)
    now = sum(running) / len(running) if running else 0.0
    return max(load, now)


def choose_threads(requested: int | None, cores: int | None = None, busy: float | None = None) -> ThreadChoice:
    """``train.threads`` when given; else ``OMP_NUM_THREADS`` when set (Ray sets it to a trial's ``cpu``); else the
    cores not busy now, rounded, at least 1 and at most :func:`available_cores`."""
    cores = available_cores() if cores is None else cores
    if requested is not None:
        return ThreadChoice(requested, "train.threads", cores, 0.0)
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return ThreadChoice(int(env), "OMP_NUM_THREADS", cores, 0.0)
    busy = busy_cores() if busy is None else busy
    return ThreadChoice(max(1, min(cores, round(cores - busy))), "auto", cores, busy)


def keep_threads(threads: int, chosen: ThreadChoice) -> ThreadChoice:
    """A resumed run whose thread count was chosen automatically continues with the count it trained with (its
    checkpoint's, at most this machine's cores): on CPU the last digits of a convolution depend on it, and a resume
    promises the same numbers."""
    threads = min(threads, chosen.cores)  # never more than this machine has (a checkpoint from a bigger one)
    torch.set_num_threads(threads)
    return ThreadChoice(threads, "the checkpoint's", chosen.cores, chosen.busy)


def apply_threads(requested: int | None) -> ThreadChoice:
    """Choose (:func:`choose_threads`) and set torch's intra-op thread count; return the choice."""
    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    return choice
