"""No silent hangs: a step watchdog per rank. A rank stuck in a collective (another rank stopped,
a stuck NCCL call) otherwise waits out the process group timeout with no word.

The loop tells the watchdog what it waits for and how long that may take: the first step its own
allowance (compilation, index building), each later step max(5 x median step time,
watchdog_min_seconds), a checkpoint or an evaluation the first-step allowance. Past the deadline
the watchdog writes every thread's Python stack (faulthandler) to <log_dir>/watchdog-rank<R>.txt
and to stderr, asks the other ranks of a deepy.py job for theirs (SIGUSR2), and exits with
EXIT_HUNG, which slurm/common.sh requeues (the run resumes from its newest complete checkpoint).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import statistics
import sys
import threading
import time

from neox.exit_status import HUNG as EXIT_HUNG

STEP_FACTOR = 5


class Watchdog:
    def __init__(self, log_dir: str, rank: int, min_seconds: float, first_step_seconds: float):
        self.log_dir, self.rank = log_dir, rank
        self.min_seconds, self.first_step_seconds = min_seconds, first_step_seconds
        self.step_times: list[float] = []
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._what = ""
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="watchdog").start()

    def expect(self, what: str, seconds: float, why: str) -> None:
        with self._lock:
            self._deadline, self._what = time.monotonic() + seconds, f"{what} ({seconds:.0f} s allowed: {why})"

    def expect_step(self, update: int, last_step_seconds: float | None = None) -> None:
        """Before update ``update``: the first one gets the first-step allowance."""
        if last_step_seconds is not None:
            self.step_times = (self.step_times + [last_step_seconds])[-100:]
        if not self.step_times:
            self.expect(f"step {update}", self.first_step_seconds, "watchdog_first_step_seconds")
            return
        median = statistics.median(self.step_times)
        allowance = max(STEP_FACTOR * median, self.min_seconds)
        self.expect(f"step {update}", allowance, f"max({STEP_FACTOR} x median step time {median:.2f} s, "
                                                 f"watchdog_min_seconds {self.min_seconds:g})")

    def expect_slow(self, what: str) -> None:
        """A checkpoint or an evaluation: the first-step allowance."""
        self.expect(what, self.first_step_seconds, "watchdog_first_step_seconds")

    def close(self) -> None:
        self._stop.set()

    def _watch(self):
        while not self._stop.wait(1.0):
            with self._lock:
                late = self._deadline is not None and time.monotonic() > self._deadline
                what = self._what
            if late:
                self._fire(what)

    def _fire(self, what: str):
        path = os.path.join(self.log_dir, f"watchdog-rank{self.rank}.txt")
        message = (f"watchdog: rank {self.rank} waited too long for {what}; every thread's stack is in {path}; "
                   f"exit status {EXIT_HUNG} (requeue resumes from the newest complete checkpoint)")
        try:
            os.makedirs(self.log_dir, exist_ok=True)
            with open(path, "w") as f:
                f.write(message + "\n")
                faulthandler.dump_traceback(file=f, all_threads=True)
        except OSError:
            pass
        print(message, file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        if os.environ.get("NEOX_LAUNCHER_PID"):  # deepy.py's ranks share a process group: their stacks too
            try:
                os.killpg(os.getpgrp(), signal.SIGUSR2)
            except OSError:
                pass
            time.sleep(2)  # let them print before deepy stops them
        os._exit(EXIT_HUNG)
