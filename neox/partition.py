"""The one place that says how every weight is named and split across tensor-parallel ranks.

Our parameter names, the dimension each is split on (None: replicated on every rank), and the
Hugging Face Llama name of the same tensor. The model, the checkpoint code and the converters
all read this table; nothing else decides a layout.

q, k and v (and gate and up) are separate matrices, never fused, so a TP shard of q is simply
a contiguous block of whole heads: rows ``[r * n/tp * head_dim, (r+1) * n/tp * head_dim)``.
With grouped-query attention the same block rule on k/v keeps each query head with its KV head
(query heads of rank r use exactly the KV heads of rank r).
"""

from __future__ import annotations

import re
from typing import Optional

import torch

# (our name pattern, split dim, HF name pattern); {i} is the layer index
WEIGHTS = [
    ("embed.weight", 0, "model.embed_tokens.weight"),
    ("layers.{i}.input_norm.weight", None, "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.attention.q_proj.weight", 0, "model.layers.{i}.self_attn.q_proj.weight"),
    ("layers.{i}.attention.k_proj.weight", 0, "model.layers.{i}.self_attn.k_proj.weight"),
    ("layers.{i}.attention.v_proj.weight", 0, "model.layers.{i}.self_attn.v_proj.weight"),
    ("layers.{i}.attention.o_proj.weight", 1, "model.layers.{i}.self_attn.o_proj.weight"),
    ("layers.{i}.post_attention_norm.weight", None, "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.mlp.gate_proj.weight", 0, "model.layers.{i}.mlp.gate_proj.weight"),
    ("layers.{i}.mlp.up_proj.weight", 0, "model.layers.{i}.mlp.up_proj.weight"),
    ("layers.{i}.mlp.down_proj.weight", 1, "model.layers.{i}.mlp.down_proj.weight"),
    ("final_norm.weight", None, "model.norm.weight"),
    ("lm_head.weight", 0, "lm_head.weight"),
]
# weights whose dim 0 is the vocabulary (padded so that it divides by TP)
VOCAB_WEIGHTS = {"embed.weight", "lm_head.weight"}


def _regex(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


_OURS = [(_regex(ours), dim, hf) for ours, dim, hf in WEIGHTS]
_HF = [(_regex(hf), ours) for ours, _, hf in WEIGHTS]


def _match(name: str, table):
    for regex, *rest in table:
        m = regex.match(name)
        if m:
            return m, rest
    raise KeyError(f"no partition rule for weight '{name}'")


def split_dim(name: str) -> Optional[int]:
    """Dimension along which weight ``name`` is split across TP ranks (None: replicated)."""
    return _match(name, _OURS)[1][0]


def to_hf_name(name: str) -> str:
    m, (_, hf) = _match(name, _OURS)
    return hf.replace("{i}", m.group("i")) if "{i}" in hf else hf


def from_hf_name(hf_name: str) -> str:
    m, (ours,) = _match(hf_name, _HF)
    return ours.replace("{i}", m.group("i")) if "{i}" in ours else ours


def expected_names(num_layers: int) -> list[str]:
    names = []
    for ours, _, _ in WEIGHTS:
        if "{i}" in ours:
            names += [ours.replace("{i}", str(i)) for i in range(num_layers)]
        else:
            names.append(ours)
    return names


def shard(full: torch.Tensor, name: str, rank: int, tp: int) -> torch.Tensor:
    """The part of the full tensor that TP rank ``rank`` of ``tp`` holds (a contiguous copy)."""
    dim = split_dim(name)
    if dim is None or tp == 1:
        return full.clone()
    if full.shape[dim] % tp:
        raise ValueError(f"weight '{name}' dim {dim} of size {full.shape[dim]} does not divide by TP {tp}")
    return full.chunk(tp, dim=dim)[rank].clone()


def unshard(shards: list[torch.Tensor], name: str) -> torch.Tensor:
    """Inverse of ``shard``: rebuild the full tensor from every rank's part, in rank order."""
    dim = split_dim(name)
    if dim is None or len(shards) == 1:
        return shards[0].clone()
    return torch.cat(shards, dim=dim)


def pad_vocab(full: torch.Tensor, name: str, padded_vocab: int) -> torch.Tensor:
    """Append zero rows so a vocab weight has ``padded_vocab`` rows (no-op for other weights)."""
    if name not in VOCAB_WEIGHTS or full.shape[0] == padded_vocab:
        return full
    pad = full.new_zeros((padded_vocab - full.shape[0],) + tuple(full.shape[1:]))
    return torch.cat([full, pad], dim=0)


def strip_vocab(full: torch.Tensor, name: str, vocab: int) -> torch.Tensor:
    return full[:vocab].clone() if name in VOCAB_WEIGHTS else full
