"""Metrics sinks behind one call: metrics.jsonl always, TensorBoard and W&B when enabled.

Only global rank 0 creates a logger; the other ranks get ``None`` and skip logging.
"""

import json
import os

from neox.config import NeoXConfig


class MetricsLogger:
    def __init__(self, cfg: NeoXConfig):
        self.path = os.path.join(cfg.logging.log_dir, "metrics.jsonl")
        os.makedirs(cfg.logging.log_dir, exist_ok=True)
        self.tb = self.wandb = None
        if cfg.logging.use_tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` extra

            self.tb = SummaryWriter(os.path.join(cfg.logging.log_dir, "tensorboard"))
        if cfg.logging.use_wandb:
            import wandb  # needs the `wandb` extra

            self.wandb = wandb.init(project=cfg.logging.wandb_project, group=cfg.logging.wandb_group,
                                    entity=cfg.logging.wandb_entity, config=cfg.to_flat())

    def log(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def format_line(r: dict, train_iters: int, show_mfu: bool = True) -> str:
    """One line per step. MFU is against a GPU's peak (peak_flops_per_gpu): on CPU it says nothing."""
    mfu = f"mfu {100 * r['mfu']:.3g}% | " if show_mfu else ""
    return (f"step {r['step']:>6}/{train_iters} | loss {r['loss']:.4f} | lr {r['lr']:.3e} | "
            f"grad_norm {r['grad_norm']:.3f} | tokens/s {r['tokens_per_sec']:,.0f} | "
            f"{mfu}consumed_samples {r['consumed_samples']}")
