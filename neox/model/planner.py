"""Pre-flight plan: parameters, memory per GPU, tokens and GPU-hours, from the config alone.

Memory per GPU (bytes), for P parameters of which P_gpu live on one GPU (TP shard plus the
replicated norms), data-parallel size D, ZeRO stage 1:
  bf16:  weights 2 P_gpu + gradients 4 P_gpu + (fp32 master 4 + Adam m and v 8) P_gpu / D
         (DeepSpeed's BF16_Optimizer accumulates gradients in one fp32 buffer of the full model
         shard on every rank; the bf16 gradients of the backward are freed before the next one)
  fp32:  weights 4 P_gpu + gradients 4 P_gpu + (master 4 + Adam 8) P_gpu / D
  (ZeRO stage 0: the optimizer bytes are not divided by D; stage 2: the gradients are, 4 P_gpu / D:
  DeepSpeed's ZeRO optimizer keeps only this rank's fp32 gradient partition)
Activations at micro batch b, sequence s, hidden h, TP t, vocab V, with C of the L layers
checkpointed (all, some or none: checkpoint_activations / checkpoint_layers):
  stored inputs of checkpointed layers   C * s b h * e / r                  (e: 2 bf16, 4 fp32; r = t with
                                                                            sequence_parallel, else 1)
  other layers keep what autograd saves  (L - C) * s b * layer_bytes_per_token
  one layer recomputed (if C > 0)        s b * layer_bytes_per_token
  logits gradient (fused_head_loss)      s b V / t * e                      (fp32 chunks are small)
  logits and their gradient (unfused)    2 * s b V / t * 4                  (fp32 for the cross entropy)
  document mask (reset_attention_mask)   s s b                              (bool [b, 1, s, s], one for all
                                                                            layers, saved by attention)
layer_bytes_per_token is what one layer of neox.model.llama saves for backward, per token, with q, k
the query and key/value widths and f the MLP width on this rank (each / t), h unsplit:
  eager           16 h + e (2 h + 3 q + 3 k + 4 f)   norms: fp32 input and normalised value (8 h
                                                     each) + their output; the fused qkv output,
                                                     rotated q and k, attention output; gate/up
                                                     output, silu(gate), silu(gate) * up
  compile_blocks  e (4 h + 3 q + 3 k + 3 f)          inductor keeps the norms' inputs and outputs
                                                     and recomputes the fp32 and silu values
  both            + 4 (heads / t) + 8                the attention's logsumexp and two rsqrt
and with the options of the 2025-26 bases (n = 8 for bf16, 4 for fp32: the fp32 copy of the input
and the normalised value; compiled, only the rsqrt stays):
  sublayer_norms pre_and_post   + 2 (8 h + 4), compiled + 2 (e h + 4)   two more norms (post: as pre)
  qk_norm per_head              + n (q + k) + 4 (heads + kv_heads) / t, compiled only the last term
  qk_norm full_width            + n (q + k) + 8, compiled + 8
With recompute_granularity: selective, core_attn keeps neither the rotated q and k nor the
logsumexp (- e (q + k) - 4 heads / t; RoPE and the attention run again in backward), and mlp_act
not act(gate) (- e f, eager only: compiled blocks recompute it anyway).
With sequence_parallel (r = t) the residual stream's norms hold s / t positions: eager 16 h / r and
8 / r in place of 16 h and 8, compiled e (2 h + 2 h / r ...) (the norms' inputs split, their outputs
gathered for the TP region, which keeps them whole), Gemma's extra norms / r; the QK-norms work
inside the TP region and keep every position.
Counted by tests/test_planner_memory.py with autograd's saved-tensor hooks and measured on an
H200 (docs/gpu_check.md). A fixed overhead covers the CUDA context, communication buffers and
fragmentation. These are estimates to catch plans that cannot fit; they are not a guarantee.
"""

from __future__ import annotations

import math
from typing import Any

from neox.model import partition
from neox.model.flops import flops_per_token, parameter_count

GIB = 2**30
OVERHEAD_GIB = 2.0


def parameters_per_gpu(cfg: Any) -> int:
    m, tp = cfg.model, cfg.parallel.model_parallel_size
    dims = partition.sizes(m, cfg.padded_vocab_size)
    total = 0
    for name in partition.expected_names(1, m):  # layer 0 stands for every layer
        n = sum(math.prod(shape) for shape in partition.hf_shapes(name, dims))
        if partition.split_dim(name) is not None:
            n //= tp
        total += n * (m.num_layers if name.startswith("layers.") else 1)
    return total


