"""Llama / Code Llama decoder with Megatron-style tensor parallelism (megatron-core layers).

Layout: activations are [batch, seq, hidden]. Each TP rank holds 1/tp of the heads, of the MLP
intermediate features and of the vocabulary; how each weight is split is declared once in
``neox.model.partition``. Normalisation and rotary tables are computed in fp32 whatever the weights'
dtype, and the rotary tables are never stored in a module buffer (a ``.bfloat16()`` cast of the
model must not touch them: reduced-precision RoPE tables were a known GPT-NeoX bug).
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core import tensor_parallel as mtp
from megatron.core.model_parallel_config import ModelParallelConfig
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from torch import nn
from torch.utils.checkpoint import checkpoint

from neox import patches
from neox.model import partition
from neox.model.head_loss import head_loss

try:  # optional GPU extra
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the install
    flash_attn_func = None


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


def scale_frequencies(inv_freq: torch.Tensor, scaling: dict | None) -> torch.Tensor:
    """RoPE frequency scaling (``rope_scaling``, checked by neox.config). ``linear`` divides every
    frequency by ``factor``; ``llama3`` (Llama 3.1) divides only the low frequencies, those whose
    wavelength exceeds original_max_position_embeddings / low_freq_factor, keeps the high ones
    (wavelength below original / high_freq_factor) and blends linearly in between."""
    if scaling is None:
        return inv_freq
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    original = float(scaling["original_max_position_embeddings"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    wavelength = 2 * torch.pi / inv_freq
    blend = ((original / wavelength - low) / (high - low)).clamp(0.0, 1.0)  # 0: scaled, 1: kept
    return (1 - blend) * inv_freq / factor + blend * inv_freq


class Rotary:
    """HF "rotate-half" rotary embedding; cos/sin built in fp32 and cached per (length, device)."""

    def __init__(self, head_dim: int, base: float, scaling: dict | None = None):
        self.head_dim, self.base, self.scaling = head_dim, float(base), scaling
        self._cache: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def cos_sin(self, seq_len: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        key = (seq_len, str(device))
        if key not in self._cache:
            exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
            inv_freq = scale_frequencies(1.0 / (self.base ** exponent), self.scaling)
            positions = torch.arange(seq_len, dtype=torch.float32, device=device)
            freqs = torch.outer(positions, inv_freq)
            angles = torch.cat([freqs, freqs], dim=-1)
            self._cache = {key: (angles.cos(), angles.sin())}  # keep one entry
        return self._cache[key]

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [b, heads, s, head_dim]; rotation done in fp32, result in x's dtype."""
        x32 = x.float()
        half = x32.shape[-1] // 2
        rotated = torch.cat([-x32[..., half:], x32[..., :half]], dim=-1)
        return (x32 * cos + rotated * sin).to(x.dtype)


def _column(in_f, out_f, mp_config, bias=False, shared_weight=False):
    """``shared_weight``: no weight of its own, forward takes one (the tied output head)."""
    return mtp.ColumnParallelLinear(in_f, out_f, config=mp_config, init_method=nn.init.zeros_,
                                    bias=bias, gather_output=False, skip_weight_param_allocation=shared_weight,
                                    tp_group=parallel_state.get_tensor_model_parallel_group())


def _row(in_f, out_f, mp_config):
    return mtp.RowParallelLinear(in_f, out_f, config=mp_config, init_method=nn.init.zeros_,
                                 bias=False, input_is_parallel=True, skip_bias_add=False,
                                 tp_group=parallel_state.get_tensor_model_parallel_group())


