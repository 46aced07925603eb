"""SIGTERM and SIGUSR1 (Slurm's time-limit or preemption warning, scancel, deepy's Ctrl-C) ask a
rank to checkpoint after the current step and exit 75. They are noted from the first line of
train.py on, before the slow imports: a signal during start-up is a request too, not a death by
signal. Once a rank has decided to stop, later ones are ignored (SIG_IGN outlives the
interpreter's shutdown, a Python handler does not): srun's --kill-on-bad-exit sends SIGTERM to
the ranks still closing when the first one exits 75, and that must not turn their 75 into 143.
Also: StopSignal (the trainer's view of it) and follow_launcher (a rank whose deepy.py died is
asked to stop). Stdlib only, so train.py can import it first."""

from __future__ import annotations

import os
import signal
import sys

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_state = {"requested": False, "on_request": None}


def _note(signum, frame):
    _state["requested"] = True
    if _state["on_request"] is not None:
        _state["on_request"]()


def listen(on_request=None):
    """Note SIGTERM / SIGUSR1 from now on; ``on_request`` (optional) runs in the handler."""
    _state["on_request"] = on_request
    for sig in SIGNALS:
        signal.signal(sig, _note)


def requested() -> bool:
    return _state["requested"]


def clear():
    """The request was acted on (the run ended): a later run in this process starts without it."""
    _state["requested"] = False


def ignore_from_now():
    """The stop is decided: further SIGTERM / SIGUSR1 change nothing, until the process ends."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopSignal:
    """SIGTERM / SIGUSR1 (Slurm's pre-timeout or preemption signal) request a clean stop
    (neox.stop_request, listening since train.py started). The flag travels in the step's one
    all-reduce (neox.step), so every rank stops at the same step."""

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
            print(f"launcher (deepy.py pid {os.environ['NEOX_LAUNCHER_PID']}) is gone: stopping after this step "
                  "with a checkpoint", flush=True)


def launcher_gone() -> bool:
    launcher = os.environ.get("NEOX_LAUNCHER_PID")
    return bool(launcher) and os.getppid() != int(launcher)


def follow_launcher():
    """Started by deepy.py: ask the kernel for a SIGTERM when deepy dies (Linux), so a rank left
    behind by a `kill -9` of deepy checkpoints and stops instead of training on as an orphan."""
    if not os.environ.get("NEOX_LAUNCHER_PID") or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if launcher_gone():  # deepy died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)
