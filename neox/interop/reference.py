"""The source model's loss (or logits) on a fixed reference batch, computed with transformers' own decoder layers
streamed one at a time from disk (memory: one layer), so even a 34B model can be checked on a CPU
node. It is recorded by the converter; the trainer's guarded start compares against it."""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch

from neox.checkpoint.files import HFWeights
from neox.model.hf_compat import FAMILIES, ShardedWeights

# A fixed, math-flavoured reference text (written for this project).
REFERENCE_TEXT = (
    "Theorem 1. Let $p$ be a prime and let $a$ be an integer not divisible by $p$. "
    "Then $a^{p-1} \\equiv 1 \\pmod{p}$.\n\nProof. The numbers $a, 2a, \\dots, (p-1)a$ are "
    "distinct modulo $p$, so their product equals $(p-1)!$ up to a multiple of $p$. Hence "
    "$a^{p-1}(p-1)! \\equiv (p-1)! \\pmod{p}$, and since $\\gcd((p-1)!, p) = 1$ we may cancel. $\\square$\n\n"
    "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n\n"
    "Example: $\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}$, so $1 + 2 + \\cdots + 100 = 5050$. "
    "The integral $\\int_0^1 x^2 \\, dx = \\frac{1}{3}$ and $\\lim_{x \\to 0} \\frac{\\sin x}{x} = 1$."
)


def reference_tokens(hf_dir: str, length: int, vocab_size: int) -> list[int]:
    """BOS + the reference text, tokenized with the model's own tokenizer, repeated to ``length``.
    A directory without a tokenizer gets fixed pseudo-random ids (seed 0) instead."""
    sp_path = os.path.join(hf_dir, "tokenizer.model")
    if os.path.isfile(sp_path):
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=sp_path)
        bos, ids = sp.bos_id(), sp.encode(REFERENCE_TEXT)
    elif os.path.isfile(os.path.join(hf_dir, "tokenizer.json")):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(hf_dir)
        bos, ids = tok.bos_token_id, tok.encode(REFERENCE_TEXT, add_special_tokens=False)
    else:
        gen = torch.Generator().manual_seed(0)
        return torch.randint(0, vocab_size, (length,), generator=gen).tolist()
    out = ([bos] if bos is not None and bos >= 0 else []) + ids
    while len(out) < length:
        out += ids
    return out[:length]


@torch.no_grad()
def streamed_hf_loss(weights: HFWeights | ShardedWeights, tokens: list[int], rope_theta: float | None = None) -> float:
    """Mean next-token loss of the Hugging Face model in ``weights`` (an HFWeights) on ``tokens``,
    in fp32, loading one decoder layer at a time. ``rope_theta`` overrides the model's theta."""
    logits = streamed_hf_logits(weights, tokens, rope_theta)
    ids = torch.tensor(tokens)
    return torch.nn.functional.cross_entropy(logits[:-1], ids[1:]).item()


@torch.no_grad()
def streamed_hf_logits(weights: HFWeights | ShardedWeights, tokens: list[int],
                       rope_theta: float | None = None) -> torch.Tensor:
    """Logits [len(tokens), vocab] of the Hugging Face model in ``weights`` (anything with the
    reading interface of HFWeights: ``config``, ``names()``, ``get()``), fp32, one layer at a time."""
    import importlib

    import transformers


    raw = dict(weights.config)
    model_type = raw.get("model_type", "llama")
    if rope_theta is not None:  # the theta changes, any frequency scaling stays
        raw["rope_theta"] = rope_theta
        if raw.get("rope_parameters"):
            params = raw["rope_parameters"]
            raw["rope_parameters"] = ({**params, "full_attention": {**params["full_attention"], "rope_theta": rope_theta}}
                                      if isinstance(params.get("full_attention"), dict)
                                      else {**params, "rope_theta": rope_theta})
    _, prefix, module = FAMILIES[model_type]
    modeling = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
    DecoderLayer, RMSNorm, RotaryEmbedding = (getattr(modeling, prefix + n)
                                              for n in ("DecoderLayer", "RMSNorm", "RotaryEmbedding"))
    config = transformers.CONFIG_MAPPING[model_type](
        **{k: v for k, v in raw.items() if k not in ("architectures", "model_type")})
    config._attn_implementation = "sdpa"
    ids = torch.tensor([tokens])
    hidden = weights.get("model.embed_tokens.weight").float()[ids]
    if model_type == "gemma3_text":  # Gemma scales its embeddings by sqrt(hidden)
        hidden = hidden * torch.tensor(config.hidden_size ** 0.5, dtype=hidden.dtype)
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    rotary = RotaryEmbedding(config)
    rope = {t: rotary(hidden, positions, t) if model_type == "gemma3_text" else rotary(hidden, positions)
            for t in set(layer_types)}
    masks = {t: causal_mask(config, hidden, positions, sliding=t == "sliding_attention") for t in set(layer_types)}
    for i in range(config.num_hidden_layers):
        with torch.device("meta"):
            layer = DecoderLayer(config, i)
        prefix = f"model.layers.{i}."
        state = {k[len(prefix):]: weights.get(k).float() for k in weights.names() if k.startswith(prefix)}
        layer.load_state_dict(state, assign=True, strict=True)
        out = layer(hidden, attention_mask=masks[layer_types[i]], position_embeddings=rope[layer_types[i]],
                    position_ids=positions)
        hidden = out[0] if isinstance(out, tuple) else out
        del layer, state
    norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
    norm.weight.copy_(weights.get("model.norm.weight").float())
    head = "model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"
    return (norm(hidden) @ weights.get(head).float().T)[0]


def causal_mask(config: Any, hidden: torch.Tensor, positions: torch.Tensor,
                sliding: bool = False) -> torch.Tensor | None:
    """transformers' causal mask (its sliding-window one with ``sliding``) without a cache; its
    keyword names differ between 4.x and 5.x (input_embeds / inputs_embeds, past_key_values / cache,
    cache_position)."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    make = create_sliding_window_causal_mask if sliding else create_causal_mask
    names = inspect.signature(make).parameters
    kwargs = {"config": config, "attention_mask": None, "position_ids": positions,
              ("inputs_embeds" if "inputs_embeds" in names else "input_embeds"): hidden,
              ("cache" if "cache" in names else "past_key_values"): None}
    if "cache_position" in names:
        kwargs["cache_position"] = positions[0]
    return make(**kwargs)
