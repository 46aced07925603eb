"""SIGTERM and SIGUSR1 (Slurm's time-limit or preemption warning, scancel, deepy's Ctrl-C) ask a
rank to checkpoint after the current step and exit 75. They are noted from the first line of
train.py on, before the slow imports: a signal during start-up is a request too, not a death by
signal. Once a rank has decided to stop, later ones are ignored (SIG_IGN outlives the
interpreter's shutdown, a Python handler does not): srun's --kill-on-bad-exit sends SIGTERM to
the ranks still closing when the first one exits 75, and that must not turn their 75 into 143.
Stdlib only, so train.py can import it first."""

from __future__ import annotations

import signal

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