class Attention(nn.Module):
    def __init__(self, m: Any, tp: int, mp_config: ModelParallelConfig, impl: str):
        super().__init__()
        self.head_dim = m.head_dim
        self.local_heads = m.num_attention_heads // tp
        self.local_kv_heads = m.num_kv_heads // tp
        self.impl = impl
        # one matmul for q, k and v; this rank's rows are [its q heads; its k heads; its v heads]
        # (the rank-blocked layout of neox.model.partition)
        self.local_sizes = [n * self.head_dim for n in (self.local_heads, self.local_kv_heads, self.local_kv_heads)]
        self.qkv_proj = _column(m.hidden_size, (m.num_attention_heads + 2 * m.num_kv_heads) * self.head_dim,
                                mp_config, bias=m.qkv_bias)
        self.o_proj = _row(m.num_attention_heads * self.head_dim, m.hidden_size, mp_config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = (t.reshape(b, s, -1, self.head_dim).transpose(1, 2)
                   for t in self.qkv_proj(x)[0].split(self.local_sizes, dim=-1))
        q, k = Rotary.apply(q, cos, sin), Rotary.apply(k, cos, sin)
        if self._use_flash(q):
            out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
        else:
            gqa = self.local_heads != self.local_kv_heads
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa).transpose(1, 2)
        return self.o_proj(out.reshape(b, s, self.local_heads * self.head_dim))[0]

    def _use_flash(self, q) -> bool:
        wanted = self.impl == "flash" or (self.impl == "auto" and flash_attn_func is not None)
        return wanted and flash_attn_func is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, m: Any, mp_config: ModelParallelConfig):
        super().__init__()
        # one matmul for gate and up; this rank's rows are [its gate rows; its up rows]
        self.gate_up_proj = _column(m.hidden_size, 2 * m.intermediate_size, mp_config)
        self.down_proj = _row(m.intermediate_size, m.hidden_size, mp_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x)[0].chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)[0]


class Layer(nn.Module):
    def __init__(self, m: Any, tp: int, mp_config: ModelParallelConfig):
        super().__init__()
        self.input_norm = RMSNorm(m.hidden_size, m.rms_norm_epsilon)
        self.attention = Attention(m, tp, mp_config, m.attention_impl)
        self.post_attention_norm = RMSNorm(m.hidden_size, m.rms_norm_epsilon)
        self.mlp = MLP(m, mp_config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.input_norm(x), cos, sin)
        return x + self.mlp(self.post_attention_norm(x))


