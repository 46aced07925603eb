"""The model on the DeepSpeed engine: our AdamW, the DeepSpeed config (ZeRO-1, bf16 or fp32), the
megatron-core mpu, and the learning rate set per update."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from megatron.core import parallel_state as ps

from neox import patches
from neox.config import NeoXConfig
from neox.launch import distributed, faults
from neox.model.llama import sum_partial_gradients


def deepspeed_config(cfg: NeoXConfig) -> dict:
    bf16 = cfg.optim.precision == "bf16"
    ds = {
        "train_batch_size": cfg.batch.train_batch_size,
        "train_micro_batch_size_per_gpu": cfg.batch.train_micro_batch_size_per_gpu,
        "gradient_accumulation_steps": cfg.batch.gradient_accumulation_steps,
        "gradient_clipping": cfg.optim.gradient_clipping,
        "zero_optimization": dict(cfg.optim.zero_optimization),
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    if bf16:  # Llemma: bf16 weights/activations, fp32 gradient accumulation and all-reduce
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    return ds


def build_optimizer(cfg: NeoXConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norm weights (1-D), decay on every matrix."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, p in model.named_parameters():
        (no_decay if p.dim() == 1 else decay).append(p)
    params = cfg.optim.optimizer["params"]
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per step for all tensors (CPU and CUDA); the for-loop default reads and
    # writes every state tensor several times (measured 5x slower on the benchmark model, CPU)
    return torch.optim.AdamW(groups, lr=params["lr"], betas=tuple(params["betas"]), eps=params["eps"], fused=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_lr(engine: Any, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def build_engine(cfg: NeoXConfig, model: torch.nn.Module) -> Any:
    """The DeepSpeed engine around the model: our AdamW, ZeRO-1, bf16, the megatron-core mpu; the
    gradients of partial replicated weights summed over the TP group."""
    import deepspeed
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    patches.quiet_bf16_memory_report()
    if not faults.skip_partial_gradient_sum():  # test-only switch (neox.launch.faults)
        sum_partial_gradients(model)  # DeepSpeed reduces over data parallel only, never over TP
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(cfg, model),
                                           config=deepspeed_config(cfg), mpu=distributed.MegatronCoreMPU())
    if ps.get_data_parallel_world_size() == 1 and isinstance(engine.optimizer, BF16_Optimizer):
        # nothing to average: DeepSpeed would still flatten every gradient into one buffer,
        # all-reduce it over the 1-rank group and copy it back (7% of a benchmark step on CPU).
        # Only for bf16: the fp32 ZeRO optimizer collects its gradients in that reduction.
        engine.enable_backward_allreduce = False
    if isinstance(engine.optimizer, BF16_Optimizer):
        patches.copy_first_gradient(engine.optimizer)
    return engine
