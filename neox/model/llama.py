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
from neox.model import sequence_parallel as seq
from neox.model.attention_masks import Documents, flex_attention, sliding_window_mask
from neox.model.head_loss import head_loss

try:  # optional GPU extra
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the install
    flash_attn_func = None


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, in fp32. ``one_plus``: the gain is (1 + weight), weights centred
    at 0 (Gemma's convention, Megatron's ``apply_layernorm_1p``), stored as Gemma stores them."""

    def __init__(self, size: int, eps: float, one_plus: bool = False):
        super().__init__()
        self.eps, self.one_plus = eps, one_plus
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        gain = 1.0 + self.weight.float() if self.one_plus else self.weight.float()
        return (normed * gain).to(x.dtype)


class FullWidthRMSNorm(RMSNorm):
    """OLMo 2's QK-norm: one RMS statistic over all heads' queries (or keys) of a token. Under TP
    each rank holds its heads' slice of the width and of the weight; the sum of squares is
    all-reduced over the TP group so the statistic is the whole width's."""

    def __init__(self, local_size: int, full_size: int, eps: float, tp: int):
        super().__init__(local_size, eps)
        self.full_size, self.tp = full_size, tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        sum_sq = x32.pow(2).sum(-1, keepdim=True)
        if self.tp > 1:
            sum_sq = seq.sum_over_tp(sum_sq)
        normed = x32 * torch.rsqrt(sum_sq / self.full_size + self.eps)
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


def _column(in_f, out_f, mp_config, bias=False, shared_weight=False, sequence_parallel=False):
    """``shared_weight``: no weight of its own, forward takes one (the tied output head). With
    sequence parallelism its input comes from ``sequence_parallel.gather``, whose backward sums the
    input gradient over TP: the layer's own all-reduce of it is skipped."""
    return mtp.ColumnParallelLinear(in_f, out_f, config=mp_config, init_method=nn.init.zeros_,
                                    bias=bias, gather_output=False, skip_weight_param_allocation=shared_weight,
                                    disable_grad_reduce=sequence_parallel,
                                    tp_group=parallel_state.get_tensor_model_parallel_group())


def _row(in_f, out_f, mp_config):
    return mtp.RowParallelLinear(in_f, out_f, config=mp_config, init_method=nn.init.zeros_,
                                 bias=False, input_is_parallel=True, skip_bias_add=False,
                                 tp_group=parallel_state.get_tensor_model_parallel_group())


def _row_out(layer: mtp.RowParallelLinear, x: torch.Tensor, sp: bool) -> torch.Tensor:
    """A row-parallel layer's output: summed over TP (all-reduce), or with sequence parallelism
    summed and split along the sequence in one reduce-scatter."""
    return seq.scatter(F.linear(x, layer.weight)) if sp else layer(x)[0]


