"""Hugging Face Llama, Mistral, Qwen2, Qwen3, OLMo 2 and Gemma 3 <-> trainer: config keys and per-rank weights (names from
neox.model.partition)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Iterable, Optional

import torch

from neox.model import partition
from neox.model.rope_scaling import ROPE_SCALING_KEYS

# model_type -> (architecture, transformers' class prefix, its modeling module): the families the
# converters take. All are the Llama decoder with the options FAMILY_OPTIONS gives them.
FAMILIES = {"llama": ("LlamaForCausalLM", "Llama", "llama"), "mistral": ("MistralForCausalLM", "Mistral", "mistral"),
            "qwen2": ("Qwen2ForCausalLM", "Qwen2", "qwen2"), "qwen3": ("Qwen3ForCausalLM", "Qwen3", "qwen3"),
            "olmo2": ("Olmo2ForCausalLM", "Olmo2", "olmo2"),
            "gemma3_text": ("Gemma3ForCausalLM", "Gemma3", "gemma3")}
# what each family always has that its config.json does not say (our model keys)
FAMILY_OPTIONS: dict[str, dict] = {
    "qwen2": {"qkv_bias": True},
    "qwen3": {"qk_norm": "per_head"},
    "olmo2": {"qk_norm": "full_width", "sublayer_norms": "post"},
    "gemma3_text": {"qk_norm": "per_head", "sublayer_norms": "pre_and_post", "apply_layernorm_1p": True,
                    "scale_embeddings": True},
}
# mixture-of-experts families: refused by model_type, with the reason
MOE_FAMILIES = {"mixtral": "Mixtral", "qwen2_moe": "Qwen2-MoE", "qwen3_moe": "Qwen3-MoE", "llama4": "Llama 4",
                "llama4_text": "Llama 4", "deepseek_v2": "DeepSeek-V2", "deepseek_v3": "DeepSeek-V3",
                "olmoe": "OLMoE", "gpt_oss": "gpt-oss"}
# config keys of a model we do not implement: present and not null/false -> refused by name
REFUSED_KEYS = {
    "mlp_bias": "biases in the MLP", "use_qk_norm": "QK-norm", "qk_layernorm": "QK-norm",
    "num_experts": "mixture of experts", "num_local_experts": "mixture of experts",
    "n_routed_experts": "mixture of experts", "kv_lora_rank": "multi-head latent attention (MLA)",
    "use_sliding_window": "sliding-window attention on the last layers (Qwen's max_window_layers)",
    "final_logit_softcapping": "logit soft-capping", "attn_logit_softcapping": "attention soft-capping",
    "use_bidirectional_attention": "bidirectional attention",
}
# The model options of the bases beyond Llama 2: (our config key, what it does, the Hugging Face
# config key it comes from, the families that use it). docs/converters.md shows markdown_table().
BASE_OPTIONS = [
    ("`head_dim`", "width of one attention head, when it is not `hidden_size / num_attention_heads`",
     "`head_dim`", "Mistral-Nemo, Qwen3 (small sizes), Gemma 3"),
    ("`qkv_bias`", "biases on the query, key and value projections, split with their rows under TP",
     "always on for `qwen2`", "Qwen2, Qwen2.5"),
    ("`tie_word_embeddings` (GPT-NeoX: `no_weight_tying: false`)", "the output head is the input embedding: one "
     "parameter, under TP the vocab-parallel embedding shard multiplies the hidden states", "`tie_word_embeddings`",
     "Llama 3.2 1B/3B, Qwen2.5 0.5B-3B, Qwen3 0.6B-4B, Gemma 3"),
    ("`rope_scaling`", "RoPE frequency scaling: `{rope_type: linear, factor}` or `{rope_type: llama3, factor, "
     "low_freq_factor, high_freq_factor, original_max_position_embeddings}` (on the full-attention layers only "
     "when the sliding ones have their own base)", "`rope_scaling` / `rope_parameters`",
     "Llama 3.1, 3.2, 3.3; Gemma 3 4B-27B (linear)"),
    ("`qk_norm`", "`per_head`: an RMSNorm over `head_dim` on every query and key head before RoPE, one weight "
     "shared by all heads (replicated under TP; its gradient is summed over the TP group); `full_width`: one "
     "RMSNorm over all query (key) heads of a token, its weight split with the heads and its statistic "
     "all-reduced over the TP group", "always on for `qwen3`, `gemma3_text` (per head), `olmo2` (full width)",
     "Qwen3, Gemma 3; OLMo 2"),
    ("`sublayer_norms`", "`pre` (Llama: before attention and MLP); `post`: on the attention and MLP outputs "
     "before the residual add, none before; `pre_and_post`: both (four per layer)",
     "`olmo2` (post), `gemma3_text` (pre and post)", "OLMo 2; Gemma 3"),
    ("`apply_layernorm_1p` (Megatron's key)", "norms multiply by (1 + weight); the weights are kept as the base "
     "stores them (centred at 0), so import and export copy them bit for bit and a new norm starts at 0",
     "`gemma3_text`", "Gemma 3"),
    ("`scale_embeddings`", "embeddings multiplied by sqrt(`hidden_size`), the factor rounded to the weights' "
     "dtype as `transformers` does", "`gemma3_text`", "Gemma 3"),
    ("`mlp_activation`", "the gated MLP's activation: `silu` (SwiGLU) or `gelu_tanh` (GeGLU, tanh-approximated "
     "GELU)", "`hidden_act` / `hidden_activation: gelu_pytorch_tanh`", "Gemma 3"),
    ("`query_pre_attn_scalar`", "attention scores scaled by its -1/2 power instead of `head_dim`'s",
     "`query_pre_attn_scalar`", "Gemma 3"),
    ("`sliding_window`, `sliding_window_pattern`", "a sliding layer attends to the last `sliding_window` "
     "positions, its own included; with a pattern N every N-th layer (N-1, 2N-1, ...) attends fully, without one "
     "every layer slides. SDPA with a mask on CPU (and on GPU without `flash-attn`), `flash-attn`'s window on GPU",
     "`sliding_window`, `layer_types` (4.x: `sliding_window_pattern`)", "Gemma 3 (5 sliding : 1 full), "
     "Mistral 7B v0.1"),
    ("`rotary_emb_base_local`", "RoPE base of the sliding layers; the full layers keep `rotary_emb_base` and "
     "`rope_scaling`", "`rope_parameters.sliding_attention` (4.x: `rope_local_base_freq`)", "Gemma 3"),
    ("`hf_model_type`", "the family an export writes (`model_type`, `architectures`), so `transformers` builds "
     "the same class; changes no number", "`model_type`", "every family but Llama"),
]


def markdown_table() -> str:
    """BASE_OPTIONS as the Markdown table of docs/converters.md, "Base models"."""
    rows = ["| config key | what it does | HF config | families |", "|---|---|---|---|"]
    return "\n".join(rows + [f"| {key} | {what} | {hf} | {families} |" for key, what, hf, families in BASE_OPTIONS])


def rope_parameters(c: dict, layer_type: str = "full_attention") -> dict:
    """{rope_type, rope_theta, ...} from either spelling: transformers 5's rope_parameters (per layer
    type for Gemma 3), or 4.x's rope_theta + rope_scaling (whose type key was once ``type``) and
    Gemma 3's rope_local_base_freq."""
    params = c.get("rope_parameters")
    if params and isinstance(params.get(layer_type), dict):  # per layer type (Gemma 3)
        params = dict(params[layer_type])
    elif params and "rope_type" in params or params and "rope_theta" in params:
        params = dict(params)
    elif layer_type == "sliding_attention":
        params = {"rope_type": "default", "rope_theta": c.get("rope_local_base_freq", 10000.0)}
    else:
        params = {**(c.get("rope_scaling") or {}), "rope_theta": c.get("rope_theta")}
    params["rope_type"] = params.pop("type", None) or params.get("rope_type") or "default"
    return params


