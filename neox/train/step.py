"""One training step: the micro-batches' forward/backward/step on the DeepSpeed engine and the
step's one all-reduce (the loss and the stop flag), returned as a StepResult."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from megatron.core import parallel_state as ps

from neox.launch import distributed, faults
from neox.launch.stop_request import StopSignal


@dataclass
class StepResult:
    loss: float  # mean token loss of the global batch
    grad_norm: float  # global gradient norm; nan when DeepSpeed reports none
    stop: bool  # a stop signal reached some rank: every rank sees the same flag
    seconds: float
    out_of_vocab: bool = False  # some rank's micro-batch held a token id outside [0, vocab_size)


def train_step(engine: Any, micro_batches: Iterable[dict], update: int, stop: StopSignal,
               vocab_size: int) -> StepResult:
    """Forward, backward and engine.step per micro-batch (DeepSpeed applies the update after the
    last one), then one all-reduce carrying the summed loss, ``stop.requested`` and the count of
    micro-batches with a token id outside the vocabulary (checked on the device: no extra sync)."""
    t0 = time.perf_counter()
    device = distributed.device()
    loss_sum, accum = torch.zeros(1, device=device), 0
    out_of_vocab = torch.zeros(1, device=device)
    for accum, batch in enumerate(micro_batches, start=1):
        out_of_vocab += _out_of_vocab(batch, vocab_size, device)
        loss = engine(batch["tokens"], batch["labels"], batch["loss_mask"], batch.get("segment_ids"),
                      batch.get("position_ids"))
        if accum == 1:
            loss = faults.nan_loss(update, loss)  # test-only switches (neox.launch.faults)
        engine.backward(loss)
        engine.step()
        loss_sum += loss.detach().float()
    loss_sum = faults.spike_loss(update, loss_sum, accum)
    # the loss counted once per data-parallel replica (TP rank 0), and the stop flag
    tp_rank = ps.get_tensor_model_parallel_rank()
    reduced = torch.cat([loss_sum * (tp_rank == 0), torch.tensor([float(stop.requested)], device=device),
                         out_of_vocab])
    torch.distributed.all_reduce(reduced)
    loss_total, stop_flag, bad_batches = reduced.tolist()  # the step's one host sync (the guard needs the loss)
    grad_norm = engine.get_global_grad_norm()
    return StepResult(loss=(loss_total / ps.get_data_parallel_world_size()) / accum,
                      grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                      stop=stop_flag > 0, seconds=time.perf_counter() - t0, out_of_vocab=bad_batches > 0)


def _out_of_vocab(batch: dict, vocab_size: int, device) -> torch.Tensor:
    """1.0 if the micro-batch holds an id outside [0, vocab_size) (megatron's vocab-parallel
    embedding would map it to a zero vector and train on silently), as a device tensor."""
    ids = torch.stack([batch["tokens"].max(), batch["labels"].max(), -batch["tokens"].min()]).to(device)
    return ((ids[:2] >= vocab_size).any() | (ids[2] > 0)).float().reshape(1)