class Attention(nn.Module):
    def __init__(self, m: Any, tp: int, mp_config: ModelParallelConfig, window: int | None, sp: bool):
        super().__init__()
        self.sp = sp  # sequence parallel: x holds this rank's positions; gathered here, scattered at the end
        self.head_dim = m.head_dim
        self.local_heads = m.num_attention_heads // tp
        self.local_kv_heads = m.num_kv_heads // tp
        self.impl, self.window = m.attention_impl, window  # window None: full causal attention
        self.scale = m.query_pre_attn_scalar ** -0.5 if m.query_pre_attn_scalar else None  # None: head_dim's
        # one matmul for q, k and v; this rank's rows are [its q heads; its k heads; its v heads]
        # (the rank-blocked layout of neox.model.partition)
        self.local_sizes = [n * self.head_dim for n in (self.local_heads, self.local_kv_heads, self.local_kv_heads)]
        self.qkv_proj = _column(m.hidden_size, (m.num_attention_heads + 2 * m.num_kv_heads) * self.head_dim,
                                mp_config, bias=m.qkv_bias, sequence_parallel=sp)
        self.o_proj = _row(m.num_attention_heads * self.head_dim, m.hidden_size, mp_config)
        if m.qk_norm == "per_head":  # one weight of head_dim for all heads: replicated, gradient summed over TP
            self.q_head_norm = RMSNorm(self.head_dim, m.rms_norm_epsilon, m.apply_layernorm_1p)
            self.k_head_norm = RMSNorm(self.head_dim, m.rms_norm_epsilon, m.apply_layernorm_1p)
        elif m.qk_norm == "full_width":  # split with the heads; the statistic spans the TP ranks
            self.q_norm = FullWidthRMSNorm(self.local_sizes[0], m.num_attention_heads * self.head_dim,
                                           m.rms_norm_epsilon, tp)
            self.k_norm = FullWidthRMSNorm(self.local_sizes[1], m.num_kv_heads * self.head_dim, m.rms_norm_epsilon, tp)
        self.qk_norm = m.qk_norm
        self.recompute_core = "core_attn" in m.selective_recompute()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                documents: Documents | None = None) -> torch.Tensor:
        """``documents``: packed documents that do not see each other (Documents); None: causal over
        the whole sequence."""
        if self.sp:
            x = seq.gather(x)
        b, s, _ = x.shape
        q, k, v = self.qkv_proj(x)[0].split(self.local_sizes, dim=-1)
        if self.qk_norm == "full_width":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.reshape(b, s, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if self.qk_norm == "per_head":
            q, k = self.q_head_norm(q), self.k_head_norm(k)
        if self.recompute_core and self.training:  # selective recomputation: RoPE + attention again in backward
            out = checkpoint(self.core, q, k, v, cos, sin, documents, use_reentrant=False)
        else:
            out = self.core(q, k, v, cos, sin, documents)
        return _row_out(self.o_proj, out.reshape(b, s, self.local_heads * self.head_dim), self.sp)

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             documents: Documents | None) -> torch.Tensor:
        """RoPE and the attention itself: [b, heads, s, d] in, [b, s, heads, d] out (core_attn)."""
        s = q.shape[2]
        q, k = Rotary.apply(q, cos, sin), Rotary.apply(k, cos, sin)
        if documents is None and self._use_flash(q):
            window = (-1, -1) if self.window is None else (self.window - 1, 0)
            return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True,
                                   softmax_scale=self.scale, window_size=window)
        gqa = self.local_heads != self.local_kv_heads
        if documents is not None and documents.flex:
            out = flex_attention(q, k, v, block_mask=documents.block_mask(self.window), scale=self.scale,
                                 enable_gqa=gqa)
            return out.transpose(1, 2)
        mask = None if self.window is None or self.window >= s else sliding_window_mask(s, self.window, q.device)
        if documents is not None:
            mask = documents.dense() if mask is None else documents.dense() & mask
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.scale,
                                              enable_gqa=gqa).transpose(1, 2)

    def _use_flash(self, q) -> bool:
        wanted = self.impl == "flash" or (self.impl == "auto" and flash_attn_func is not None)
        return wanted and flash_attn_func is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)


class MLP(nn.Module):
    """Gated: down(act(gate(x)) * up(x)); act is SiLU (SwiGLU) or tanh-approximated GELU (GeGLU)."""

    def __init__(self, m: Any, mp_config: ModelParallelConfig, sp: bool):
        super().__init__()
        # one matmul for gate and up; this rank's rows are [its gate rows; its up rows]
        self.gate_up_proj = _column(m.hidden_size, 2 * m.intermediate_size, mp_config, sequence_parallel=sp)
        self.down_proj = _row(m.intermediate_size, m.hidden_size, mp_config)
        self.gelu, self.sp = m.mlp_activation == "gelu_tanh", sp
        self.recompute_act = "mlp_act" in m.selective_recompute()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(seq.gather(x) if self.sp else x)[0]
        if self.recompute_act and self.training:  # selective recomputation: the activation again in backward
            return _row_out(self.down_proj, checkpoint(self.activation, gate_up, use_reentrant=False), self.sp)
        return _row_out(self.down_proj, self.activation(gate_up), self.sp)

    def activation(self, gate_up: torch.Tensor) -> torch.Tensor:
        """act(gate) * up from the fused gate/up output (mlp_act)."""
        gate, up = gate_up.chunk(2, dim=-1)
        return (F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)) * up


