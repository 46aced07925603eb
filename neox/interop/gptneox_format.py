"""GPT-NeoX's own checkpoint format for Llama models, stated relative to ``neox.model.partition``.

A GPT-NeoX checkpoint holds, per tensor-parallel rank, the same contiguous blocks of every HF
tensor that ``partition.shard`` gives that rank (GPT-NeoX's ColumnParallelLinear/RowParallelLinear
split exactly like ours), except that the rows *inside* a rank's fused block are ordered
differently. So every GPT-NeoX layout here is a row permutation inside one rank's block of our
fused weight at the same TP size; splitting and joining ranks always goes through
``partition.shard`` / ``partition.unshard``.

Module indices of ``sequential.<i>.`` (pipe_parallel_size 0) and ``layer_<i>-model_<TT>-``
(pipeline) files: 0 embedding, 1 and L+2 parameterless, 2 .. L+1 the L transformer layers, L+3
the final norm, L+4 the output layer (untied).

Fused query_key_value layouts (n query heads, m KV heads and hd head dim on one rank):

  per-head    [q_h; k_h; v_h] for each local head h (multi-head attention, n == m): the
              non-GQA attention of GPT-NeoX on every branch, and what its HF->NeoX converter
              wrote before PR #1345 (May 2025).
  llemma-gqa  for each local query head h: [q_h; rows h*s:(h+1)*s of the rank's K; same of V],
              s = m*hd/n: the grouped-query attention of the ``llemma`` branch, and of main
              until PR #1315 (Nov 2024). Equals per-head when n == m.
  per-rank    [all local q; all local k; all local v] (= our own qkv_proj block): main's GQA
              attention since PR #1315, and what main's HF<->NeoX converters read and write for
              every Llama model since PR #1345.

MLP: the ``llemma`` branch (and main before PR #1212) keeps ``mlp.w1`` (gate), ``mlp.w3`` (up)
and ``mlp.w2`` (down) separately; main fuses ``mlp.linear1`` = [up; gate] per rank (its
Gated_Activation takes the first half as the multiplied value, the second through the
activation) and ``mlp.linear2`` (down). Norm weights are ``scale``.
"""

from __future__ import annotations

import torch

QKV_LAYOUTS = ("per-head", "llemma-gqa", "per-rank")
MLP_STYLES = ("w123", "linear1")  # llemma branch / GPT-NeoX main
EXPORT_KEY = "neox_export"  # layout and reference loss tools/export_neox.py records in each rank file


def module_index(kind: str, num_layers: int, layer: int = 0) -> int:
    return {"embed": 0, "layer": layer + 2, "norm": num_layers + 3, "head": num_layers + 4}[kind]


def _plain(neox_name):
    return {"neox": [neox_name], "to_ours": lambda ts, **_: ts[0], "to_neox": lambda t, **_: [t]}


