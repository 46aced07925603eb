"""Learning rate as a pure function of the update number: nothing to save, nothing to drift.

Update ``step`` (counting from 1) uses ``learning_rate(step, ...)``, so the peak is reached at
``step == warmup_iters`` and the floor at ``step == lr_decay_iters``; after the horizon the rate
stays at ``min_lr`` (GPT-NeoX main's cosine rose again past the horizon; this one does not).
``wsd`` (warmup-stable-decay) holds the peak after the warmup and decays only over the last
``lr_wsd_decay_iters`` steps before ``lr_decay_iters``, so a long stable run can be decayed from
any of its checkpoints (an anneal) and equal a run planned that way.
"""

import math

from neox.config import NeoXConfig


def learning_rate(step: int, peak: float, min_lr: float, warmup_iters: int, decay_iters: int,
                  style: str = "cosine", wsd_decay_iters: int = 0, wsd_style: str = "linear") -> float:
    if warmup_iters > 0 and step <= warmup_iters:
        return peak * step / warmup_iters
    if style == "constant":
        return peak
    if step >= decay_iters:
        return min_lr
    if style == "wsd":
        return min_lr + (peak - min_lr) * wsd_factor(step, decay_iters, wsd_decay_iters, wsd_style)
    progress = (step - warmup_iters) / (decay_iters - warmup_iters)
    if style == "linear":
        return min_lr + (peak - min_lr) * (1.0 - progress)
    if style == "cosine":
        return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_decay_style '{style}'")


def wsd_factor(step: int, decay_iters: int, wsd_decay_iters: int, shape: str) -> float:
    """Warmup-stable-decay after the warmup: 1 (the peak) until the last ``wsd_decay_iters`` steps
    before ``decay_iters``, then down to 0 (min_lr) at ``decay_iters`` in one of four shapes of the
    decay's progress x in (0, 1] (Megatron's names)."""
    start = decay_iters - wsd_decay_iters
    if step <= start:
        return 1.0
    x = (step - start) / wsd_decay_iters
    return WSD_SHAPES[shape](x)


# the decay's shape: the factor at progress x of the decay, 1 at x = 0, 0 at x = 1
WSD_SHAPES = {
    "linear": lambda x: 1.0 - x,
    "cosine": lambda x: 0.5 * (1.0 + math.cos(math.pi * x)),
    "exponential": lambda x: 2.0 * 0.5 ** x - 1.0,
    "minus_sqrt": lambda x: 1.0 - math.sqrt(x),
}


def lr_for_config(cfg: NeoXConfig, step: int) -> float:
    s = cfg.schedule
    return learning_rate(step, cfg.lr, s.min_lr, s.warmup_iters, s.lr_decay_iters, s.lr_decay_style,
                         s.lr_wsd_decay_iters or 0, s.lr_wsd_decay_style)


def plot_schedules(path: str) -> None:
    """docs/lr_schedules.png: Llemma's cosine and the four WSD decays on one axis (needs matplotlib):
    python -c "from neox.train.lr_schedule import plot_schedules; plot_schedules('docs/lr_schedules.png')"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = range(0, 1001)
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    ax.plot(steps, [learning_rate(s, 1.0, 0.1, 50, 1000, "cosine") for s in steps], color="0.6", lw=1.5, ls="--",
            label="cosine (Llemma)")
    for shape in WSD_SHAPES:
        ax.plot(steps, [learning_rate(s, 1.0, 0.1, 50, 1000, "wsd", 200, shape) for s in steps], lw=1.5,
                label=f"wsd, {shape}")
    ax.set_xlabel("step")
    ax.set_ylabel("LR / peak")
    ax.set_title("warmup 50, lr_decay_iters 1000, lr_wsd_decay_iters 200, min_lr 0.1 x peak", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
