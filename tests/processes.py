"""Launching the CLI and the trainers in subprocesses, robustly on a slow, busy or GPU machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

#: `accelerate launch` with two processes through torchrun (`launch_env` picks the port).
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def launch_env(**extra: str) -> dict[str, str]:
    """The environment for `ACCELERATE`: one thread per process, and torchrun in standalone mode.

    PET_STANDALONE=1 is torchrun's --standalone (its options read PET_* variables; accelerate runs torchrun in
    its own process): the rendezvous store binds port 0, so the kernel gives it a free port as it binds and
    the workers get that port from the store. A fixed port collides with a concurrent run of the suite, and a
    port found free and released again (accelerate's own "--main_process_port 0") can be taken before
    torchrun binds it; here no port is chosen before the bind.
    """
    return {**os.environ, "OMP_NUM_THREADS": "1", "PET_STANDALONE": "1", **extra}


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # the group has exited
        pass


def kill_part_way(cmd: Sequence[str], written: Callable[[], int], at_least: int = 4, env=None,
                  hang_guard_s: float = 600.0, slice_s: float = 0.02) -> int:
    """Start ``cmd`` in a process group, SIGKILL the group once ``written()`` >= at_least; return ``written()`` then.

    The group runs in slices (SIGCONT, ``slice_s``, SIGSTOP) and is looked at while stopped, so it cannot
    write on between the look and the kill however busy the machine: a kill lands a few lines after
    ``at_least`` even where a run is fast and the test is slow to look. ``hang_guard_s`` only ends a run that
    never gets there (then fewer than ``at_least`` lines are returned).
    """
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + hang_guard_s
    try:
        while written() < at_least and proc.poll() is None and time.monotonic() < deadline:
            _signal_group(proc.pid, signal.SIGCONT)
            time.sleep(slice_s)
            _signal_group(proc.pid, signal.SIGSTOP)
        return written()
    finally:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