# our weight name (as in partition.WEIGHTS) -> module kind, GPT-NeoX name(s), rank-block conversion
def _qkv_to_ours(ts, layout, heads, kv_heads, head_dim, tp, **_):
    order = qkv_order(layout, heads // tp, kv_heads // tp, head_dim)
    return ts[0][torch.argsort(order)]


def _qkv_to_neox(t, layout, heads, kv_heads, head_dim, tp, **_):
    return [t[qkv_order(layout, heads // tp, kv_heads // tp, head_dim)]]


def _swap_halves(t):
    half = t.shape[0] // 2
    return torch.cat([t[half:], t[:half]])


NAMES = {
    "embed.weight": ("embed", _plain("word_embeddings.weight")),
    "layers.{i}.input_norm.weight": ("layer", _plain("input_layernorm.scale")),
    "layers.{i}.attention.qkv_proj.weight": ("layer", {
        "neox": ["attention.query_key_value.weight"], "to_ours": _qkv_to_ours, "to_neox": _qkv_to_neox}),
    "layers.{i}.attention.o_proj.weight": ("layer", _plain("attention.dense.weight")),
    "layers.{i}.post_attention_norm.weight": ("layer", _plain("post_attention_layernorm.scale")),
    "final_norm.weight": ("norm", _plain("norm.scale")),
    "lm_head.weight": ("head", _plain("final_linear.weight")),
}
MLP_NAMES = {
    "linear1": {
        # our block is [gate_r; up_r], GPT-NeoX main's is [up_r; gate_r]
        "layers.{i}.mlp.gate_up_proj.weight": {"neox": ["mlp.linear1.weight"],
                                               "to_ours": lambda ts, **_: _swap_halves(ts[0]),
                                               "to_neox": lambda t, **_: [_swap_halves(t)]},
        "layers.{i}.mlp.down_proj.weight": _plain("mlp.linear2.weight"),
    },
    "w123": {
        "layers.{i}.mlp.gate_up_proj.weight": {"neox": ["mlp.w1.weight", "mlp.w3.weight"],
                                               "to_ours": lambda ts, **_: torch.cat(ts),
                                               "to_neox": lambda t, **_: list(t.chunk(2))},
        "layers.{i}.mlp.down_proj.weight": _plain("mlp.w2.weight"),
    },
}


def qkv_order(layout: str, n: int, m: int, head_dim: int) -> torch.Tensor:
    """Row indices into our rank block [q (n*hd); k (m*hd); v (m*hd)] in GPT-NeoX ``layout``'s
    order: ``neox_block = our_block[order]`` and ``our_block = neox_block[argsort(order)]``."""
    q, kv = n * head_dim, m * head_dim
    if layout == "per-rank":
        return torch.arange(q + 2 * kv)
    if layout == "per-head" and n != m:
        raise ValueError(f"layout per-head is for multi-head attention; this model has {n} query and "
                         f"{m} KV heads per rank (llemma-gqa or per-rank)")
    if layout not in ("per-head", "llemma-gqa"):
        raise ValueError(f"unknown query_key_value layout '{layout}' (one of {', '.join(QKV_LAYOUTS)})")
    if kv % n:
        raise ValueError(f"layout {layout} needs KV rows per rank ({kv}) to divide by query heads per rank ({n})")
    s = kv // n  # each query head carries this many rows of K and of V
    rows = []
    for h in range(n):
        rows += [torch.arange(h * head_dim, (h + 1) * head_dim), q + torch.arange(h * s, (h + 1) * s),
                 q + kv + torch.arange(h * s, (h + 1) * s)]
    return torch.cat(rows)


def weight_table(mlp_style: str) -> dict:
    """Our weight name -> (module kind, {"neox": names, "to_ours", "to_neox"})."""
    table = dict(NAMES)
    for ours, entry in MLP_NAMES[mlp_style].items():
        table[ours] = ("layer", entry)
    return table


def neox_keys(name: str, num_layers: int, mlp_style: str) -> tuple[int, list[str]]:
    """The GPT-NeoX module index and tensor names that hold our weight ``name`` (with its layer)."""
    parts = name.split(".")
    layer = int(parts[1]) if parts[0] == "layers" else 0
    kind, entry = weight_table(mlp_style)[_generic(name)]
    return module_index(kind, num_layers, layer), entry["neox"]


def to_ours(name: str, tensors: list, mlp_style: str, **dims: str | int) -> torch.Tensor:
    """Our weight ``name`` on one rank from that rank's GPT-NeoX tensor(s) (``dims``: layout,
    heads, kv_heads, head_dim, tp)."""
    return weight_table(mlp_style)[_generic(name)][1]["to_ours"](tensors, **dims)


def to_neox(name: str, tensor: torch.Tensor, mlp_style: str, **dims: str | int) -> list:
    """Inverse of ``to_ours``: one rank's GPT-NeoX tensor(s) for our weight ``name``."""
    return weight_table(mlp_style)[_generic(name)][1]["to_neox"](tensor, **dims)


def _generic(name: str) -> str:
    parts = name.split(".")
    return ".".join(["layers", "{i}"] + parts[2:]) if parts[0] == "layers" else name
