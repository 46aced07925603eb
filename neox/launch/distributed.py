"""Process groups: torch.distributed (gloo on CPU, nccl on GPU) + megatron-core's parallel_state.

DeepSpeed takes an ``mpu`` object to learn the tensor- and data-parallel groups (for the ZeRO-1
partitioning over data parallel and for counting each TP shard once in the global grad norm).
``MegatronCoreMPU`` answers its questions from megatron-core's parallel_state.
"""

import os
from collections.abc import Callable

import torch
from megatron.core import parallel_state as ps


def use_cpu() -> bool:
    return not torch.cuda.is_available()


def init_distributed(tensor_parallel_size: int, timeout_minutes: int = 10) -> None:
    """Initialise torch.distributed from the launcher's environment and the TP/DP groups; every
    group's collectives fail after timeout_minutes instead of megatron's 30-minute default."""
    from datetime import timedelta

    import deepspeed

    if use_cpu():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    else:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if use_cpu() else "nccl",
                                   timeout=timedelta(minutes=timeout_minutes))
        if use_cpu():
            _unlink_shm_buffer()
    world = torch.distributed.get_world_size()
    if world % tensor_parallel_size:
        raise RuntimeError(f"world size {world} does not divide by model_parallel_size {tensor_parallel_size}")
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel_size,
                                     distributed_timeout_minutes=timeout_minutes)


def _unlink_shm_buffer():
    """On CPU DeepSpeed maps a 66 MB shared-memory buffer per rank (/dev/shm) and never removes
    it, so every run, and every killed run, leaked RAM. Once all ranks have mapped each other's
    buffer (the barrier) the names can go; the mappings live on until the processes exit."""
    torch.distributed.barrier()
    name = (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{torch.distributed.get_rank()}")
    if os.path.exists(name):
        os.unlink(name)


def on_rank0_for_all(fn: Callable[[], object]) -> None:
    """Run fn on rank 0 only; if it raises, every rank stops: rank 0 with the error, the others
    with SystemExit(1) (a rank that raised alone would leave the others in the next collective)."""
    error = None
    if is_rank0():
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, after every rank knows
            error = e
    failed = torch.tensor([float(error is not None)], device=device())
    torch.distributed.broadcast(failed, src=0)
    if error is not None:
        raise error
    if failed.item():
        raise SystemExit(1)


def destroy() -> None:
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class MegatronCoreMPU:
    """The ``mpu`` interface DeepSpeed expects, backed by megatron-core (no pipeline parallel)."""

    get_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
    get_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_tensor_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_data_parallel_world_size = staticmethod(ps.get_data_parallel_world_size)
    get_data_parallel_rank = staticmethod(ps.get_data_parallel_rank)
    get_data_parallel_group = staticmethod(ps.get_data_parallel_group)


def is_rank0() -> bool:
    return torch.distributed.get_rank() == 0


def device() -> str:
    """Where the step's tensors and collectives live: gloo on CPU, nccl on GPU."""
    return "cpu" if use_cpu() else "cuda"
