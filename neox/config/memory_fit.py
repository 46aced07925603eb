"""When a memory plan does not fit its GPU: the smallest change that would, with that plan's numbers.

The changes are tried cheapest first, as a 256-GPU job would pay for them: sequence parallelism
(the same work, activations outside the TP regions split over TP), ZeRO stage 2 (gradients
sharded over data parallel: one reduce-scatter instead of an all-reduce), activation
checkpointing (a third more compute), a smaller micro batch (the same global batch by more
accumulation: less efficient matmuls), a larger tensor-parallel size (more communication per
layer). One change if one fits, else the fewest changes that fit, cheapest first.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Optional

from neox.model.planner import memory_per_gpu

Change = tuple[str, Callable[[Any], Optional[Any]]]  # (what it says, cfg -> changed cfg or None if n/a)


def _replace(cfg: Any, section: str, **values: Any) -> Any:
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})


def _sequence_parallel(cfg: Any) -> Optional[Any]:
    p, m = cfg.parallel, cfg.model
    if p.sequence_parallel or p.model_parallel_size == 1 or m.seq_length % p.model_parallel_size:
        return None
    return _replace(cfg, "parallel", sequence_parallel=True)


def _stage2(cfg: Any) -> Optional[Any]:
    if cfg.optim.zero_optimization.get("stage", 0) >= 2 or cfg.data_parallel_size == 1:
        return None
    return _replace(cfg, "optim", zero_optimization={**cfg.optim.zero_optimization, "stage": 2})


def _checkpointing(cfg: Any) -> Optional[Any]:
    m = cfg.model
    if m.checkpoint_activations and m.checkpoint_layers is None:
        return None
    return _replace(cfg, "model", checkpoint_activations=True, checkpoint_layers=None)


def _half_micro_batch(cfg: Any) -> Optional[Any]:
    b = cfg.batch
    if b.train_micro_batch_size_per_gpu % 2:
        return None
    return _replace(cfg, "batch", train_micro_batch_size_per_gpu=b.train_micro_batch_size_per_gpu // 2,
                    gradient_accumulation_steps=b.gradient_accumulation_steps * 2)


def _double_tp(cfg: Any) -> Optional[Any]:
    m, p = cfg.model, cfg.parallel
    tp = p.model_parallel_size * 2
    if any(v % tp for v in (m.num_attention_heads, m.num_kv_heads, m.intermediate_size, p.num_gpus)) or (
            cfg.data_parallel_size % 2):
        return None
    return _replace(_replace(cfg, "parallel", model_parallel_size=tp), "batch",
                    gradient_accumulation_steps=cfg.batch.gradient_accumulation_steps * 2)


CHANGES: list[Change] = [
    ("sequence_parallel: true", _sequence_parallel),
    ("zero_optimization.stage: 2", _stage2),
    ("checkpoint_activations: true", _checkpointing),
    ("half the micro batch", _half_micro_batch),
    ("double model_parallel_size", _double_tp),
]


def describe(before: Any, after: Any) -> str:
    """The changed keys, as a config would say them."""
    keys = []
    if after.parallel.sequence_parallel != before.parallel.sequence_parallel:
        keys.append("sequence_parallel: true")
    if after.optim.zero_optimization.get("stage") != before.optim.zero_optimization.get("stage"):
        keys.append("zero_optimization: {stage: 2}")
    if after.model.checkpoint_activations != before.model.checkpoint_activations or (
            after.model.checkpoint_layers != before.model.checkpoint_layers):
        keys.append("checkpoint_activations: true")
    if after.parallel.model_parallel_size != before.parallel.model_parallel_size:
        keys.append(f"model_parallel_size: {after.parallel.model_parallel_size}")
    if after.batch.train_micro_batch_size_per_gpu != before.batch.train_micro_batch_size_per_gpu:
        keys.append(f"train_micro_batch_size_per_gpu: {after.batch.train_micro_batch_size_per_gpu}")
    if after.batch.gradient_accumulation_steps != before.batch.gradient_accumulation_steps:
        keys.append(f"gradient_accumulation_steps: {after.batch.gradient_accumulation_steps} (the same global batch)")
    return ", ".join(keys)


def format_memory(mem: dict) -> str:
    return (f"{mem['total_gib']:.1f} GiB per GPU (weights {mem['weights_gib']:.1f}, gradients "
            f"{mem['gradients_gib']:.1f}, optimizer {mem['optimizer_states_gib']:.1f}, activations "
            f"{mem['activations_gib']:.1f}, overhead {mem['overhead_gib']:.1f})")


def what_would_fit(cfg: Any, limit_gib: float) -> Optional[str]:
    """'<changes> -> <that plan>' for the smallest set of changes that fits ``limit_gib`` (fewest
    changes first, then the cheapest by CHANGES' order; the micro batch may be halved and the TP
    doubled more than once), or None."""
    for count in range(1, 8):
        for combo in itertools.combinations_with_replacement(range(len(CHANGES)), count):
            changed: Optional[Any] = cfg
            for i in combo:
                changed = CHANGES[i][1](changed) if changed is not None else None
            if changed is not None and memory_per_gpu(changed)["total_gib"] <= limit_gib:
                return f"{describe(cfg, changed)} -> {format_memory(memory_per_gpu(changed))}"
    return None
