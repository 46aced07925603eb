"""Log lines: Python ``logging`` under the ``neox`` logger, shown by one handler with a rank filter.

A record is shown on global rank 0 only (the rank from torch.distributed once it is initialised,
else the RANK variable the launchers set), unless it is logged with ``extra=ALL_RANKS``. Lines read
as they always have: an info record is its message, a warning starts with ``warning: ``, an error
with ``error: ``; they go to the process's current standard output, flushed (a rank's output is what
deepy.py and Slurm collect). ``NEOX_LOG_LEVEL`` (e.g. WARNING, DEBUG) changes what is shown; a
program that embeds the trainer can attach its own handlers to ``logging.getLogger("neox")``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

ROOT = "neox"
ALL_RANKS = {"all_ranks": True}  # extra= for a record every rank shows
HANDLER = "neox-rank-0"


def global_rank() -> int:
    dist = sys.modules.get("torch.distributed")  # never imported here: a rank has imported it already
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


class RankFilter(logging.Filter):
    """Passes rank 0's records, and every rank's records marked ALL_RANKS."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "all_ranks", False) or global_rank() == 0


class LineFormatter(logging.Formatter):
    PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}

    def format(self, record: logging.LogRecord) -> str:
        return self.PREFIX.get(record.levelno, "") + super().format(record)


class _CurrentStdout(logging.StreamHandler):
    """Writes to sys.stdout as it is when the record comes (a test's capture, a redirected stream)."""

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def _install() -> None:
    root = logging.getLogger(ROOT)
    if any(h.get_name() == HANDLER for h in root.handlers):  # by name: a reloaded module is the same handler
        return
    handler = _CurrentStdout()
    handler.set_name(HANDLER)
    handler.setFormatter(LineFormatter("%(message)s"))
    handler.addFilter(RankFilter())
    root.addHandler(handler)
    root.setLevel(os.environ.get("NEOX_LOG_LEVEL", "INFO").upper())
    root.propagate = False  # shown once, by this handler


def get_logger(name: str) -> logging.Logger:
    """The logger of module ``name`` (pass ``__name__``), with the neox handler installed once."""
    _install()
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")
