"""Test-only fault switches, all in one place. Each ``NEOX_FAULT_*`` environment variable makes
the trainer fail at a chosen moment the way a real fault would, so the tests can check what the
trainer does then (docs/checkpoints.md, "Faults and what the trainer does"). Unset, as in every
real run, each costs a set lookup or a dictionary read.

  NEOX_FAULT_NAN_STEP=7,9          the loss of these updates becomes NaN on rank 0
  NEOX_FAULT_SPIKE_STEP=13         these updates report a loss 100 higher (gradients unchanged)
  NEOX_FAULT_WRITE_ERROR=<rank>:<step>  that rank's checkpoint writes fail as on a full disk
  NEOX_FAULT_KILL_DURING_SAVE=<step>    rank 0 is killed (SIGKILL) before the checkpoint's rename
  NEOX_FAULT_KILL_AFTER_RENAME=<step>   ... after the rename, before the completion marker
  NEOX_FAULT_LATE_SIGNAL=TERM      python -m neox.launch.job_status (the Slurm job's verdict) gets this
                                   signal as it starts, as the time limit's SIGTERM reaches every
                                   process of the batch step
  NEOX_FAULT_PAUSE=<moment>[@<step>]:<seconds>[,...]  every rank pauses there, as a slow
                                   filesystem or a big index would make it, and says so on stderr
                                   ("fault: pausing ..."), so a test can send a stop request in the
                                   middle of that moment; a stop request ends the pause early.
                                   Moments: index (the sample-index build), resume (a checkpoint
                                   load: the resume or a rollback), save (a checkpoint save, after
                                   the files are written and before the rename), step (the start
                                   of a training step, before its micro-batches), eval (an
                                   evaluation, before its batches)
  NEOX_FAULT_SKIP_GRAD_SUM=1       the gradients of partial replicated weights (per-head QK-norms) are
                                   not summed over the TP group, so each rank's copy drifts (the
                                   check at each save stops the run naming the weight)

The loss faults fire once each, so a step replayed after a rollback is clean.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

_nan_steps: set[int] = set()
_spike_steps: set[int] = set()


def steps(name: str) -> set[int]:
    """Updates listed in an environment variable, e.g. "7" or "13,14"."""
    return {int(v) for v in os.environ.get(name, "").split(",") if v.strip()}


def arm_loss_faults(rank0: bool) -> None:
    """Read the loss faults for this run (the trainer calls it once, at start)."""
    global _nan_steps, _spike_steps
    _nan_steps = steps("NEOX_FAULT_NAN_STEP") if rank0 else set()
    _spike_steps = steps("NEOX_FAULT_SPIKE_STEP")


def nan_loss(update: int, loss: Any) -> Any:  # a torch.Tensor: this module stays stdlib-only (job_status)
    if update not in _nan_steps:
        return loss
    _nan_steps.discard(update)
    return loss * float("nan")


def spike_loss(update: int, loss_sum: Any, accum: int) -> Any:  # a torch.Tensor, as nan_loss
    if update not in _spike_steps:
        return loss_sum
    _spike_steps.discard(update)
    return loss_sum + 100.0 * accum


def skip_partial_gradient_sum() -> bool:
    return os.environ.get("NEOX_FAULT_SKIP_GRAD_SUM") == "1"


def write_error(step: int, rank: int) -> None:
    """Raise the full disk's OSError in this rank's checkpoint writes at that step."""
    target, _, at = os.environ.get("NEOX_FAULT_WRITE_ERROR", "").partition(":")
    if at and int(at) == step and int(target) == rank:
        raise OSError(28, "No space left on device")


def kill_at(variable: str, step: int) -> None:
    """Die at once (SIGKILL: no handler, no cleanup) when the variable names this step."""
    if int(os.environ.get(variable, "-1")) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def late_signal() -> None:
    """Send this process the signal NEOX_FAULT_LATE_SIGNAL names (TERM, USR1)."""
    name = os.environ.get("NEOX_FAULT_LATE_SIGNAL")
    if name:
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


PAUSE_MOMENTS = ("index", "resume", "save", "step", "eval")


def pause(moment: str, step: int | None = None) -> None:
    """Pause this rank at ``moment`` for the seconds NEOX_FAULT_PAUSE gives it (see above)."""
    from neox.launch import stop_request

    for item in filter(None, (v.strip() for v in os.environ.get("NEOX_FAULT_PAUSE", "").split(","))):
        where, _, seconds = item.partition(":")
        name, _, at = where.partition("@")
        if name not in PAUSE_MOMENTS:
            raise ValueError(f"NEOX_FAULT_PAUSE: unknown moment {name!r} (one of {', '.join(PAUSE_MOMENTS)})")
        if name == moment and (not at or (step is not None and int(at) == step)):
            what = f"{moment}" + (f" of step {step}" if step is not None else "")
            print(f"fault: pausing the {what} for {float(seconds):g} s (NEOX_FAULT_PAUSE)", file=sys.stderr,
                  flush=True)
            stop_request.wait(float(seconds))
