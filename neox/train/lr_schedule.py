"""Learning rate as a pure function of the update number: nothing to save, nothing to drift.

Update ``step`` (counting from 1) uses ``learning_rate(step, ...)``, so the peak is reached at
``step == warmup_iters`` and the floor at ``step == lr_decay_iters``; after the horizon the rate
stays at ``min_lr`` (GPT-NeoX main's cosine rose again past the horizon; this one does not).
"""

import math

from neox.config import NeoXConfig


def learning_rate(step: int, peak: float, min_lr: float, warmup_iters: int, decay_iters: int,
                  style: str = "cosine") -> float:
    if warmup_iters > 0 and step <= warmup_iters:
        return peak * step / warmup_iters
    if style == "constant":
        return peak
    if step >= decay_iters:
        return min_lr
    progress = (step - warmup_iters) / (decay_iters - warmup_iters)
    if style == "linear":
        return min_lr + (peak - min_lr) * (1.0 - progress)
    if style == "cosine":
        return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_decay_style '{style}'")


def lr_for_config(cfg: NeoXConfig, step: int) -> float:
    s = cfg.schedule
    return learning_rate(step, cfg.lr, s.min_lr, s.warmup_iters, s.lr_decay_iters, s.lr_decay_style)
