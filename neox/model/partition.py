"""The one place that says how every weight is named, shaped and split across tensor-parallel ranks.

``WEIGHTS`` lists each of our parameters with the dimension it is split on (None: replicated on
every rank) and the Hugging Face Llama tensor(s) it holds, with their shapes in the symbols of
``sizes()``. The model, the checkpoint code and the converters all read this table; nothing else
decides a layout. Conversions always go through the HF tensors: ``shard`` turns full HF tensors
into one rank's weight, ``unshard`` turns every rank's weight back into full HF tensors.

Some weights exist only with a model option (``Weight.option``): the q/k/v biases with
``qkv_bias`` (Qwen2), the output head only without ``tie_word_embeddings`` (tied: the head is the
embedding matrix, one parameter), the query/key norms with ``qk_norm`` (per head: Qwen3, Gemma 3;
full width: OLMo 2), the norms around each sublayer by ``sublayer_norms`` (``pre``: Llama's two;
``post``: OLMo 2's two after the attention and MLP outputs; ``pre_and_post``: Gemma 3's four).

Replicated weights (dim None) are whole on every rank. Most see the same data on every rank (the
norms of the full hidden state) and so get the same gradient everywhere. A *partial* one
(``Weight.partial``) is applied to this rank's heads only (a per-head QK-norm weight): each rank's
gradient is its heads' share, and the trainer sums it over the TP group before the optimizer step
(``neox.model.llama.sum_partial_gradients``); without that the copies drift apart.

Unfused weights are split into ``tp`` equal contiguous blocks on their split dim (for q-like
weights: blocks of whole heads).

Fused weights (``qkv_proj``, ``gate_up_proj``) list several HF parts and are split on dim 0,
*rank-blocked*: rank r holds block r of every part, concatenated in part order. With Q = heads x
head_dim, KV = kv_heads x head_dim, F = intermediate_size and t = TP size, rank r's rows are

    qkv_proj      [ q rows  r*Q/t  : (r+1)*Q/t  ;  k rows  r*KV/t : (r+1)*KV/t  ;  v rows (same) ]
    gate_up_proj  [ gate rows  r*F/t : (r+1)*F/t  ;  up rows  r*F/t : (r+1)*F/t ]

so each rank's local output splits as [Q/t, KV/t, KV/t] (resp. [F/t, F/t]). A rank's query heads
r*heads/t ... use exactly its KV heads r*kv_heads/t ..., so grouped-query attention needs no
communication. At TP=1 the fused weight is the plain concatenation [q; k; v] (resp. [gate; up]).
The layout depends on t: a checkpoint is re-sharded through ``unshard`` + ``shard``, never by
cutting the fused matrix into t equal blocks.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, Optional, cast

import torch


class Weight(NamedTuple):
    name: str  # our parameter name; {i} is the layer index
    dim: Optional[int]  # split dim across TP ranks (None: replicated)
    parts: tuple  # ((HF name, HF shape in the symbols of sizes()), ...) in the order they are fused
    option: Optional[str] = None  # present only when this model option holds (see OPTIONS)
    partial: bool = False  # replicated, but each rank's gradient covers only its heads: summed over TP


def _layer(*parts):
    return tuple((f"model.layers.{{i}}.{hf}", shape) for hf, shape in parts)


WEIGHTS = [
    Weight("embed.weight", 0, (("model.embed_tokens.weight", ("V", "H")),)),
    Weight("layers.{i}.input_norm.weight", None, _layer(("input_layernorm.weight", ("H",))), option="pre_norms"),
    Weight("layers.{i}.attention.qkv_proj.weight", 0, _layer(
        ("self_attn.q_proj.weight", ("Q", "H")), ("self_attn.k_proj.weight", ("KV", "H")),
        ("self_attn.v_proj.weight", ("KV", "H")))),
    Weight("layers.{i}.attention.qkv_proj.bias", 0, _layer(
        ("self_attn.q_proj.bias", ("Q",)), ("self_attn.k_proj.bias", ("KV",)), ("self_attn.v_proj.bias", ("KV",))),
        option="qkv_bias"),
    Weight("layers.{i}.attention.q_head_norm.weight", None, _layer(("self_attn.q_norm.weight", ("D",))),
           option="qk_norm_per_head", partial=True),
    Weight("layers.{i}.attention.k_head_norm.weight", None, _layer(("self_attn.k_norm.weight", ("D",))),
           option="qk_norm_per_head", partial=True),
    Weight("layers.{i}.attention.q_norm.weight", 0, _layer(("self_attn.q_norm.weight", ("Q",))),
           option="qk_norm_full_width"),
    Weight("layers.{i}.attention.k_norm.weight", 0, _layer(("self_attn.k_norm.weight", ("KV",))),
           option="qk_norm_full_width"),
    Weight("layers.{i}.attention.o_proj.weight", 1, _layer(("self_attn.o_proj.weight", ("H", "Q")))),
    # the norm before the MLP: Llama's HF name says "post attention"; Gemma 3 calls it pre-feedforward
    Weight("layers.{i}.post_attention_norm.weight", None, _layer(("post_attention_layernorm.weight", ("H",))),
           option="pre_norms_only"),
    Weight("layers.{i}.pre_mlp_norm.weight", None, _layer(("pre_feedforward_layernorm.weight", ("H",))),
           option="pre_and_post_norms"),
    # the norms of the sublayers' outputs, before the residual add (OLMo 2, Gemma 3)
    Weight("layers.{i}.attention_out_norm.weight", None, _layer(("post_attention_layernorm.weight", ("H",))),
           option="post_norms"),
    Weight("layers.{i}.mlp_out_norm.weight", None, _layer(("post_feedforward_layernorm.weight", ("H",))),
           option="post_norms"),
    Weight("layers.{i}.mlp.gate_up_proj.weight", 0, _layer(
        ("mlp.gate_proj.weight", ("F", "H")), ("mlp.up_proj.weight", ("F", "H")))),
    Weight("layers.{i}.mlp.down_proj.weight", 1, _layer(("mlp.down_proj.weight", ("H", "F")))),
    Weight("final_norm.weight", None, (("model.norm.weight", ("H",)),)),
    Weight("lm_head.weight", 0, (("lm_head.weight", ("V", "H")),), option="untied"),
]
# option -> whether it holds for a model's keys (a ModelArgs or a dict of its keys)
OPTIONS = {
    "qkv_bias": lambda get: bool(get("qkv_bias")),
    "untied": lambda get: not get("tie_word_embeddings"),
    "qk_norm_per_head": lambda get: get("qk_norm") == "per_head",
    "qk_norm_full_width": lambda get: get("qk_norm") == "full_width",
    "pre_norms": lambda get: (get("sublayer_norms") or "pre") in ("pre", "pre_and_post"),
    "pre_norms_only": lambda get: (get("sublayer_norms") or "pre") == "pre",
    "pre_and_post_norms": lambda get: get("sublayer_norms") == "pre_and_post",
    "post_norms": lambda get: get("sublayer_norms") in ("post", "pre_and_post"),
}
# weights whose dim 0 is the vocabulary (padded so that it divides by TP)
VOCAB_WEIGHTS = {"embed.weight", "lm_head.weight"}


def sizes(model: Any, padded_vocab: Optional[int] = None) -> dict:
    """Values of the shape symbols for a model: ``model`` is a ModelArgs or a dict of its keys.
    V is the (padded, if given) vocabulary, H hidden, Q heads x head_dim, KV kv_heads x head_dim,
    F intermediate, D head_dim."""
    get = _getter(model)
    heads, hidden = get("num_attention_heads"), get("hidden_size")
    head_dim = get("head_dim") or hidden // heads
    return {"V": padded_vocab or get("vocab_size"), "H": hidden, "Q": heads * head_dim,
            "KV": (get("num_kv_heads") or heads) * head_dim, "F": get("intermediate_size"), "D": head_dim}


def _getter(model):
    if model is None:
        return lambda key: None
    if isinstance(model, dict):
        return model.get
    return lambda key: getattr(model, key, None)


def _present(w: Weight, model) -> bool:
    return w.option is None or OPTIONS[w.option](_getter(model))


def _regex(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


_BY_OURS = [(_regex(w.name), w) for w in WEIGHTS]


def _lookup(name: str) -> tuple[Weight, Optional[str]]:
    for regex, w in _BY_OURS:
        m = regex.match(name)
        if m:
            return w, m.groupdict().get("i")
    raise KeyError(f"no partition rule for weight '{name}'")


def split_dim(name: str) -> Optional[int]:
    """Dimension along which weight ``name`` is split across TP ranks (None: replicated)."""
    return _lookup(name)[0].dim


def is_partial(name: str) -> bool:
    """Whether replicated weight ``name`` gets only this rank's share of its gradient (sum it over TP)."""
    return _lookup(name)[0].partial