class Layer(nn.Module):
    """Attention then MLP, each added to the residual stream, with the norms ``sublayer_norms``
    says: before each sublayer (Llama), after each sublayer's output (OLMo 2), or both (Gemma 3)."""

    def __init__(self, m: Any, tp: int, mp_config: ModelParallelConfig, window: int | None, sp: bool):
        super().__init__()

        def norm() -> RMSNorm:
            return RMSNorm(m.hidden_size, m.rms_norm_epsilon, m.apply_layernorm_1p)

        if m.sublayer_norms in ("pre", "pre_and_post"):
            self.input_norm = norm()
        self.attention = Attention(m, tp, mp_config, window, sp)
        if m.sublayer_norms == "pre":
            self.post_attention_norm = norm()  # Llama's name for the norm before the MLP
        elif m.sublayer_norms == "pre_and_post":
            self.pre_mlp_norm = norm()
        if m.sublayer_norms in ("post", "pre_and_post"):
            self.attention_out_norm, self.mlp_out_norm = norm(), norm()
        self.mlp = MLP(m, mp_config, sp)
        self.pre, self.post = m.sublayer_norms != "post", m.sublayer_norms != "pre"

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                documents: Documents | None = None) -> torch.Tensor:
        a = self.attention(self.input_norm(x) if self.pre else x, cos, sin, documents)
        x = x + (self.attention_out_norm(a) if self.post else a)
        m = self.mlp(self.mlp_input(x))
        return x + (self.mlp_out_norm(m) if self.post else m)

    def mlp_input(self, x: torch.Tensor) -> torch.Tensor:
        """The residual stream normalised for the MLP (Llama's post_attention_norm, Gemma's
        pre_mlp_norm), or as it is (OLMo 2 normalises outputs only)."""
        if hasattr(self, "post_attention_norm"):
            return self.post_attention_norm(x)
        return self.pre_mlp_norm(x) if hasattr(self, "pre_mlp_norm") else x


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
        self.sliding = set(m.sliding_layers())
        # sequence parallel: the residual stream holds seq / tp positions per rank (neox.model.sequence_parallel)
        self.sp = cfg.parallel.sequence_parallel and self.tp > 1
        self.use_flex_for_documents: bool | None = None  # None: decided per batch (flex_documents)
        self.layers = nn.ModuleList(Layer(m, self.tp, mp_config, m.sliding_window if i in self.sliding else None,
                                          self.sp) for i in range(m.num_layers))
        self.final_norm = RMSNorm(m.hidden_size, m.rms_norm_epsilon, m.apply_layernorm_1p)
        # tied: the head multiplies by the (vocab-parallel) embedding matrix, one parameter
        self.lm_head = _column(m.hidden_size, self.padded_vocab_size, mp_config, shared_weight=m.tie_word_embeddings,
                               sequence_parallel=self.sp)
        self.rotary = Rotary(m.head_dim, m.rotary_emb_base, m.rope_scaling)
        # the sliding layers' own RoPE base (Gemma 3), unscaled; None: the same tables as the others
        local_base = m.rotary_emb_base_local
        self.local_rotary = Rotary(m.head_dim, local_base) if local_base is not None else None
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
                param.fill_(0.0 if self.cfg.model.apply_layernorm_1p else 1.0)  # a gain of 1 either way
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
                loss_mask: torch.Tensor | None = None, segment_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``segment_ids`` [b, s]: the document of each position (reset_attention_mask: attention stays
        inside it); ``position_ids`` [b, s]: RoPE positions (reset_position_ids: restarting at each
        document); None: one causal sequence, positions 0 .. s-1 (neox.data.dataset.document_fields)."""
        # batches are built on the CPU (neox.data.dataset, the prefetch thread, evaluation, the guarded
        # start's reference batch) and neither the trainer nor DeepSpeed's engine moves them: on
        # CUDA the embedding lookup would fail. A no-op when they are already on the weights' device.
        device = self.embed.weight.device
        tokens, labels, loss_mask, segment_ids, position_ids = (  # type: ignore[assignment]  # tokens is a Tensor
            t.to(device, non_blocking=True) if t is not None else None
            for t in (tokens, labels, loss_mask, segment_ids, position_ids))
        x = self.embed(tokens)
        if self.cfg.model.scale_embeddings:  # Gemma: sqrt(hidden), rounded to the weights' dtype as Gemma does
            x = x * torch.tensor(self.cfg.model.hidden_size ** 0.5, dtype=x.dtype)
        if self.sp:
            x = seq.split(x)
        rope = self._rope(self.rotary, tokens.shape[1], tokens.device, position_ids)
        local_rope = self._rope(self.local_rotary, tokens.shape[1], tokens.device, position_ids) \
            if self.local_rotary else rope
        documents = Documents(segment_ids, self.flex_documents(segment_ids)) if segment_ids is not None else None
        for i, layer in enumerate(self.layers):
            cos, sin = local_rope if i in self.sliding else rope
            if self.training and i in self.checkpointed:
                x = checkpoint(layer, x, cos, sin, documents, use_reentrant=False)
            else:
                x = layer(x, cos, sin, documents)
        x = self.final_norm(x)
        if self.sp:
            x = seq.gather(x)
        if labels is not None and self.cfg.model.fused_head_loss:  # never materialises all logits
            return head_loss(x, self.head_weight, labels, loss_mask, self._real_local_vocab(),
                             input_grad_summed=self.sp)
        logits = self._mask_vocab_padding(self.lm_head(x, weight=self.head_weight)[0])
        if labels is None:
            return logits
        return self.loss(logits, labels, loss_mask)

    def flex_documents(self, segment_ids: torch.Tensor) -> bool:
        """Packed documents through FlexAttention (on CUDA, unless attention_impl is sdpa), else SDPA
        with a dense mask. ``use_flex_for_documents`` overrides (tests)."""
        if self.use_flex_for_documents is not None:
            return self.use_flex_for_documents
        return segment_ids.is_cuda and self.cfg.model.attention_impl != "sdpa"

    @staticmethod
    def _rope(rotary: Rotary, seq_len: int, device: torch.device, position_ids: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for positions 0 .. s-1 ([s, d]), or per sample for given positions ([b, 1, s, d])."""
        cos, sin = rotary.cos_sin(seq_len, device)
        if position_ids is None:
            return cos, sin
        return cos[position_ids].unsqueeze(1), sin[position_ids].unsqueeze(1)

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