def sequence_split(cfg: Any) -> int:
    """How many ways the residual stream's positions are split: TP with sequence parallelism, else 1."""
    tp = cfg.parallel.model_parallel_size
    return tp if cfg.parallel.sequence_parallel and tp > 1 else 1


def layer_bytes_per_token(cfg: Any) -> float:
    """Bytes one decoder layer keeps for backward per token of the sequence on one rank (formula above)."""
    m, tp, r = cfg.model, cfg.parallel.model_parallel_size, sequence_split(cfg)
    e = 2 if cfg.optim.precision == "bf16" else 4
    h, head_dim = m.hidden_size, m.head_dim
    q, k, f = m.num_attention_heads * head_dim // tp, m.num_kv_heads * head_dim // tp, m.intermediate_size // tp
    small = 4 * m.num_attention_heads // tp + 8 / r
    compiled = m.compile_blocks is True  # "auto" stays eager until neox.train.speed resolves it at start-up
    extra = _qk_norm_bytes(m, tp, e, q, k, compiled) + _extra_norm_bytes(m, e, compiled) / r
    recomputed = m.selective_recompute()  # what selective recomputation does not keep
    if "core_attn" in recomputed:
        extra -= e * (q + k) + 4 * m.num_attention_heads // tp  # rotated q and k, the logsumexp
    if "mlp_act" in recomputed and not compiled:  # compiled blocks recompute the activation already
        extra -= e * f  # act(gate) (the product stays: down_proj keeps its input)
    if compiled:
        return e * (2 * h + 2 * h / r + 3 * q + 3 * k + 3 * f) + small + extra
    return 16 * h / r + e * (2 * h + 3 * q + 3 * k + 4 * f) + small + extra


def _extra_norm_bytes(m: Any, e: int, compiled: bool) -> int:
    """Gemma 3's two norms beyond Llama's two (pre and post each sublayer), per token they hold."""
    if m.sublayer_norms != "pre_and_post":
        return 0
    return 2 * ((e if compiled else 8) * m.hidden_size + 4)


def _qk_norm_bytes(m: Any, tp: int, e: int, q: int, k: int, compiled: bool) -> int:
    """The QK-norms' saved bytes per token: inside the TP region, on every position."""
    n = 8 if e == 2 else 4  # the fp32 copy of a bf16 input (none in fp32) and the normalised value
    if m.qk_norm == "per_head":
        return 4 * (m.num_attention_heads + m.num_kv_heads) // tp + (0 if compiled else n * (q + k))
    if m.qk_norm == "full_width":
        return 8 + (0 if compiled else n * (q + k))
    return 0


def memory_per_gpu(cfg: Any) -> dict:
    """Estimated bytes per GPU by category, and the total in GiB."""
    m, tp = cfg.model, cfg.parallel.model_parallel_size
    p = parameters_per_gpu(cfg)
    dp = cfg.data_parallel_size
    stage = cfg.optim.zero_optimization.get("stage", 0)
    zero = stage >= 1
    bf16 = cfg.optim.precision == "bf16"
    weights = (2 if bf16 else 4) * p
    # fp32 (bf16 runs accumulate in DeepSpeed's fp32 buffer); stage 2 keeps only this rank's partition
    grads = 4 * p / (dp if stage == 2 else 1)
    optimizer = (12 if bf16 else 8) * p / (dp if zero else 1)  # (fp32 master +) Adam m, v
    s, b, h, L = m.seq_length, cfg.batch.train_micro_batch_size_per_gpu, m.hidden_size, m.num_layers
    act_bytes = 2 if bf16 else 4
    layer_working = s * b * layer_bytes_per_token(cfg)
    c = len(m.checkpointed_layers())
    stored_input = s * b * h * act_bytes / sequence_split(cfg)  # each checkpointed layer keeps its input
    activations = c * stored_input + (L - c) * layer_working + (layer_working if c else 0)
    logits = (s * b * cfg.padded_vocab_size / tp * act_bytes if m.fused_head_loss
              else 2 * s * b * cfg.padded_vocab_size / tp * 4)
    documents = s * s * b if m.reset_attention_mask else 0  # the block-causal mask, bool, shared by the layers
    parts = {"weights": weights, "gradients": grads, "optimizer_states": optimizer,
             "activations": activations + logits + documents, "overhead": OVERHEAD_GIB * GIB}
    return {**{f"{k}_gib": v / GIB for k, v in parts.items()}, "total_gib": sum(parts.values()) / GIB,
            "parameters_per_gpu": p}


