"""The RoPE scalings the model implements and the numbers each needs (read by the config check and
the Hugging Face import)."""

from typing import Any

ROPE_SCALING_KEYS = {"linear": {"factor"},
                     "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}}


def check_rope_scaling(scaling: Any) -> None:
    """``rope_scaling``: None, or one of the types of ROPE_SCALING_KEYS with exactly its numbers."""
    if scaling is None:
        return
    kind = scaling.get("rope_type") if isinstance(scaling, dict) else None
    if kind not in ROPE_SCALING_KEYS:
        raise ValueError(f"key 'rope_scaling': rope_type must be one of {sorted(ROPE_SCALING_KEYS)}, got {scaling!r}")
    given = set(scaling) - {"rope_type"}
    if given != ROPE_SCALING_KEYS[kind]:
        raise ValueError(f"key 'rope_scaling' of rope_type {kind} needs exactly {sorted(ROPE_SCALING_KEYS[kind])}, "
                          f"got {sorted(given)}")
    for key in given:
        value = scaling[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ValueError(f"key 'rope_scaling.{key}' must be a positive number, got {value!r}")
