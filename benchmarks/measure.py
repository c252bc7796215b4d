"""Measuring a training run the same way in every library: the wall and CPU seconds of its loop, its peak memory,
and one child process per measurement (so no run inherits another's allocator, caches or imports)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent  # holds preftune/ and benchmarks/ in a source checkout


class LoopClock:
    """Wall and CPU seconds (`time.process_time`: this process, all its threads) of the training loop. CPU time is
    the load-robust figure: other jobs on the machine stretch the wall time, much less the CPU time."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def start(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


@contextlib.contextmanager
def timing_trainer_fit(clock: LoopClock):
    """While active, every `Trainer.fit` call runs inside ``clock`` (entry to exit, like TRL's ``on_train_begin``
    to ``on_train_end``: it includes what happens between iterations, logging and progress)."""
    from preftune.trainer import Trainer

    fit = Trainer.fit

    def timed_fit(self, *args, **kwargs):
        clock.start()
        try:
            return fit(self, *args, **kwargs)
        finally:
            clock.stop()

    Trainer.fit = timed_fit
    try:
        yield clock
    finally:
        Trainer.fit = fit


def trl_loop_timer(clock: LoopClock):
    """A TRL (transformers) trainer callback that runs ``clock`` from ``on_train_begin`` to ``on_train_end``."""
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_train_end(self, args, state, control, **kwargs):
            clock.stop()

    return LoopTimer()


def proc_status_kb(field: str) -> int:
    """A field of this process's ``/proc/self/status`` in kB, e.g. ``VmRSS`` or ``VmHWM`` (the peak RSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def require_trl() -> None:
    """ImportError unless TRL, the library these studies compare against, is installed."""
    import importlib.util

    if importlib.util.find_spec("trl") is None:
        raise ImportError("`preftune bench trl` compares against TRL, which is not installed: "
                          "pip install preftune[dev]")


def child_env() -> dict[str, str]:
    """A measured child's environment: offline and quiet, and importing this checkout's preftune and benchmarks
    from whatever folder the study was started in."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def run_measured_child(module: str, args: Sequence[str], label: str) -> dict:
    """``python -m module args`` in its own process; the measurement it prints as JSON on its last line."""
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=child_env())
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{label} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])  # libraries may print above; the measurement is the last line
