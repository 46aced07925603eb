"""GPT-NeoX config keys: what each one means here, declared once.

A config written for GPT-NeoX must mean here what it meant there, or be refused with the reason.
Every GPT-NeoX key that is not also one of ours (``neox.config.SECTIONS``) has exactly one fate in
``GPT_NEOX_KEYS``:

- ``Translate``: the same meaning, spelt another way; rewritten to our key(s), shown in the plan;
- ``Derive``: a value GPT-NeoX computes from several keys (the MLP width), computed by the rule of
  the GPT-NeoX version it comes from, shown in the plan;
- ``Always``: what we always do; accepted only with a value we implement, any other value is a
  one-line error (for some keys that value is a feature we lack: LayerNorm, dropout, fp16 ...);
- ``NoEffect``: kernel, fusion and infrastructure settings with no effect on the numbers;
  accepted and listed in the plan;
- ``Lacking``: a feature we do not have; setting it is an error.

The rules follow GPT-NeoX's ``llemma`` branch (commit 5dd36653, the code Llemma was trained with)
and GPT-NeoX main (commit ea7aefd8). docs/config.md's "Coming from GPT-NeoX" table is generated from
this table (``markdown_table``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from neox.errors import NeoxError
from neox.exit_status import BAD_INPUT


class GPTNeoXKeyError(NeoxError, ValueError):
    """A GPT-NeoX key we cannot honour; the message is one line naming the key and value."""
    exit_status = BAD_INPUT


@dataclass(frozen=True)
class Translate:
    doc: str
    apply: Callable[[object, dict], dict]  # (value, whole flat config) -> our keys to set


@dataclass(frozen=True)
class Derive:
    doc: str


@dataclass(frozen=True)
class Always:
    accepted: tuple
    doc: str
    lacking: Optional[str] = None  # the feature another value would ask for

    def accepts(self, value: object) -> bool:
        return any(_same(value, a) for a in self.accepted)


@dataclass(frozen=True)
class NoEffect:
    doc: str
    maps_to: Optional[Callable[[object, dict], dict]] = None


@dataclass(frozen=True)
class Lacking:
    doc: str
    off: tuple = (None,)  # values that ask for nothing (accepted silently)


def _same(value, accepted) -> bool:
    if isinstance(accepted, bool) or isinstance(value, bool):
        return value is accepted
    if isinstance(accepted, (int, float)) and isinstance(value, (int, float)):
        return float(value) == float(accepted)
    if isinstance(accepted, str) and isinstance(value, str):
        return value.lower() == accepted.lower()
    return value == accepted


# ----------------------------------------------------------------------------- translations


def _bf16_block(value, flat):
    enabled = value.get("enabled", False) if isinstance(value, dict) else value
    if enabled is True:
        return {"precision": "bf16"}
    return {}


def _attention_config(value, flat):
    """``[[["flash"], 32]]``: one attention type for all layers; flash and global are both exact
    softmax attention (SDPA picks its flash kernel on GPU; flash-attn is used when installed)."""
    kinds, covered = set(), 0
    try:
        for types, count in value:
            kinds.update(str(t) for t in types)
            covered += int(count)
    except (TypeError, ValueError):
        raise GPTNeoXKeyError(f"key 'attention_config' must look like [[[\"flash\"], N]], got {value!r}") from None
    bad = kinds - {"flash", "global"}
    if bad:
        raise GPTNeoXKeyError(f"key 'attention_config' asks for {sorted(bad)} attention, which is not supported "
                              "here (supported: global, flash: exact causal attention)")
    layers = flat.get("num_layers")
    if layers is not None and covered != layers:
        raise GPTNeoXKeyError(f"key 'attention_config' covers {covered} layers but num_layers is {layers}")
    return {"attention_impl": "flash" if kinds == {"flash"} else "auto"}


def _no_weight_tying(value):
    if not isinstance(value, bool):
        raise GPTNeoXKeyError(f"key 'no_weight_tying' must be true or false, got {value!r}")
    return {} if value else {"tie_word_embeddings": True}


def _decay_lr_to(value, flat):
    lr = (flat.get("optimizer") or {}).get("params", {}).get("lr")
    if lr is None:
        raise GPTNeoXKeyError("key 'decay_lr_to' is a fraction of optimizer.params.lr, which is not set")
    min_lr = float(value) * float(lr)
    if "min_lr" in flat and not math.isclose(float(flat["min_lr"]), min_lr, rel_tol=1e-9):
        raise GPTNeoXKeyError(f"keys 'decay_lr_to' ({value}, i.e. min_lr {min_lr:g}) and 'min_lr' "
                              f"({flat['min_lr']}) disagree: set one of them")
    return {"min_lr": min_lr}


def _warmup_fraction(value, flat):
    iters = flat.get("train_iters")
    if iters is None:
        raise GPTNeoXKeyError("key 'warmup' is a fraction of train_iters, which is not set")
    if "warmup_iters" in flat:
        raise GPTNeoXKeyError("keys 'warmup' (a fraction of train_iters) and 'warmup_iters' are both set: set one")
    return {"warmup_iters": int(round(float(value) * int(iters)))}


def _checkpoint_num_layers(value, flat):
    if int(value) != 1:
        raise GPTNeoXKeyError(f"key 'checkpoint_num_layers' = {value}: only 1 (each layer recomputed on its own) "
                              "is supported; use checkpoint_layers to choose layers")
    return {}


def _tensorboard_dir(value, flat):
    return {"use_tensorboard": True} if value else {}


def _wandb_team(value, flat):
    return {"wandb_entity": str(value)} if value is not None else {}


# ----------------------------------------------------------------------------- the table


_FUSION = "kernel fusion; the same numbers unfused"
_INFRA = "launcher or cluster setting; deepy.py / slurm/ decide this here"
_LOG = "logging or profiling detail"

GPT_NEOX_KEYS: dict = {
    # --- same meaning, other spelling
    "bf16": Translate("`enabled: true` -> `precision: bf16`", _bf16_block),
    "decay_lr_to": Translate("a fraction of the peak LR -> `min_lr` = decay_lr_to x lr", _decay_lr_to),
    "warmup": Translate("a fraction of `train_iters` -> `warmup_iters` (rounded)", _warmup_fraction),
    "checkpoint_num_layers": Translate("1 = every layer recomputed on its own, as `checkpoint_activations` "
                                       "does here", _checkpoint_num_layers),
    "attention_config": Translate("`[[[\"flash\"], L]]` -> `attention_impl: flash`, `global` -> `auto`",
                                  _attention_config),
    "tensorboard_dir": Translate("-> `use_tensorboard: true` (events go to `<log_dir>/tensorboard`)",
                                 _tensorboard_dir),
    "wandb_team": Translate("-> `wandb_entity`", _wandb_team),
    # --- derived the way GPT-NeoX derives it
    "mlp_type": Derive("`llama`: MLP width from the llemma branch's rule (see below)"),
    "activation": Derive("`swiglu`: MLP width from GPT-NeoX main's rule; `silu` with `mlp_type: llama`"),
    "mlp_multiple_of": Derive("rounding multiple of GPT-NeoX main's SwiGLU width rule"),
    # --- what we always do
    "pos_emb": Always(("rotary",), "rotary embeddings", lacking="learned / ALiBi / other positions"),
    "rotary_pct": Always((1,), "rotary on the whole head", lacking="partial rotary"),
    "no_weight_tying": Translate("`true`: untied head (our default); `false`: `tie_word_embeddings: true`, the head "
                                 "is the embedding matrix, as in GPT-NeoX", lambda v, flat: _no_weight_tying(v)),
    "gpt_j_residual": Always((False,), "sequential residual", lacking="GPT-J parallel residual"),
    "output_layer_parallelism": Always(("column",), "output head split on the vocabulary"),
    "hidden_dropout": Always((0,), "no dropout", lacking="dropout"),
    "attention_dropout": Always((0,), "no dropout", lacking="dropout"),
    "use_bias_in_norms": Always((False,), "no biases", lacking="biases"),
    "use_bias_in_attn_linear": Always((False,), "no biases", lacking="biases"),
    "use_bias_in_mlp": Always((False,), "no biases", lacking="biases"),
    "init_method": Always(("normal",), "normal init with `init_method_std`", lacking="other initialisations"),
    "output_layer_init_method": Always(("scaled_normal",), "residual outputs scaled by 1/sqrt(2 L)",
                                       lacking="other initialisations"),
    "attention_type": Always(("multihead", "groupedquery"), "GQA when `num_kv_heads` < heads"),
    "fp16": Lacking("fp16 with loss scaling (bf16 or fp32 here)", off=(None, False)),
    "fp32_allreduce": Always((True,), "gradients are accumulated and all-reduced in fp32"),
    "data_types": Always(({"grad_accum_dtype": "fp32"},), "fp32 gradient accumulation"),
    "data_impl": Always(("mmap",), "megatron MMIDIDX `.bin/.idx` files"),
    "use_qk_layernorm": Always((False,), "no QK norm", lacking="QK LayerNorm"),
    "use_mup": Always((False,), "standard parametrisation", lacking="muP"),
    "use_axonn_model_parallelism": Always((False,), "megatron-style tensor parallelism",
                                          lacking="AxoNN parallelism"),
    "sliding_window_width": Always((None,), "full causal attention", lacking="sliding-window attention"),
    "checkpoint_scale": Always(("linear",), "checkpoints every `checkpoint_factor` steps",
                               lacking="log-spaced checkpoints"),
    "weight_by_num_documents": Always((False,), "weights as given", lacking="document-count weighting"),
    # --- no effect on the numbers
    "scaled_upper_triang_masked_softmax_fusion": NoEffect(_FUSION),
    "scaled_masked_softmax_fusion": NoEffect(_FUSION),
    "bias_gelu_fusion": NoEffect(_FUSION),
    "bias_dropout_fusion": NoEffect(_FUSION),
    "rope_fusion": NoEffect(_FUSION),
    "use_flashattn_swiglu": NoEffect(_FUSION),
    "rms_norm_fusion": NoEffect(_FUSION),
    "attention_softmax_in_fp32": NoEffect("the softmax is computed in fp32 here"),
    "apply_query_key_layer_scaling": NoEffect("an fp16 overflow guard; no effect in bf16 or fp32"),
    "partition_activations": NoEffect("activation memory layout under checkpointing"),
    "synchronize_each_layer": NoEffect("a CUDA synchronisation per layer"),
    "contiguous_checkpointing": NoEffect("activation memory layout under checkpointing"),
    "checkpoint_in_cpu": NoEffect("activation memory placement"),
    "distributed_backend": NoEffect("nccl on GPUs, gloo on CPU, chosen here"),
    "deepspeed_slurm": NoEffect(_INFRA),
    "deepspeed_mpi": NoEffect(_INFRA),
    "hostfile": NoEffect(_INFRA),
    "include": NoEffect(_INFRA),
    "exclude": NoEffect(_INFRA),
    "master_addr": NoEffect(_INFRA),
    "num_workers": NoEffect("data-loader workers; batches are prefetched on a thread here"),
    "steps_per_print": NoEffect(_LOG),
    "wall_clock_breakdown": NoEffect(_LOG),
    "log_grad_norm": NoEffect("the gradient norm is always logged"),
    "log_param_norm": NoEffect(_LOG),
    "log_grad_pct_zeros": NoEffect(_LOG),
    "log_optimizer_states": NoEffect(_LOG),
    "log_gradient_noise_scale": NoEffect(_LOG),
    "memory_profiling": NoEffect(_LOG),
    "profile": NoEffect(_LOG),
    "wandb_host": NoEffect("set WANDB_BASE_URL instead"),
    "wandb_init_all_ranks": NoEffect("rank 0 logs"),
    "wandb_run_name": NoEffect(_LOG),
    "git_hash": NoEffect(_LOG),
    "comment": NoEffect(_LOG),
    "checkpoint_validation_with_forward_pass": NoEffect("checkpoints are checked by manifest and "
                                                        "`complete` marker; converted weights by the guarded start"),
    "mmap_warmup": NoEffect("file-cache warm-up"),
    "split": NoEffect("used by GPT-NeoX only with `data_path`, which is refused"),
    "rotary_save_freqs_buffer": NoEffect("RoPE tables are computed, never stored"),
    "layernorm_epsilon": NoEffect("used only with LayerNorm; RMSNorm uses `rms_norm_epsilon`"),
    "zero_stage": NoEffect("read from `zero_optimization.stage`"),
    # --- features we lack
    "data_path": Lacking("one dataset split by `split`: give `train_data_paths`, `valid_data_paths`, "
                         "`test_data_paths`"),
    "merge_file": Lacking("GPT-2 BPE tokenizers (a SentencePiece `vocab_file` is used here)"),
    "label_data_paths": Lacking("separate label datasets"),
    "s3_path": Lacking("checkpoint upload to S3"),
    "autotuning": Lacking("DeepSpeed autotuning"),
    "extra_save_iters": Lacking("extra checkpoint steps (use checkpoint_factor)", off=(None, [])),
    "num_unique_layers": Lacking("shared layers"),
    "moe_num_experts": Lacking("mixture of experts", off=(None, 1)),
    "pipe_partition_method": NoEffect("pipeline stages (pipeline parallelism is not used here)"),
    "depth_model_parallel_size": Always((1,), "megatron-style tensor parallelism", lacking="AxoNN parallelism"),
    "row_model_parallel_size": Always((1,), "megatron-style tensor parallelism", lacking="AxoNN parallelism"),
    "column_model_parallel_size": Always((1,), "megatron-style tensor parallelism", lacking="AxoNN parallelism"),
    "optimize_axonn_communication": NoEffect("AxoNN detail (AxoNN itself is refused)"),
}

# Entries inside `zero_optimization` that only tune DeepSpeed's communication buckets.
ZERO_NO_EFFECT = {"stage", "allgather_partitions", "allgather_bucket_size", "overlap_comm", "reduce_scatter",
                  "reduce_bucket_size", "contiguous_gradients", "round_robin_gradients"}
ZERO_ALWAYS_FALSE = {"cpu_offload", "cpu_offload_params", "offload_optimizer", "offload_param"}

# Keys only a GPT-NeoX model config carries: with any of them, a missing MLP rule means GPT-NeoX's GELU.
GPT_NEOX_MODEL_KEYS = {"pos_emb", "rotary_pct", "no_weight_tying", "gpt_j_residual", "output_layer_parallelism"}


# ----------------------------------------------------------------------------- the MLP width


def llemma_branch_mlp_width(hidden: int) -> int:
    """GPT-NeoX ``llemma`` branch, ``mlp_type: llama``: int(2 * 4h / 3) rounded up to a multiple of
    256; ``intermediate_size`` is ignored there (11008 for h=4096, 22016 for h=8192)."""
    return 256 * math.ceil(int(2 * 4 * hidden / 3) / 256)


def main_swiglu_mlp_width(hidden: int, intermediate_size: Optional[int], multiple_of: int) -> int:
    """GPT-NeoX main, a gated ``activation: swiglu``: ``intermediate_size`` (default 4h) times 2/3,
    the fused [up; gate] width rounded up to 2 x ``mlp_multiple_of``, then halved per branch
    (intermediate_size 32768, mlp_multiple_of 256 -> 11008)."""
    fused = int(2 * (intermediate_size or 4 * hidden) / 3)
    fused = 2 * multiple_of * math.ceil(fused / (2 * multiple_of))
    return fused // 2


def derive_mlp_width(flat: dict) -> tuple[Optional[int], Optional[str]]:
    """(our intermediate_size, how it was derived) for the GPT-NeoX MLP keys, or (None, None)."""
    mlp_type, activation = flat.get("mlp_type"), flat.get("activation")
    given, hidden = flat.get("intermediate_size"), flat.get("hidden_size")
    if mlp_type is None and activation is None and "mlp_multiple_of" not in flat:
        written_for_gpt_neox = sorted(GPT_NEOX_MODEL_KEYS & set(flat))
        if written_for_gpt_neox:
            raise GPTNeoXKeyError(f"key 'activation' is not set in a GPT-NeoX model config ({written_for_gpt_neox[0]} "
                                  "is set): GPT-NeoX would build its default GELU MLP, which is not supported here; "
                                  "set activation: swiglu (GPT-NeoX main) or mlp_type: llama (llemma branch)")
        return None, None
    if mlp_type is not None and str(mlp_type).lower() != "llama":
        raise GPTNeoXKeyError(f"key 'mlp_type' = {mlp_type!r}: only 'llama' (gated SwiGLU) is supported")
    act = None if activation is None else str(activation).lower()
    if act not in (None, "silu", "swiglu"):
        raise GPTNeoXKeyError(f"key 'activation' = {activation!r}: only silu / swiglu (Llama's gated MLP) "
                              "are supported here, not GELU or other activations")
    if hidden is None:
        raise GPTNeoXKeyError("key 'hidden_size' is required to derive the MLP width")
    if mlp_type is not None:
        if act == "swiglu" or "mlp_multiple_of" in flat:
            raise GPTNeoXKeyError("keys 'mlp_type: llama' (llemma branch) and 'activation: swiglu' / "
                                  "'mlp_multiple_of' (GPT-NeoX main) name two versions' MLP rules: keep one, or "
                                  "drop all three and set intermediate_size to the width itself")
        width = llemma_branch_mlp_width(hidden)
        if given is not None and int(given) != width:
            raise GPTNeoXKeyError(f"key 'intermediate_size' ({given}) with 'mlp_type: llama' is ambiguous: the "
                                  f"llemma branch ignores it and builds {width}, GPT-NeoX main reads it as a "
                                  "pre-2/3 width; remove mlp_type and give the width you mean as intermediate_size")
        return width, f"mlp_type llama, hidden {hidden} -> intermediate_size {width} (GPT-NeoX llemma branch rule)"
    if act == "silu":
        raise GPTNeoXKeyError("key 'activation' = 'silu' without 'mlp_type: llama' is GPT-NeoX main's ungated MLP, "
                              "which is not supported; Llama's gated MLP is activation: swiglu")
    multiple = int(flat.get("mlp_multiple_of", 1))
    width = main_swiglu_mlp_width(hidden, given, multiple)
    source = f"intermediate_size {given}" if given is not None else f"default 4 x hidden {4 * hidden}"
    return width, (f"activation swiglu, {source}, mlp_multiple_of {multiple} -> intermediate_size {width} "
                   "(GPT-NeoX main rule: x 2/3, rounded, halved per branch)")


# ----------------------------------------------------------------------------- translation


@dataclass
class Translation:
    flat: dict  # our keys only
    notes: list = field(default_factory=list)  # "gpt-neox key -> our keys" lines for the plan
    no_effect: list = field(default_factory=list)  # keys accepted without effect


def is_gpt_neox_key(key: str) -> bool:
    return key in GPT_NEOX_KEYS


def translate(flat: dict, ours: set) -> Translation:
    """Rewrite the GPT-NeoX keys of ``flat`` (keys already underscored) into our keys."""
    out = Translation(flat={k: v for k, v in flat.items() if k in ours})
    neox = {k: v for k, v in flat.items() if k not in ours}
    width, how = derive_mlp_width(flat)
    if width is not None:
        out.flat["intermediate_size"] = width
        out.notes.append(how)
    for key, value in neox.items():
        fate = GPT_NEOX_KEYS[key]
        if isinstance(fate, Translate):
            mapped = fate.apply(value, flat)
            _merge(out, key, mapped, flat)
            out.notes.append(f"{key} {_short(value)} -> " + (", ".join(f"{k} {_short(v)}" for k, v in mapped.items())
                                                           or "the same meaning here, nothing to set"))
        elif isinstance(fate, Always) and not fate.accepts(value):
            what = f" ({fate.lacking} is not supported here)" if fate.lacking else ""
            raise GPTNeoXKeyError(f"key '{key}' = {_short(value)}{what}; supported: "
                                  + " or ".join(_short(a) for a in fate.accepted))
        elif isinstance(fate, Lacking) and not _is_off(value, fate.off):
            raise GPTNeoXKeyError(f"key '{key}' = {_short(value)}: {fate.doc} is not supported here")
        elif isinstance(fate, NoEffect):
            out.no_effect.append(key)
    _check_attention_type(flat)
    return out


def _is_off(value, off: tuple) -> bool:
    if isinstance(value, dict) and "enabled" in value:  # a DeepSpeed-style block: {enabled: false, ...}
        return value["enabled"] is False
    return any(_same(value, o) for o in off)


def _canonical(key: str, value):
    if key == "precision":  # bf16 / bfloat16 are one value
        return {"bfloat16": "bf16", "float32": "fp32"}.get(str(value).lower(), str(value).lower())
    return value


def _merge(out: Translation, key: str, mapped: dict, flat: dict) -> None:
    for k, v in mapped.items():
        if k in out.flat and not _same(_canonical(k, out.flat[k]), _canonical(k, v)) and k != "min_lr":
            raise GPTNeoXKeyError(f"key '{key}' means {k} {_short(v)} but '{k}' is set to {_short(out.flat[k])}")
        out.flat[k] = v


def _check_attention_type(flat: dict) -> None:
    kind = str(flat.get("attention_type", "")).lower()
    heads, kv = flat.get("num_attention_heads"), flat.get("num_kv_heads")
    if kind == "multihead" and kv is not None and heads is not None and kv != heads:
        raise GPTNeoXKeyError(f"key 'attention_type' = multihead but num_kv_heads ({kv}) != num_attention_heads "
                              f"({heads}): use attention_type: groupedquery")
    if kind == "groupedquery" and kv is None:
        raise GPTNeoXKeyError("key 'attention_type' = groupedquery needs num_kv_heads")


def check_zero_optimization(zero: dict) -> None:
    for key, value in zero.items():
        if key in ZERO_ALWAYS_FALSE:
            if value not in (False, None, {}) and not (isinstance(value, dict) and value.get("device") in (None, "none")):
                raise GPTNeoXKeyError(f"key 'zero_optimization.{key}' = {_short(value)}: CPU offload is not supported here")
        elif key not in ZERO_NO_EFFECT:
            raise GPTNeoXKeyError(f"key 'zero_optimization.{key}' is not supported here (supported: "
                                  f"{', '.join(sorted(ZERO_NO_EFFECT))})")


def _short(value) -> str:
    text = str(value).replace("True", "true").replace("False", "false")
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------------ the docs/config.md table


def markdown_table() -> str:
    """The table of fates in docs/config.md (tests/test_gpt_neox_configs.py checks it is there verbatim)."""
    names = {Translate: "translated", Derive: "derived", Always: "always", NoEffect: "no effect", Lacking: "refused"}
    rows = ["| GPT-NeoX key | fate | here |", "|---|---|---|"]
    for key, fate in sorted(GPT_NEOX_KEYS.items(), key=lambda kv: (list(names).index(type(kv[1])), kv[0])):
        if isinstance(fate, Always):
            here = "only " + " / ".join(f"`{_short(a)}`" for a in fate.accepted) + f": {fate.doc}"
            if fate.lacking:
                here += f" ({fate.lacking}: refused)"
        else:
            here = fate.doc
        rows.append(f"| `{key}` | {names[type(fate)]} | {here.replace('|', '/')} |")
    return "\n".join(rows)