def rope_scaling_key(params: dict, where: str) -> dict | None:
    """Our ``rope_scaling`` (None, or the numbers ROPE_SCALING_KEYS names)."""

    kind = params["rope_type"]
    if kind == "default":
        return None
    if kind not in ROPE_SCALING_KEYS:
        raise ValueError(f"{where}: rope_scaling of rope_type '{kind}' is not supported "
                         f"(supported: default, {', '.join(sorted(ROPE_SCALING_KEYS))})")
    extra = sorted(k for k, v in params.items()
                   if k not in ROPE_SCALING_KEYS[kind] | {"rope_type", "rope_theta"} and v not in (None, 1, 1.0))
    if extra:
        raise ValueError(f"{where}: rope_scaling keys {extra} of rope_type '{kind}' are not supported")
    return {"rope_type": kind, **{k: params[k] for k in sorted(ROPE_SCALING_KEYS[kind])}}


def _check_family(c: dict, model_type: str, where: str) -> None:
    """A ValueError naming the model_type or config key this trainer cannot represent."""
    if model_type in MOE_FAMILIES:
        raise ValueError(f"{where}: model_type '{model_type}' ({MOE_FAMILIES[model_type]}) is a mixture-of-experts "
                         f"model, which is not supported: this trainer has dense decoders only ({', '.join(FAMILIES)})")
    if model_type not in FAMILIES:
        hint = (": the multimodal Gemma 3; its text decoder is gemma3_text (Gemma 3 1B; the larger ones' "
                "language_model weights with their text_config)") if model_type == "gemma3" else ""
        raise ValueError(f"{where}: model_type '{model_type}' is not supported ({', '.join(FAMILIES)}){hint}")
    for key, what in REFUSED_KEYS.items():
        if c.get(key):
            raise ValueError(f"{where}: {key} = {c[key]!r}: {what} is not supported")
    act_key = "hidden_activation" if model_type == "gemma3_text" else "hidden_act"
    allowed = ("gelu_pytorch_tanh",) if model_type == "gemma3_text" else ("silu",)
    if c.get(act_key, allowed[0]) not in allowed:
        raise ValueError(f"{where}: {act_key} '{c[act_key]}' is not supported ({', '.join(allowed)})")
    if c.get("attention_bias"):  # Llama's attention_bias puts a bias on o_proj too
        raise ValueError(f"{where}: attention_bias = true: a bias on o_proj is not supported")
    if c.get("attention_dropout"):
        raise ValueError(f"{where}: attention_dropout = {c['attention_dropout']}: dropout is not supported")


