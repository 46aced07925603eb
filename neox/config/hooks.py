"""The placeholders of ``eval_after_checkpoint`` (run by neox.checkpoint.hooks), checked when the
config is read, before training."""

import string

PLACEHOLDERS = {"ckpt", "step", "tag"}


def check_command(command: str) -> None:
    """ValueError naming an unknown placeholder (call when the config is read, before training)."""
    names = {field for _, field, _, _ in string.Formatter().parse(command) if field is not None}
    unknown = names - PLACEHOLDERS
    if unknown:
        raise ValueError(f"eval_after_checkpoint: unknown placeholder(s) {sorted(unknown)} in {command!r}; "
                         f"known: {sorted(PLACEHOLDERS)}")
