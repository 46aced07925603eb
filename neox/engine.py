"""The model on the DeepSpeed engine: our AdamW, the DeepSpeed config (ZeRO-1, bf16 or fp32), the
megatron-core mpu, and the learning rate set per update."""

from __future__ import annotations

import random

import numpy as np
import torch
from megatron.core import parallel_state as ps

from neox import distributed
from neox.config import NeoXConfig


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
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (no_decay if p.dim() == 1 else decay).append(p)
    params = cfg.optim.optimizer["params"]
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per step for all tensors (CPU and CUDA); the for-loop default reads and
    # writes every state tensor several times (measured 5x slower on the benchmark model, CPU)
    return torch.optim.AdamW(groups, lr=params["lr"], betas=tuple(params["betas"]), eps=params["eps"], fused=True)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_lr(engine, lr: float):
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def build_engine(cfg: NeoXConfig, model: torch.nn.Module):
    """The DeepSpeed engine around the model: our AdamW, ZeRO-1, bf16, the megatron-core mpu."""
    import deepspeed
    from deepspeed.runtime import bf16_optimizer
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    # its memory report (five times two lines on rank 0, forced on) would open every Slurm log
    bf16_optimizer.see_memory_usage = lambda *args, **kwargs: None
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(cfg, model),
                                           config=deepspeed_config(cfg), mpu=distributed.MegatronCoreMPU())
    if ps.get_data_parallel_world_size() == 1 and isinstance(engine.optimizer, BF16_Optimizer):
        # nothing to average: DeepSpeed would still flatten every gradient into one buffer,
        # all-reduce it over the 1-rank group and copy it back (7% of a benchmark step on CPU).
        # Only for bf16: the fp32 ZeRO optimizer collects its gradients in that reduction.
        engine.enable_backward_allreduce = False
    if isinstance(engine.optimizer, BF16_Optimizer):
        copy_first_gradient(engine.optimizer)
    return engine


def copy_first_gradient(opt):
    """DeepSpeed's BF16_Optimizer zeroes its fp32 gradient buffers after every step and adds each
    micro batch's bf16 gradients into them through an fp32 temporary. Here the first micro batch
    of a step writes its gradient in (a converting copy: 0 + g is g, bit for bit), later micro
    batches add; the buffers are not zeroed after the step, only the gradient of a weight that got
    none in a step is zeroed before it. Same numbers, two passes over the fp32 gradients fewer
    (measured: bench/README.md, Training throughput)."""
    assert getattr(opt, "autoep_folding_tp_group", None) is None and not opt.immediate_grad_update
    has_grad = opt.fp32_groups_has_gradients

    @torch.no_grad()
    def update_hp_grad(lp, group_idx, param_idx, clear_lp_grads):
        if lp.grad is None:
            return
        hp_grad = opt.fp32_groups_gradients[group_idx][param_idx]
        if has_grad[group_idx][param_idx]:
            hp_grad.add_(lp.grad.to(hp_grad.dtype).view(hp_grad.shape))
        else:
            hp_grad.copy_(lp.grad.view(hp_grad.shape))
        lp._hp_grad = hp_grad
        has_grad[group_idx][param_idx] = True
        if clear_lp_grads:
            lp.grad.zero_()

    def clear_hp_grads():
        for i, group in enumerate(opt.fp32_groups_gradients):
            has_grad[i] = [False] * len(group)

    deepspeed_step = opt.step

    def step(closure=None):
        stale = [g for i, group in enumerate(opt.fp32_groups_gradients)
                 for j, g in enumerate(group) if not has_grad[i][j]]
        if stale:
            torch._foreach_zero_(stale)
        return deepspeed_step(closure)

    opt._update_hp_grad, opt.clear_hp_grads, opt.step = update_hp_grad, clear_hp_grads, step
