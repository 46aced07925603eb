"""deepy.py's local launcher: the ranks of one node as children of deepy itself.

Neither DeepSpeed's runner nor torchrun keeps a stopped job's exit status and its ranks' truth
(measured by bench/launchers.py; docs/checkpoints.md), so deepy starts the
ranks the way both do on one node (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and
owns them: the ranks form one process group of their own (a terminal's Ctrl-C reaches deepy
only); SIGTERM and SIGUSR1 are passed on to them; the first Ctrl-C is passed on as SIGTERM
(checkpoint, exit 75), a second one kills them at once; the first rank to fail is named with its
status or signal; deepy exits with the job's status. Each rank asks the kernel for a SIGTERM
if deepy dies (neox.launch.stop_request.follow_launcher), so an orphan checkpoints and stops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import IO, TextIO

from neox.launch.stop_request import SIGNALS as STOP_SIGNALS

# how deepy.py hands each rank its resolved config (also how a rank is told from deepy itself)
RANK_CONFIG_FLAG = "--neox-config-b64"
# after a rank failed (not a stop), the others get SIGTERM and this long before SIGKILL
GRACE_SECONDS = 30
HUNG_GRACE_SECONDS = 5  # after a watchdog exit (the others are stuck too)


def exit_status(returncode: int) -> int:
    """A shell's view of a child's status: 128 + N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_status(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by signal {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


class LocalJob:
    def __init__(self, cmd: list, num_ranks: int, port: int, env: dict, pump: Callable[[IO[str], TextIO], None]):
        self.cmd, self.num_ranks, self.port, self.env, self.pump = cmd, num_ranks, port, env, pump
        self.procs: list[subprocess.Popen] = []
        self.pumps: list[threading.Thread] = []
        self.interrupts = 0
        self.stopping = False  # a stop was passed on: the ranks' 75 is the expected end

    def rank_env(self, rank: int) -> dict:
        return {**self.env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(self.num_ranks),
                "LOCAL_WORLD_SIZE": str(self.num_ranks), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(self.port),
                "NEOX_LAUNCHER_PID": str(os.getpid()), "PYTHONUNBUFFERED": "1"}

    def start(self) -> None:
        # the ranks start with the stop signals blocked (the mask survives exec): one passed on
        # before train.py reads them (neox.launch.stop_request.listen) waits for it instead of killing
        # the rank; here it waits until every rank exists, then reaches them all
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            for rank in range(self.num_ranks):
                group = self.procs[0].pid if self.procs else 0  # rank 0 leads the job's process group
                p = subprocess.Popen(self.cmd, env=self.rank_env(rank), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                     process_group=group)
                self.procs.append(p)
                for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
                    self.pumps.append(threading.Thread(target=self.pump, args=(stream, out), daemon=True))
                    self.pumps[-1].start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)

    def signal_job(self, sig: int) -> None:
        if not self.procs:
            return
        try:
            os.killpg(self.procs[0].pid, sig)
        except ProcessLookupError:  # every rank is gone already
            pass

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                print("deepy: second Ctrl-C: killing the ranks now (no checkpoint)", file=sys.stderr, flush=True)
                self.signal_job(signal.SIGKILL)
                return
            print("deepy: Ctrl-C: the ranks checkpoint after this step and exit 75 (Ctrl-C again stops at once)",
                  file=sys.stderr, flush=True)
            signum = signal.SIGTERM
        else:
            print(f"deepy: {signal.Signals(signum).name}: passed on to the ranks", file=sys.stderr, flush=True)
        self.stopping = True
        self.signal_job(signum)

    def wait(self) -> int:
        """Until every rank has ended; the job's status is the first failing rank's (0 if none)."""
        first = None
        pending = dict(enumerate(self.procs))
        while pending:
            for rank, p in list(pending.items()):
                code = p.poll()
                if code is None:
                    continue
                del pending[rank]
                if code != 0 and first is None:
                    first = code
                    self._first_failure(rank, p, code, bool(pending))
            time.sleep(0.1)
        if self.interrupts > 1:
            return 128 + signal.SIGINT  # stopped at once by Ctrl-C, as a shell reports it
        return exit_status(first) if first is not None else 0

    def _first_failure(self, rank: int, p: subprocess.Popen, code: int, others: bool):
        from neox.exit_status import STOPPED as EXIT_REQUEUE
        from neox.launch.watchdog import EXIT_HUNG

        if code == EXIT_REQUEUE:
            return  # a stop on request: the other ranks stop after the same step
        grace = HUNG_GRACE_SECONDS if code == EXIT_HUNG else GRACE_SECONDS  # hung ranks cannot checkpoint
        print(f"deepy: rank {rank} (pid {p.pid}) {describe_status(code)}"
              + (f"; stopping the other ranks (SIGTERM, SIGKILL after {grace} s)" if others else ""),
              file=sys.stderr, flush=True)
        if others:
            self.signal_job(signal.SIGTERM)
            kill = threading.Timer(grace, self.signal_job, args=(signal.SIGKILL,))
            kill.daemon = True
            kill.start()


def run_job(cmd: list, num_ranks: int, port: int, env: dict, pump: Callable[[IO[str], TextIO], None],
            stop_before_spawn: Sequence[int] = ()) -> int:
    """The job's exit status. ``stop_before_spawn``: stop signals deepy noted before this call;
    with any, no rank is started (nothing to save) and the status is the stop's."""
    from neox.exit_status import STOPPED as EXIT_REQUEUE

    job = LocalJob(cmd, num_ranks, port, env, pump)
    handlers = {s: signal.signal(s, job.on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        if stop_before_spawn:
            print(f"deepy: {signal.Signals(stop_before_spawn[0]).name} before the ranks were started: nothing to "
                  f"save; exit status {EXIT_REQUEUE}", file=sys.stderr, flush=True)
            return EXIT_REQUEUE
        job.start()
        status = job.wait()
        for t in job.pumps:  # the ranks' last lines
            t.join(timeout=10)
        return status
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