def sum_partial_gradients(model: nn.Module) -> list:
    """Sum the gradient of every partial replicated weight (``neox.model.partition``: a per-head
    QK-norm weight, which each TP rank applies to its own heads only) over the TP group, as each
    micro-batch's gradient arrives, before it is accumulated: every rank then holds the whole
    gradient and takes the same step. Returns the hook handles (none at TP 1)."""
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return []
    group = parallel_state.get_tensor_model_parallel_group()

    def summed(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad, group=group)
        return grad

    sp = getattr(model, "sp", False)  # sequence parallel: every replicated weight sees this rank's positions only
    return [p.register_hook(summed) for name, p in model.named_parameters()
            if partition.is_partial(name) or (sp and partition.split_dim(name) is None)]


@torch.no_grad()
def replicated_mismatch(model: nn.Module) -> list[str]:
    """Names of the replicated weights whose copy differs, bit for bit, from TP rank 0's in some
    TP group of the job. Collective over the whole job (every rank gets the same list)."""
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return []
    group = parallel_state.get_tensor_model_parallel_group()
    params = [(n, p) for n, p in model.named_parameters() if partition.split_dim(n) is None]
    mine = torch.cat([p.detach().reshape(-1).float() for _, p in params])  # the final norm at least
    first = mine.clone()
    torch.distributed.broadcast(first, src=torch.distributed.get_global_rank(group, 0), group=group)
    flags, offset = [], 0
    for _, p in params:
        flags.append(0.0 if torch.equal(mine[offset:offset + p.numel()], first[offset:offset + p.numel()]) else 1.0)
        offset += p.numel()
    found = torch.tensor(flags, device=mine.device)
    torch.distributed.all_reduce(found)  # over every TP group of the job
    return [n for (n, _), f in zip(params, found.tolist()) if f]
