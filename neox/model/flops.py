"""Parameter count and the MFU formula.

FLOPs per trained token = 6 N + 12 L a S (N parameters, L layers, a = query heads x head size,
the hidden size unless head_dim is set apart from it, S sequence length): 6N for the matmuls of
forward + backward, 12 L a S for attention scores and values.
Activation recomputation is not counted (it is overhead, not useful work), as in the usual
MFU definition. MFU = tokens/s x FLOPs per token / (GPUs x peak FLOP/s per GPU).
"""

from typing import Any


def parameter_count(cfg: Any, vocab_size: int | None = None) -> int:
    m = cfg.model
    v = vocab_size if vocab_size is not None else m.vocab_size
    head_dim = m.head_dim or m.hidden_size // m.num_attention_heads
    attn = m.hidden_size * head_dim * (2 * m.num_attention_heads + 2 * m.num_kv_heads)
    if m.qkv_bias:
        attn += head_dim * (m.num_attention_heads + 2 * m.num_kv_heads)
    mlp = 3 * m.hidden_size * m.intermediate_size
    norms = 2 * m.hidden_size
    embeddings = (1 if m.tie_word_embeddings else 2) * v * m.hidden_size
    return m.num_layers * (attn + mlp + norms) + embeddings + m.hidden_size


def flops_per_token(cfg: Any) -> int:
    m = cfg.model
    attention_width = m.num_attention_heads * (m.head_dim or m.hidden_size // m.num_attention_heads)
    return 6 * parameter_count(cfg) + 12 * m.num_layers * attention_width * m.seq_length


def mfu(cfg: Any, tokens_per_sec: float, num_gpus: int) -> float:
    return tokens_per_sec * flops_per_token(cfg) / (num_gpus * cfg.logging.peak_flops_per_gpu)
