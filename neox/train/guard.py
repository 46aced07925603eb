"""NaN and loss-spike guard: skip bad updates, roll back from spikes, remember bad data.

Every rank sees the same numbers (the loss is all-reduced, the gradient norm is global), so every
rank reaches the same verdict without further communication:

- non-finite loss or gradient norm: DeepSpeed's optimizer already dropped the update (it skips a
  step whose global gradient norm is inf/NaN, on every rank); the step is logged as skipped.
  ``max_bad_steps_in_a_row`` such steps in a row roll back.
- a loss above the running mean of the last ``loss_spike_window`` good steps by more than
  ``loss_spike_std_factor`` standard deviations (after ``loss_spike_min_history`` good steps):
  that update has been applied, so roll back.
- a rollback reloads the newest complete checkpoint and puts the batches of the offending steps
  on a skip-list; later steps draw the next batches instead. The skip-list, the loss history and
  the rollback count go into every checkpoint, so a restart keeps them. Beyond ``max_rollbacks``
  the run stops with an error rather than loop.

Batches are numbered by their position in the sample order (batch b holds samples
[b * global_batch, (b + 1) * global_batch)); step s (0-based) trains on the s-th batch that is
not on the skip-list.
"""

from __future__ import annotations

import math
from collections import deque

from neox.config import GuardArgs
from neox.errors import NeoxError


class GuardStop(NeoxError, RuntimeError):
    """The guard gave up (too many rollbacks, or nothing to roll back to)."""


def batch_of_step(step: int, skip: list[int]) -> int:
    """Batch index trained at 0-based ``step`` when the batches in ``skip`` are left out."""
    batch = step
    for b in sorted(skip):
        if b <= batch:
            batch += 1
    return batch


class LossGuard:
    def __init__(self, guard_cfg: GuardArgs, state: dict | None = None):
        self.cfg = guard_cfg
        state = state or {}
        self.skip_batches = sorted(state.get("skip_batches", []))
        self.rollbacks = int(state.get("rollbacks", 0))
        self.history = deque(state.get("history", []), maxlen=guard_cfg.loss_spike_window)  # (step, loss)
        # 1-based updates skipped in a row, with their batches: [(update, batch)]
        self.bad_steps: list[tuple[int, int]] = []

    def state(self) -> dict:
        return {"skip_batches": list(self.skip_batches), "rollbacks": self.rollbacks,
                "history": list(self.history)}

    def batch(self, step: int) -> int:
        return batch_of_step(step, self.skip_batches)

    def check(self, update: int, loss: float, grad_norm: float) -> tuple[str, str]:
        """Verdict for a finished update: ("ok" | "skipped" | "rollback", reason)."""
        batch = self.batch(update - 1)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.bad_steps.append((update, batch))
            reason = f"non-finite loss {loss} or gradient norm {grad_norm}"
            if not math.isfinite(grad_norm) and len(self.bad_steps) < self.cfg.max_bad_steps_in_a_row:
                return "skipped", reason
            if math.isfinite(grad_norm):  # the update went in: only a rollback removes it
                return "rollback", reason + " (update applied)"
            return "rollback", f"{len(self.bad_steps)} non-finite steps in a row"
        spike = self.spike_threshold()
        if spike is not None and loss > spike:
            self.bad_steps.append((update, batch))
            return "rollback", f"loss spike {loss:.4f} > {spike:.4f} (mean + {self.cfg.loss_spike_std_factor:g} std)"
        self.bad_steps = []
        self.history.append((update, loss))
        return "ok", ""

    def spike_threshold(self) -> float | None:
        k = self.cfg.loss_spike_std_factor
        n = len(self.history)
        if k <= 0 or n < max(self.cfg.loss_spike_min_history, 2):
            return None
        values = [v for _, v in self.history]
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        return mean + k * std

    def plan_rollback(self, to_step: int | None, save_dir: str | None, reason: str) -> dict:
        """Record the rollback (skip-list, count) and describe it; raise GuardStop if not allowed."""
        bad = list(self.bad_steps)
        self.bad_steps = []
        where = f"step {bad[-1][0]}" if bad else "this step"
        if self.rollbacks >= self.cfg.max_rollbacks:
            raise GuardStop(f"{reason} at {where}: {self.rollbacks} rollbacks already (max_rollbacks "
                            f"{self.cfg.max_rollbacks}); stopping. Inspect the data and the logged samples, "
                            "then raise max_rollbacks or lower the learning rate")
        if to_step is None:
            raise GuardStop(f"{reason} at {where}: no complete checkpoint in {save_dir} to roll back to "
                            "(set save and checkpoint_factor)")
        self.rollbacks += 1
        self.skip_batches = sorted(set(self.skip_batches) | {b for _, b in bad})
        self.history = deque(((s, v) for s, v in self.history if s <= to_step), maxlen=self.history.maxlen)
        return {"from_step": bad[-1][0] if bad else None, "to_step": to_step, "reason": reason,
                "skipped_batches": [b for _, b in bad], "rollbacks": self.rollbacks}


def samples_of_batch(batch: int, global_batch: int) -> list[int]:
    """[first, end) global sample indices of a batch."""
    return [batch * global_batch, (batch + 1) * global_batch]

