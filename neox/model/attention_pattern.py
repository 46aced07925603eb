"""Which layers attend through a sliding window (the one rule; the config, the model and the
Hugging Face export read it)."""

from __future__ import annotations


def sliding_layers(num_layers: int, sliding_window: int | None, pattern: int | None) -> list[int]:
    """Indices of the sliding-window layers: none without a window; with ``pattern`` N, every layer
    but N-1, 2N-1, ... (Gemma 3: five of every six); without a pattern, every layer (Mistral)."""
    if sliding_window is None:
        return []
    return [i for i in range(num_layers) if pattern is None or (i + 1) % pattern]
