"""Hugging Face Llama <-> trainer: config keys and per-rank weights (names from neox.partition)."""

from __future__ import annotations

from typing import Iterable, Optional

import torch

from neox import partition


def neox_model_keys_from_hf(hf_config) -> dict:
    """GPT-NeoX model keys equivalent to a transformers LlamaConfig."""
    c = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
    if c.get("tie_word_embeddings"):
        raise ValueError("tied input/output embeddings are not supported (Llama unties them)")
    if c.get("attention_bias") or c.get("mlp_bias"):
        raise ValueError("biases in attention/MLP are not supported (Llama has none)")
    if c.get("rope_scaling"):
        raise ValueError(f"rope_scaling {c['rope_scaling']} is not supported")
    theta = c.get("rope_theta") or (c.get("rope_parameters") or {}).get("rope_theta")
    return {
        "num_layers": c["num_hidden_layers"],
        "hidden_size": c["hidden_size"],
        "num_attention_heads": c["num_attention_heads"],
        "num_kv_heads": c.get("num_key_value_heads") or c["num_attention_heads"],
        "intermediate_size": c["intermediate_size"],
        "max_position_embeddings": c["max_position_embeddings"],
        "rotary_emb_base": float(theta),
        "rms_norm_epsilon": c["rms_norm_eps"],
        "vocab_size": c["vocab_size"],
    }


class InMemoryWeights:
    """Full HF tensors held in memory (a dict, or a function of the name), with the reading
    interface of ``neox.checkpoint.files.HFWeights``."""

    def __init__(self, tensors):
        self._get = tensors if callable(tensors) else tensors.__getitem__

    def shape(self, name) -> tuple:
        return tuple(self._get(name).shape)

    def get(self, name) -> torch.Tensor:
        return self._get(name).clone()

    def get_slice(self, name, dim: int, start: int, end: int) -> torch.Tensor:
        return self._get(name).narrow(dim, start, end - start).clone()


def shard_hf_weights(source, names: Iterable[str], vocab: int, padded_vocab: int, rank: int,
                     tp: int, dtype: Optional[torch.dtype] = None) -> dict:
    """This rank's weights by our names, laid out by ``neox.partition``, optionally cast to
    ``dtype``. ``source`` is an ``HFWeights`` (read slice by slice: only this rank's part of each
    tensor is read), or full HF tensors as a dict or a function of the HF name. Vocab rows
    beyond ``vocab`` are zero padding (masked to -inf in the logits)."""
    if not hasattr(source, "get_slice"):
        source = InMemoryWeights(source)
    out = {}
    for name in names:
        dim = partition.split_dim(name)
        hf = partition.hf_names(name)
        shapes = [source.shape(n) for n in hf]
        if name in partition.VOCAB_WEIGHTS:
            if shapes[0][0] != vocab:
                raise ValueError(f"{hf[0]} has {shapes[0][0]} rows, expected vocab {vocab}")
            shapes = [(padded_vocab,) + shapes[0][1:]]
        parts = []
        for n, span in zip(hf, partition.rank_slices(name, shapes, rank, tp)):
            if span is None:
                parts.append(source.get(n))
                continue
            start, end = span
            t = source.get_slice(n, dim, start, max(start, min(end, source.shape(n)[dim])))
            if t.shape[dim] < end - start:  # rows past the real vocabulary: padding
                pad_shape = list(t.shape)
                pad_shape[dim] = end - start - t.shape[dim]
                t = torch.cat([t, t.new_zeros(pad_shape)], dim)
            parts.append(t)
        t = (parts[0] if len(parts) == 1 else torch.cat(parts, dim)).to(dtype or parts[0].dtype).contiguous()
        if t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # a view of a larger tensor: torch.save would write all of it
        out[name] = t
    return out


class ShardedWeights:
    """Full HF tensors of a tensor-parallel checkpoint, joined with ``partition.unshard`` on
    demand, with the reading interface of ``neox.checkpoint.files.HFWeights``. ``rank_weight(rank,
    name)`` returns our weight ``name`` as rank ``rank`` of ``tp`` holds it. The full tensors of
    the last weight read are cached (q, k and v are read one after another). Vocabulary rows
    beyond ``vocab`` are dropped. ``config`` is an HF config.json dict for the model."""

    def __init__(self, rank_weight, names, tp: int, dims: dict, vocab: int, config: dict):
        self.rank_weight, self.tp, self.dims, self.vocab, self.config = rank_weight, tp, dims, vocab, config
        self._ours = {hf: name for name in names for hf in partition.hf_names(name)}
        self._cached = (None, None)

    def names(self):
        return list(self._ours)

    def _full(self, hf_name) -> torch.Tensor:
        name = self._ours[hf_name]
        if self._cached[0] != name:
            parts = partition.unshard([self.rank_weight(r, name) for r in range(self.tp)], name, self.dims)
            self._cached = (name, dict(zip(partition.hf_names(name), parts)))
        return partition.strip_vocab(self._cached[1][hf_name], name, self.vocab)

    def shape(self, name) -> tuple:
        return tuple(self._full(name).shape)

    def get(self, name) -> torch.Tensor:
        return self._full(name).clone()

    def get_slice(self, name, dim: int, start: int, end: int) -> torch.Tensor:
        return self._full(name).narrow(dim, start, end - start).clone()