class LlamaModel(nn.Module):
    """The decoder. ``forward(tokens)`` returns this rank's vocab-parallel logits (padding rows
    at -inf); ``forward(tokens, labels, loss_mask)`` returns the mean token loss."""

    def __init__(self, cfg: Any, dtype: torch.dtype = torch.float32):
        super().__init__()
        m = cfg.model
        self.cfg = cfg
        self.tp = parallel_state.get_tensor_model_parallel_world_size()
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self.vocab_size = m.vocab_size
        self.padded_vocab_size = cfg.padded_vocab_size
        self.checkpointed = set(m.checkpointed_layers())  # recomputed in backward when training
        mp_config = ModelParallelConfig(
            tensor_model_parallel_size=self.tp, use_cpu_initialization=True,
            perform_initialization=False, params_dtype=dtype)
        self.embed = mtp.VocabParallelEmbedding(self.padded_vocab_size, m.hidden_size,
                                                init_method=nn.init.zeros_, config=mp_config,
                                                tp_group=parallel_state.get_tensor_model_parallel_group())
        self.layers = nn.ModuleList(Layer(m, self.tp, mp_config) for _ in range(m.num_layers))
        self.final_norm = RMSNorm(m.hidden_size, m.rms_norm_epsilon)
        # tied: the head multiplies by the (vocab-parallel) embedding matrix, one parameter
        self.lm_head = _column(m.hidden_size, self.padded_vocab_size, mp_config, shared_weight=m.tie_word_embeddings)
        self.rotary = Rotary(m.head_dim, m.rotary_emb_base, m.rope_scaling)
        for name, param in self.named_parameters():
            dim = partition.split_dim(name)
            # DeepSpeed reads these attributes to count each shard once in the global grad norm
            # (megatron sets them on its biases itself)
            if not hasattr(param, "tensor_model_parallel"):
                set_tensor_model_parallel_attributes(param, dim is not None, dim if dim is not None else -1, 1)
        if m.compile_blocks is True:  # "auto" is resolved at start-up (neox.train.speed.apply); unresolved: eager
            patches.spend_megatron_warning()  # before compiling: it would be a graph break
            for layer in self.layers:
                layer.compile()  # in place: parameter names stay the same

    # ---- weights

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Random init that does not depend on TP: each full HF tensor of ``neox.model.partition`` (q, k
        and v separately) comes from its own seeded generator and this rank keeps its shard, so
        TP=1 and TP=2 start from the same model."""
        std = self.cfg.model.init_method_std
        out_std = std / (2 * self.cfg.model.num_layers) ** 0.5  # scaled init of residual outputs
        dims = partition.sizes(self.cfg.model, self.padded_vocab_size)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
                continue
            if name.endswith(".bias"):  # as transformers initialises them
                param.zero_()
                continue
            s = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std
            parts = []
            for hf, shape in zip(partition.hf_names(name), partition.hf_shapes(name, dims)):
                gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(hf.encode()))
                parts.append(torch.randn(shape, generator=gen, dtype=torch.float32) * s)
            if name in partition.VOCAB_WEIGHTS:
                parts[0][self.vocab_size:] = 0.0
            param.copy_(partition.shard(parts, name, self.tp_rank, self.tp))

    def weight_state(self) -> dict:
        """This rank's weights by our names (no megatron ``_extra_state`` entries)."""
        return {k: v for k, v in self.state_dict().items() if not k.endswith("_extra_state")}

    # ---- forward

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        # batches are built on the CPU (neox.data.dataset, the prefetch thread, evaluation, the guarded
        # start's reference batch) and neither the trainer nor DeepSpeed's engine moves them: on
        # CUDA the embedding lookup would fail. A no-op when they are already on the weights' device.
        device = self.embed.weight.device
        tokens, labels, loss_mask = (  # type: ignore[assignment]  # mypy: each item Tensor | None; tokens is a Tensor
            t.to(device, non_blocking=True) if t is not None else None for t in (tokens, labels, loss_mask))
        x = self.embed(tokens)
        cos, sin = self.rotary.cos_sin(tokens.shape[1], tokens.device)
        for i, layer in enumerate(self.layers):
            if self.training and i in self.checkpointed:
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        x = self.final_norm(x)
        if labels is not None and self.cfg.model.fused_head_loss:  # never materialises all logits
            return head_loss(x, self.head_weight, labels, loss_mask, self._real_local_vocab())
        logits = self._mask_vocab_padding(self.lm_head(x, weight=self.head_weight)[0])
        if labels is None:
            return logits
        return self.loss(logits, labels, loss_mask)

    @property
    def head_weight(self) -> torch.Tensor:
        """This rank's output-head rows: the embedding's own when tied."""
        return self.embed.weight if self.cfg.model.tie_word_embeddings else self.lm_head.weight

    def _real_local_vocab(self) -> int:
        """How many of this rank's vocabulary rows are real tokens (the rest is padding)."""
        local = self.padded_vocab_size // self.tp
        return max(0, min(local, self.vocab_size - self.tp_rank * local))

    def _mask_vocab_padding(self, logits):
        local = self.padded_vocab_size // self.tp
        first_pad = self._real_local_vocab()  # local index of the first padded row
        if first_pad >= local:
            return logits
        mask = torch.arange(local, device=logits.device) >= first_pad
        return logits.masked_fill(mask, float("-inf"))

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        per_token = mtp.vocab_parallel_cross_entropy(logits.float(), labels.contiguous())
        if loss_mask is None:
            return per_token.mean()
        loss_mask = loss_mask.float()
        return (per_token * loss_mask).sum() / loss_mask.sum().clamp(min=1.0)

    def gather_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits (padding stripped) from this rank's vocab-parallel logits.
        For evaluation only (no gradient); megatron's gather assumes CUDA, this works on gloo too."""
        if self.tp > 1:
            parts = [torch.empty_like(logits) for _ in range(self.tp)]
            torch.distributed.all_gather(parts, logits.contiguous(),
                                         group=parallel_state.get_tensor_model_parallel_group())
            logits = torch.cat(parts, dim=-1)
        return logits[..., : self.vocab_size]
