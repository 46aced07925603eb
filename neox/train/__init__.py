"""The trainer: ``trainer`` (``Trainer.run``), ``step`` (one step and its policies), the DeepSpeed
engine, the loss guard, the LR schedule, validation, metrics and speed settings, and the run's state
in checkpoints (``run_state``: save, resume, rollback and the guarded start share one load)."""
