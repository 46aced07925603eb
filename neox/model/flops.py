"""Parameter count and the MFU formula.

FLOPs per trained token = 6 N + 12 L a S (N parameters, L layers, a = query heads x head size,
the hidden size unless head_dim is set apart from it, S sequence length): 6N for the matmuls of
forward + backward, 12 L a S for attention scores and values (a sliding-window layer counts
min(S, window) for its S).
Activation recomputation is not counted (it is overhead, not useful work), as in the usual
MFU definition. MFU = tokens/s x FLOPs per token / (GPUs x peak FLOP/s per GPU).
"""

import math
from typing import Any

from neox.model import partition
from neox.model.attention_pattern import sliding_layers


def parameter_count(cfg: Any, vocab_size: int | None = None) -> int:
    """Every weight of the model, from the partition table (so each option's weights count)."""
    m = cfg.model
    dims = partition.sizes(m, vocab_size if vocab_size is not None else m.vocab_size)
    return sum(math.prod(shape) for name in partition.expected_names(m.num_layers, m)
               for shape in partition.hf_shapes(name, dims))


def flops_per_token(cfg: Any) -> int:
    m = cfg.model
    attention_width = m.num_attention_heads * (m.head_dim or m.hidden_size // m.num_attention_heads)
    sliding = set(sliding_layers(m.num_layers, m.sliding_window, m.sliding_window_pattern))
    spans = [min(m.seq_length, m.sliding_window) if i in sliding else m.seq_length for i in range(m.num_layers)]
    return 6 * parameter_count(cfg) + 12 * attention_width * sum(spans)


def mfu(cfg: Any, tokens_per_sec: float, num_gpus: int) -> float:
    return tokens_per_sec * flops_per_token(cfg) / (num_gpus * cfg.logging.peak_flops_per_gpu)