def _sliding_keys(c: dict, model_type: str, where: str) -> dict:
    """sliding_window, sliding_window_pattern and rotary_emb_base_local for our keys, from the
    family's way of saying which layers slide (Gemma 3: layer_types or sliding_window_pattern;
    Mistral: every layer, when sliding_window is set), or a ValueError naming the key."""
    layers, window = c["num_hidden_layers"], c.get("sliding_window")
    types = c.get("layer_types")
    if model_type == "gemma3_text":
        if not types:  # config.json of transformers 4.x: the pattern (transformers' default 6)
            n = c.get("sliding_window_pattern") or c.get("_sliding_window_pattern") or 6
            types = ["full_attention" if (i + 1) % n == 0 else "sliding_attention" for i in range(layers)]
    elif model_type == "mistral" and window is not None and window < c["max_position_embeddings"]:
        types = types or ["sliding_attention"] * layers  # (a window as long as the positions changes nothing)
    if not types or all(t == "full_attention" for t in types):
        return {}
    if set(types) - {"full_attention", "sliding_attention"} or window is None or model_type not in (
            "gemma3_text", "mistral"):
        raise ValueError(f"{where}: layer_types {sorted(set(types))}: sliding-window layers are supported for "
                         "gemma3_text and mistral only")
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    pattern = full[0] + 1 if full else None
    if [i for i in range(layers) if pattern and (i + 1) % pattern == 0] != full:
        raise ValueError(f"{where}: layer_types: full-attention layers {full} are not every N-th layer, which is "
                         "the pattern supported (sliding_window_pattern)")
    keys = {"sliding_window": window, "sliding_window_pattern": pattern}
    local = rope_parameters(c, "sliding_attention") if model_type == "gemma3_text" else None
    if local is not None:
        if local["rope_type"] != "default":
            raise ValueError(f"{where}: rope_parameters.sliding_attention of rope_type '{local['rope_type']}' is "
                             "not supported (default)")
        keys["rotary_emb_base_local"] = float(local["rope_theta"])
    return keys


