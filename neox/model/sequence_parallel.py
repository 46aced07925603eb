"""Sequence parallelism's three collectives over the tensor-parallel group, along the sequence
(dim 1 of our [batch, seq, hidden] activations), each with its exact backward.

With ``sequence_parallel``, each TP rank holds seq / t positions of the residual stream, so the
norms and the residual adds (the work outside the TP regions, which plain TP repeats on every
rank) run on 1/t of the tokens and their activations take 1/t of the memory (megatron-core's
mechanism; its functions gather along dim 0 of [seq, batch, hidden], ours along dim 1):

  into a TP region (before q/k/v, gate/up, the output head)   gather     all-gather  | reduce-scatter
  out of a TP region (after o_proj, down_proj)                 scatter    reduce-scatter | all-gather
  after the vocab-parallel embedding (already all-reduced)     split      keep this rank's part | all-gather

(forward | backward). The column-parallel layers then skip their own backward all-reduce of the
input gradient (the gather's reduce-scatter does it), and the row-parallel ones their forward
all-reduce (the scatter's reduce-scatter does it). Weights whole on every rank that now see only
their rank's positions (the norms) get only that share of their gradient: the trainer sums it over
the TP group (``neox.model.llama.sum_partial_gradients``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from megatron.core import parallel_state

# torch 2.13's names (the *_into_tensor / *_tensor ones warn that they are deprecated there)
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _group() -> Any:
    return parallel_state.get_tensor_model_parallel_group()


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    """[b, s/t, ...] on each rank -> [b, s, ...], rank order along the sequence."""
    t = dist.get_world_size(_group())
    local = x.transpose(0, 1).contiguous()
    out = local.new_empty((local.shape[0] * t, *local.shape[1:]))
    _ALL_GATHER(out, local, group=_group())
    return out.transpose(0, 1)


def _reduce_scatter(x: torch.Tensor) -> torch.Tensor:
    """[b, s, ...] partial sums on each rank -> this rank's [b, s/t, ...] of the sum."""
    t = dist.get_world_size(_group())
    full = x.transpose(0, 1).contiguous()
    out = full.new_empty((full.shape[0] // t, *full.shape[1:]))
    _REDUCE_SCATTER(out, full, group=_group())
    return out.transpose(0, 1)


def _split(x: torch.Tensor) -> torch.Tensor:
    """This rank's [b, s/t, ...] of a [b, s, ...] every rank holds whole."""
    t, rank = dist.get_world_size(_group()), dist.get_rank(_group())
    return x.chunk(t, dim=1)[rank].contiguous()


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    dist.all_reduce(x, group=_group())
    return x


class _Collective(torch.autograd.Function):
    """One of the collectives above in forward, its given partner in backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, forward: Callable, backward: Callable) -> torch.Tensor:  # type: ignore[override]
        ctx.backward_collective = backward
        return forward(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        return ctx.backward_collective(grad), None, None


def gather(x: torch.Tensor) -> torch.Tensor:
    """Into a TP region: every rank's positions, whole sequence (backward: reduce-scatter)."""
    return _Collective.apply(x, _all_gather, _reduce_scatter)


def scatter(x: torch.Tensor) -> torch.Tensor:
    """Out of a TP region: sum the ranks' partial outputs, keep this rank's positions."""
    return _Collective.apply(x, _reduce_scatter, _all_gather)


def split(x: torch.Tensor) -> torch.Tensor:
    """This rank's positions of a tensor every rank holds whole (backward: all-gather)."""
    return _Collective.apply(x, _split, _all_gather)


def sum_over_tp(x: torch.Tensor) -> torch.Tensor:
    """The sum over the TP ranks, forward and backward: each rank uses the sum for its own part of
    the data, so each rank's gradient of it is summed too (OLMo 2's full-width QK-norm statistic)."""
    return _Collective.apply(x, _all_reduce, _all_reduce)
