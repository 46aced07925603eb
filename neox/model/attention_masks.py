"""Which keys each query may attend, beyond plain causal attention: sliding windows (Gemma 3,
Mistral) and packed documents that do not see each other (reset_attention_mask), as dense boolean
masks for SDPA or FlexAttention block masks (used on CUDA)."""

from __future__ import annotations

from typing import Any

import torch


class Documents:
    """Packed documents' attention, built once per forward from [b, s] segment ids and shared by
    the layers: a dense [b, 1, s, s] bool mask for SDPA, or (``flex``: on CUDA) FlexAttention block
    masks, one per window, which skip whole blocks across documents instead of masking them."""

    def __init__(self, segment_ids: torch.Tensor, flex: bool):
        self.segment_ids, self.flex = segment_ids, flex
        self._dense: torch.Tensor | None = None
        self._blocks: dict[int | None, Any] = {}

    def dense(self) -> torch.Tensor:
        if self._dense is None:
            self._dense = document_mask(self.segment_ids)
        return self._dense

    def block_mask(self, window: int | None) -> Any:
        """FlexAttention's block mask: causal, same document, and within ``window`` if one."""
        if window not in self._blocks:
            from torch.nn.attention.flex_attention import create_block_mask

            seg = self.segment_ids

            def allowed(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
                keep = (k <= q) & (seg[b, q] == seg[b, k])
                return keep & (q - k < window) if window is not None else keep

            b, s = seg.shape
            self._blocks[window] = create_block_mask(allowed, b, None, s, s, device=seg.device)
        return self._blocks[window]


_flex_attention: Any = None


def flex_attention(*args: Any, **kwargs: Any) -> torch.Tensor:
    """torch's FlexAttention, compiled once (uncompiled it materialises the scores)."""
    global _flex_attention
    if _flex_attention is None:
        from torch.nn.attention.flex_attention import flex_attention as flex

        _flex_attention = torch.compile(flex, dynamic=False) if torch.cuda.is_available() else flex
    return _flex_attention(*args, **kwargs)


def document_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] bool from [b, s] document ids: query i may attend key j when j <= i and both
    are in the same document (a block-causal mask: packed documents do not see each other)."""
    s = segment_ids.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (same & causal).unsqueeze(1)


def sliding_window_mask(seq_len: int, window: int, device: torch.device | str) -> torch.Tensor:
    """[s, s] bool, True where query i may attend key j: causal and i - j < window (the query's
    own position and the window - 1 before it, as transformers counts it)."""
    i = torch.arange(seq_len, device=device)
    distance = i[:, None] - i[None, :]
    return (distance >= 0) & (distance < window)
