"""Validation loss per data component, averaged over data-parallel replicas."""

from __future__ import annotations

import math
from typing import Any

import torch
from megatron.core import parallel_state as ps

from neox.config import NeoXConfig
from neox.data.dataset import Packing, get_micro_batch
from neox.launch import distributed


@torch.no_grad()
def evaluate(engine: Any, eval_sets: dict, cfg: NeoXConfig, packing: Packing | None = None) -> dict:
    """Mean token loss per validation component over a fixed set of eval_iters micro-batches
    (packed documents told apart as in training)."""
    engine.eval()
    micro, dp = cfg.batch.train_micro_batch_size_per_gpu, cfg.data_parallel_size
    out = {}
    for name, dataset in eval_sets.items():
        total = torch.zeros(1)
        for i in range(cfg.logging.eval_iters):
            batch = get_micro_batch(dataset, 0, i, ps.get_data_parallel_rank(), micro, dp, micro * dp, packing)
            total += engine(batch["tokens"], batch["labels"], batch["loss_mask"], batch.get("segment_ids"),
                            batch.get("position_ids")).float().cpu()
        total = dp_mean(total) / cfg.logging.eval_iters
        out[f"val/{name}/loss"] = total.item()
        out[f"val/{name}/ppl"] = math.exp(min(total.item(), 50.0))
    engine.train()
    return out


def dp_mean(t: torch.Tensor) -> torch.Tensor:
    t = t.to(distributed.device())
    torch.distributed.all_reduce(t, group=ps.get_data_parallel_group())
    return t.cpu() / ps.get_data_parallel_world_size()
