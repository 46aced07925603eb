"""How a Slurm training job ended, from every rank's own exit status (slurm/common.sh).

srun's status is the status of whichever task it saw last, and after --kill-on-bad-exit that is
often a rank srun itself terminated (143) rather than the one that failed. So slurm/launch.sh
writes each rank's status and the time it ended into NEOX_STATUS_DIR/rank<R>, and this module
reads them:

    python -m neox.launch.job_status STATUS_DIR NUM_RANKS [--stop-requested]
                                        prints one line; exits with the job's status

  every rank 0                        0   finished
  some rank 75 (any order, any other  75  stopped on request after a complete checkpoint: a rank
  status after it)                        exits 75 only after the checkpoint's closing barrier
  --stop-requested (the batch script   75  also when ranks died of that SIGTERM / SIGUSR1 itself (it
  passed on a SIGTERM / SIGUSR1) and       came before the trainer listened): nothing newer than
  the first failure is 143 or 138          the last checkpoint to keep
  some rank 76 first                  76  the step watchdog found a hang
  otherwise                           the first failing rank's status, named with its signal;
                                      2 is a config error (its one-line error is above)
Stdlib only.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from neox.exit_status import BAD_INPUT as EXIT_CONFIG
from neox.exit_status import HUNG as EXIT_HUNG
from neox.exit_status import STOPPED as EXIT_REQUEUE
from neox.launch import faults


def read_statuses(status_dir: str, num_ranks: int) -> dict[int, tuple[int, float] | None]:
    """rank -> (exit status, end time) as launch.sh wrote it, or None (no record: the rank's
    wrapper was killed too, or never started)."""
    out: dict[int, tuple[int, float] | None] = {}
    for rank in range(num_ranks):
        try:
            with open(os.path.join(status_dir, f"rank{rank}")) as f:
                status, when = f.read().split()[:2]
            out[rank] = (int(status), float(when))
        except (OSError, ValueError):
            out[rank] = None
    return out


def describe_status(status: int) -> str:
    if status > 128 and status - 128 in signal.valid_signals():
        return f"was killed by {signal.Signals(status - 128).name} (status {status})"
    if status == EXIT_CONFIG:
        return "exited with status 2: a config error (its error line is above)"
    return f"exited with status {status}"


STOP_SIGNAL_DEATHS = (128 + signal.SIGTERM, 128 + signal.SIGUSR1)


def verdict(statuses: dict[int, tuple[int, float] | None], stop_requested: bool = False) -> tuple[int, str]:
    """(the job's exit status, one line saying why)."""
    ended = sorted((when, rank, status) for rank, rec in statuses.items() if rec for status, when in [rec])
    missing = [r for r, rec in statuses.items() if rec is None]
    if not missing and all(status == 0 for _, _, status in ended):
        return 0, f"training finished: all {len(ended)} ranks exited 0"
    failures = [(when, rank, status) for when, rank, status in ended if status != 0]
    stops = [(when, rank) for when, rank, status in failures if status == EXIT_REQUEUE]
    if stops:
        before = [(w, r, s) for w, r, s in failures if w < stops[0][0] and s != EXIT_REQUEUE]
        if not before:
            return EXIT_REQUEUE, (f"stopped on request after a complete checkpoint (rank {stops[0][1]} exited "
                                  f"{EXIT_REQUEUE} first; {len(stops)} of {len(statuses)} ranks exited {EXIT_REQUEUE})")
        failures = before
    if not failures:
        return 1, f"rank(s) {missing} left no exit status (killed with their launcher) and no rank failed"
    when, rank, status = failures[0]
    if stop_requested and status in STOP_SIGNAL_DEATHS:
        return EXIT_REQUEUE, (f"stopped on request: rank {rank} {describe_status(status)} before it could "
                              "checkpoint; the run resumes from its newest checkpoint")
    others = len(failures) - 1 + len(missing)
    tail = f"; {others} other rank(s) ended after it" if others else ""
    if status == EXIT_HUNG:
        return EXIT_HUNG, f"rank {rank} found a hang (step watchdog, status {EXIT_HUNG}; stacks in the log dir){tail}"
    return status, f"rank {rank} failed first: it {describe_status(status)}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    faults.late_signal()
    args = sys.argv[1:] if argv is None else argv
    stop_requested = "--stop-requested" in args
    args = [a for a in args if a != "--stop-requested"]
    if len(args) != 2:
        print("usage: python -m neox.launch.job_status STATUS_DIR NUM_RANKS [--stop-requested]", file=sys.stderr)
        return 2
    status, line = verdict(read_statuses(args[0], int(args[1])), stop_requested)
    print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