def hf_names(name: str) -> list[str]:
    """The HF tensor(s) our weight ``name`` holds, in fused order (one name if not fused)."""
    w, i = _lookup(name)
    return [hf.replace("{i}", i) if i is not None else hf for hf, _ in w.parts]


def hf_shapes(name: str, dims: dict) -> list[tuple]:
    """Full shapes of the HF tensor(s) of ``name``, for ``dims`` from ``sizes()``."""
    return [tuple(dims[s] for s in shape) for _, shape in _lookup(name)[0].parts]


def expected_names(num_layers: int, model: Any = None) -> list[str]:
    """Our weight names for a model of ``num_layers`` layers with the options of ``model`` (its
    keys: a ModelArgs or a dict; None: plain Llama, no biases, untied head)."""
    names = []
    for w in (w for w in WEIGHTS if _present(w, model)):
        if "{i}" in w.name:
            names += [w.name.replace("{i}", str(i)) for i in range(num_layers)]
        else:
            names.append(w.name)
    return names


def expected_hf_names(num_layers: int, model: Any = None) -> list[str]:
    return [hf for name in expected_names(num_layers, model) for hf in hf_names(name)]


def is_unfused_part(name: str) -> bool:
    """Whether ``name`` ends like one part of a fused weight (``...q_proj.weight``), as in
    checkpoints written before q/k/v and gate/up were fused."""
    suffixes = {".".join(hf.split(".")[-2:]) for w in WEIGHTS if len(w.parts) > 1 for hf, _ in w.parts}
    return any(name.endswith("." + s) for s in suffixes)