def neox_model_keys_from_hf(hf_config: Any, where: str = "config.json") -> dict:
    """Our model keys for a transformers config of one of FAMILIES, or a ValueError naming the
    config key (or model_type) we cannot represent."""
    c = hf_config if isinstance(hf_config, dict) else hf_config.to_dict()
    model_type = c.get("model_type", "llama")
    _check_family(c, model_type, where)
    params = rope_parameters(c)
    heads, hidden = c["num_attention_heads"], c["hidden_size"]
    keys = {
        "num_layers": c["num_hidden_layers"],
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_kv_heads": c.get("num_key_value_heads") or heads,
        "intermediate_size": c["intermediate_size"],
        "max_position_embeddings": c["max_position_embeddings"],
        "rotary_emb_base": float(params["rope_theta"]),
        "rms_norm_epsilon": c["rms_norm_eps"],
        "vocab_size": c["vocab_size"],
    }
    head_dim = c.get("head_dim") or hidden // heads
    scalar = c.get("query_pre_attn_scalar")
    options = {  # only those that differ from Llama 2's defaults, so older metadata reads the same
        "head_dim": head_dim if head_dim != hidden // heads else None,
        "tie_word_embeddings": bool(c.get("tie_word_embeddings")) or None,
        "rope_scaling": rope_scaling_key(params, where),
        "hf_model_type": model_type if model_type != "llama" else None,
        **FAMILY_OPTIONS.get(model_type, {}),
        "mlp_activation": "gelu_tanh" if model_type == "gemma3_text" else None,
        "query_pre_attn_scalar": float(scalar) if scalar is not None and scalar != head_dim else None,
        **_sliding_keys(c, model_type, where),
    }
    return {**keys, **{k: v for k, v in options.items() if v is not None}}


class InMemoryWeights:
    """Full HF tensors held in memory (a dict, or a function of the name), with the reading
    interface of ``neox.checkpoint.files.HFWeights``."""

    def __init__(self, tensors: Mapping[str, torch.Tensor] | Callable[[str], torch.Tensor]):
        self._get = tensors if callable(tensors) else tensors.__getitem__

    def shape(self, name: str) -> tuple:
        return tuple(self._get(name).shape)

    def get(self, name: str) -> torch.Tensor:
        return self._get(name).clone()

    def get_slice(self, name: str, dim: int, start: int, end: int) -> torch.Tensor:
        return self._get(name).narrow(dim, start, end - start).clone()


def shard_hf_weights(source: Any, names: Iterable[str], vocab: int, padded_vocab: int, rank: int,
                     tp: int, dtype: Optional[torch.dtype] = None) -> dict:
    """This rank's weights by our names, laid out by ``neox.model.partition``, optionally cast to
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
            assert dim is not None, "a part with a slice is split"
            t = source.get_slice(n, dim, start, max(start, min(end, source.shape(n)[dim])))
            if t.shape[dim] < end - start:  # rows past the real vocabulary: padding
                pad_shape = list(t.shape)
                pad_shape[dim] = end - start - t.shape[dim]
                t = torch.cat([t, t.new_zeros(pad_shape)], dim)
            parts.append(t)
        if len(parts) == 1:
            t = parts[0]
        else:
            assert dim is not None, "fused parts are split"
            t = torch.cat(parts, dim)
        t = t.to(dtype or parts[0].dtype).contiguous()
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

    def __init__(self, rank_weight: Callable[[int, str], torch.Tensor], names: Iterable[str], tp: int, dims: dict,
                 vocab: int, config: dict):
        self.rank_weight, self.tp, self.dims, self.vocab, self.config = rank_weight, tp, dims, vocab, config
        self._ours = {hf: name for name in names for hf in partition.hf_names(name)}
        self._cached: tuple[str | None, dict[str, torch.Tensor] | None] = (None, None)

    def names(self) -> list[str]:
        return list(self._ours)

    def _full(self, hf_name) -> torch.Tensor:
        name = self._ours[hf_name]
        if self._cached[0] != name:
            parts = partition.unshard([self.rank_weight(r, name) for r in range(self.tp)], name, self.dims)
            self._cached = (name, dict(zip(partition.hf_names(name), parts)))
        assert self._cached[1] is not None, "filled above for this name"
        return partition.strip_vocab(self._cached[1][hf_name], name, self.vocab)

    def shape(self, name: str) -> tuple:
        return tuple(self._full(name).shape)

    def get(self, name: str) -> torch.Tensor:
        return self._full(name).clone()

    def get_slice(self, name: str, dim: int, start: int, end: int) -> torch.Tensor:
        return self._full(name).narrow(dim, start, end - start).clone()
