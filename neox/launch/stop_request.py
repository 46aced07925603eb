"""SIGTERM and SIGUSR1 (Slurm's time-limit or preemption warning, scancel, deepy's Ctrl-C) ask a
rank to stop at the next safe point with a complete checkpoint and exit 75.

How a request is received (``listen``, the first line of train.py, before the slow imports):
the two signals are *blocked* in the trainer and read by one thread with ``sigwait``. A blocked
signal is inherited by every thread and every child process, across ``exec``, so nothing the
trainer starts can be killed by a stop request: Slurm signals every process of a job step and
deepy.py the ranks' whole process group, and a C++ compiler of torch's inductor, a compile
worker or a data worker killed that way used to turn a stop into a crash (``CppCompileError``).
The trainer's own code is never interrupted either (no handler runs in the middle of a save or a
collective). The thread only sets a flag; the training loop agrees on it with the other ranks at
safe points (neox.train.trainer: before the first step, each step's all-reduce, after a checkpoint or
an evaluation). Once a rank has decided to stop, later signals are ignored (``ignore_from_now``).

Also: StopSignal (the trainer's view of it) and follow_launcher (a rank whose deepy.py died is
asked to stop). Stdlib only, so train.py can import it first."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_state: dict[str, Any] = {"on_request": None, "listening": False}
_requested = threading.Event()  # set by a stop signal; wait() sleeps on it


def _note(signum: int):
    _requested.set()
    if _state["on_request"] is not None:
        _state["on_request"]()


def _receive():
    while True:
        _note(signal.sigwait(SIGNALS))


def listen(on_request: Callable[[], object] | None = None) -> None:
    """Block SIGTERM / SIGUSR1 in this thread (and so in every thread and child started from now)
    and note them from a thread of their own; ``on_request`` (optional) runs there. Call it from
    the main thread before any other thread exists."""
    if on_request is not None:
        _state["on_request"] = on_request
    if _state["listening"]:
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    threading.Thread(target=_receive, daemon=True, name="stop-request").start()
    _state["listening"] = True


def with_stop_signals(argv: list) -> list:
    """``argv`` wrapped to run with SIGTERM / SIGUSR1 unblocked again: for a child that is a program
    of its own rather than a part of the trainer (the after-checkpoint command), so that a stop
    signal acts on it as on any program."""
    code = ("import os, signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGUSR1)); "
            "os.execvp(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", code, *argv]


def requested() -> bool:
    return _requested.is_set()


def wait(seconds: float) -> bool:
    """Sleep up to ``seconds``, returning early (True) once a stop is requested."""
    return _requested.wait(seconds)


def clear() -> None:
    """The request was acted on (the run ended): a later run in this process starts without it."""
    _requested.clear()


def ignore_from_now() -> None:
    """The stop is decided: further SIGTERM / SIGUSR1 change nothing, until the process ends (a
    signal ignored stays ignored through the interpreter's shutdown, whatever the mask)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopSignal:
    """The trainer's view of a stop request (noted since train.py started). The flag travels in
    the step's one all-reduce (neox.train.step) and in the agreement at the other safe points
    (neox.train.trainer), so every rank stops at the same point."""

    def __init__(self, log_dir: str | None = None):
        self.log_dir = log_dir
        listen(on_request=self._on_request)
        if requested():  # arrived during start-up
            self._on_request()

    @property
    def requested(self) -> bool:
        return requested()

    def _on_request(self):
        if launcher_gone():  # the kernel's SIGTERM of follow_launcher: nobody reads our output now
            path = os.path.join(self.log_dir or ".", f"orphaned-rank{os.environ.get('RANK', 0)}.log")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            print(f"launcher (deepy.py pid {os.environ['NEOX_LAUNCHER_PID']}) is gone: stopping at the next safe "
                  "point with a checkpoint", flush=True)


def launcher_gone() -> bool:
    launcher = os.environ.get("NEOX_LAUNCHER_PID", "")
    return bool(launcher) and os.getppid() != int(launcher)


def follow_launcher() -> None:
    """Started by deepy.py: ask the kernel for a SIGTERM when deepy dies (Linux), so a rank left
    behind by a `kill -9` of deepy checkpoints and stops instead of training on as an orphan."""
    if not os.environ.get("NEOX_LAUNCHER_PID") or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if launcher_gone():  # deepy died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)
