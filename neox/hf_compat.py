"""Hugging Face Llama <-> trainer: config keys and per-rank weights (names from neox.partition)."""

from __future__ import annotations

from typing import Callable, Iterable

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


def shard_hf_weights(get_hf: Callable[[str], torch.Tensor], names: Iterable[str], vocab: int,
                     padded_vocab: int, rank: int, tp: int) -> dict:
    """This rank's weights by our names; ``get_hf(hf_name)`` returns one full HF tensor at a time."""
    out = {}
    for name in names:
        full = get_hf(partition.to_hf_name(name))
        if name in partition.VOCAB_WEIGHTS and full.shape[0] != vocab:
            raise ValueError(f"{partition.to_hf_name(name)} has {full.shape[0]} rows, expected vocab {vocab}")
        full = partition.pad_vocab(full, name, padded_vocab)
        out[name] = partition.shard(full, name, rank, tp)
    return out