def rank_slices(name: str, shapes: list[tuple], rank: int, tp: int) -> list[Optional[tuple[int, int]]]:
    """The [start, end) range on the split dim of each HF part (full ``shapes``) that TP rank
    ``rank`` holds; the rank's weight is these slices concatenated on the split dim. None for a
    replicated weight."""
    dim = split_dim(name)
    if dim is None:
        return [None] * len(shapes)
    out: list[Optional[tuple[int, int]]] = []
    for shape in shapes:
        if shape[dim] % tp:
            raise ValueError(f"weight '{name}' dim {dim} of size {shape[dim]} does not divide by TP {tp}")
        size = shape[dim] // tp
        out.append((rank * size, (rank + 1) * size))
    return out


def shard(parts: list[torch.Tensor], name: str, rank: int, tp: int) -> torch.Tensor:
    """The weight TP rank ``rank`` of ``tp`` holds, from the full HF tensor(s) of ``name`` (a copy)."""
    dim = split_dim(name)
    if dim is None:
        return parts[0].clone()
    # a split weight (dim is not None): no part's slice is None
    slices = cast(list[tuple[int, int]], rank_slices(name, [tuple(p.shape) for p in parts], rank, tp))
    return torch.cat([p.narrow(dim, s, e - s) for p, (s, e) in zip(parts, slices)], dim)


def unshard(shards: list[torch.Tensor], name: str, dims: Optional[dict] = None) -> list[torch.Tensor]:
    """Inverse of ``shard``: the full HF tensor(s) of ``name`` from every rank's weight, in rank
    order. ``dims`` (from ``sizes()``) is needed only for fused weights."""
    w, _ = _lookup(name)
    dim, tp = w.dim, len(shards)
    if dim is None:
        return [shards[0].clone()]
    if len(w.parts) == 1:
        return [torch.cat(shards, dim)]
    if dims is None:
        raise ValueError(f"unshard of fused weight '{name}' needs the model sizes")
    local = [shape[dim] // tp for shape in hf_shapes(name, dims)]
    per_rank = [s.split(local, dim) for s in shards]
    return [torch.cat([pieces[k] for pieces in per_rank], dim) for k in range(len(local))]


def strip_vocab(full: torch.Tensor, name: str, vocab: int) -> torch.Tensor:
    """Drop the vocabulary padding rows of a full vocab weight (no-op for other weights)."""
    return full[:vocab].clone() if name in VOCAB_WEIGHTS else full