def checkpoint_bytes(cfg: Any) -> int:
    """Bytes of one checkpoint on disk, all ranks: every TP shard's weights in the training
    precision plus the fp32 master copy and Adam m and v (12 bytes per parameter; ZeRO splits
    them over data parallel, so the total is the same). The smoke config: 18.2 MB, as written."""
    weight_bytes = 2 if cfg.optim.precision == "bf16" else 4
    return cfg.parallel.model_parallel_size * parameters_per_gpu(cfg) * (weight_bytes + 12)


def gpu_hours(cfg: Any, total_tokens: int, mfu: float) -> float:
    return total_tokens * flops_per_token(cfg) / (mfu * cfg.logging.peak_flops_per_gpu) / 3600


def plan(cfg: Any) -> dict:
    g, s = cfg.batch.train_batch_size, cfg.model.seq_length
    total_tokens = g * s * cfg.schedule.train_iters
    weights = cfg.data.train_data_weights or [1.0] * len(cfg.data.train_data_paths)
    out = {
        "tokens_per_step": g * s,
        "total_tokens": total_tokens,
        "normalized_data_weights": [w / sum(weights) for w in weights],
    }
    if cfg.model.vocab_size is not None:
        mem = memory_per_gpu(cfg)
        out.update({
            "num_parameters": parameter_count(cfg),
            "parameters_per_gpu": mem.pop("parameters_per_gpu"),
            "memory_per_gpu_gib": mem["total_gib"],
            "memory_breakdown_gib": {k[:-4]: v for k, v in mem.items() if k != "total_gib"},
            "gpu_memory_gib": cfg.planner.gpu_memory_gib,
            "flops_per_token": flops_per_token(cfg),
            "planner_mfu": cfg.planner.planner_mfu,
            "gpu_hours_at_mfu": gpu_hours(cfg, total_tokens, cfg.planner.planner_mfu),
        })
    return out


def format_plan(cfg: Any, p: dict) -> str:
    rows = [("GPUs", f"{cfg.world_size} ({cfg.parallel.num_nodes} nodes x {cfg.parallel.num_gpus})"),
            ("tensor x data parallel", f"{cfg.parallel.model_parallel_size} x {cfg.data_parallel_size}"),
            ("micro x accum x DP = batch", f"{cfg.batch.train_micro_batch_size_per_gpu} x "
             f"{cfg.batch.gradient_accumulation_steps} x {cfg.data_parallel_size} = {cfg.batch.train_batch_size}"),
            ("tokens per step", f"{p['tokens_per_step']:,}"),
            ("total tokens", f"{p['total_tokens']:,}"),
            ("data weights", ", ".join(f"{w:.4f}" for w in p["normalized_data_weights"]))]
    if "num_parameters" in p:
        b = p["memory_breakdown_gib"]
        rows += [("parameters", f"{p['num_parameters']:,} ({p['parameters_per_gpu']:,} per GPU)"),
                 ("memory per GPU", f"{p['memory_per_gpu_gib']:.1f} GiB of {p['gpu_memory_gib']:g} "
                  f"(weights {b['weights']:.1f}, grads {b['gradients']:.1f}, optimizer "
                  f"{b['optimizer_states']:.1f}, activations {b['activations']:.1f}, overhead {b['overhead']:.1f})"),
                 (f"GPU-hours at {100 * p['planner_mfu']:.1f}% MFU", f"{p['gpu_hours_at_mfu']:,.0f}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"{k:<{width}}  {v}" for k, v in rows] + format_gpt_neox(cfg.gpt_neox))


def format_gpt_neox(info: dict) -> list:
    """The plan's lines on GPT-NeoX keys: each translation or derivation, and the keys ignored."""
    lines = []
    if info.get("translated"):
        lines.append("GPT-NeoX keys translated:")
        lines += [f"  {note}" for note in info["translated"]]
    if info.get("no_effect"):
        lines.append("GPT-NeoX keys with no effect here: " + ", ".join(info["no_effect"]))
    return lines
