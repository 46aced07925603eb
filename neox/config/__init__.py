"""GPT-NeoX-style YAML configuration: load, merge, override, validate, derive.

A config is written as flat GPT-NeoX keys (``num_layers: 2``); in code it lives in typed
sections (``cfg.model.num_layers``). ``SECTIONS`` below is the single declaration of every key,
its type and its default. Everything here runs before any process is spawned, so a bad config
fails in a second on a laptop instead of minutes into a 256-GPU job.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Self, Union, get_args, get_origin, get_type_hints, overload

import yaml

from neox.config.gpt_neox_keys import GPT_NEOX_KEYS, GPTNeoXKeyError, check_zero_optimization, translate
from neox.config.hooks import check_command
from neox.config.memory_fit import format_memory, what_would_fit
from neox.data.tokenizer import HF, KINDS, TokenizerError, kind_of_file, tokenizer_vocab_size
from neox.errors import NeoxError
from neox.exit_status import BAD_INPUT
from neox.model.attention_pattern import sliding_layers
from neox.model.planner import memory_per_gpu, plan
from neox.model.rope_scaling import ROPE_SCALING_KEYS, check_rope_scaling  # noqa: F401 - ROPE_SCALING_KEYS: part of the config's API


class ConfigError(NeoxError, ValueError):
    """A config problem; the message is one line that names the key (or file)."""
    exit_status = BAD_INPUT


def _positive(section, *keys: str) -> None:
    for key in keys:
        value = getattr(section, key)
        if value is not None and not value > 0:  # `not > 0` also catches NaN
            raise ConfigError(f"key '{key}' must be positive, got {value}")


def _finite(section, *keys: str) -> None:
    for key in keys:
        value = getattr(section, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"key '{key}' must be a finite number, got {value}")


def _gpt_neox_call(fn, *args):
    try:
        return fn(*args)
    except GPTNeoXKeyError as e:
        raise ConfigError(str(e)) from None


# ----------------------------------------------------------------------------- sections


BoolOrAuto = Union[bool, Literal["auto"]]
RESUME = "resume"  # field metadata: a resume may change this key ("reshard": where the state can be resharded)


def resumable(default: Any = dataclasses.MISSING, reshard: bool = False, factory: Any = dataclasses.MISSING) -> Any:
    """A field whose value a resume may change (the checkpoint's config is otherwise kept)."""
    return field(default=default, default_factory=factory, metadata={RESUME: "reshard" if reshard else True})


class _Section:
    """A config section: ``resolved()`` returns it checked, with its derived values filled."""

    def check(self) -> None:
        pass

    def resolved(self) -> Self:
        self.check()
        return self


RECOMPUTE_MODULES = ("core_attn", "mlp_act")  # what recompute_granularity: selective may recompute


@dataclass(frozen=True, kw_only=True)
class ModelArgs(_Section):
    # required keys have no default; derived ones (DERIVED) are filled by NeoXConfig.from_flat
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int  # derived when not given: num_attention_heads (no GQA)
    intermediate_size: int  # explicit, never derived from a multiplier
    seq_length: int
    max_position_embeddings: int  # derived when not given: seq_length
    rotary_emb_base: float  # Llemma 7B trains at 1e4, 34B at 1e6
    norm: str = "rmsnorm"
    rms_norm_epsilon: float = 1e-5
    vocab_size: Optional[int] = None  # None: taken from the tokenizer (vocab_file)
    make_vocab_size_divisible_by: int = 1  # Llemma used 1; TP divisibility is added on top
    init_method_std: float = 0.02
    checkpoint_activations: bool = resumable(False)  # recompute layer activations in backward (all layers ...)
    checkpoint_layers: Optional[list] = resumable(None)  # ... or only these layer indices (None: all)
    # Megatron's names: full (= checkpoint_activations) or selective: only recompute_modules again in backward
    recompute_granularity: Optional[str] = resumable(None)
    recompute_modules: Optional[list] = resumable(None)  # selective: core_attn (RoPE + attention), mlp_act
    attention_impl: str = resumable("auto")  # auto | sdpa | flash
    # torch.compile each transformer block; auto: when the backend compiles here and train_iters
    # repays it (neox.train.speed, decided at start-up)
    compile_blocks: BoolOrAuto = resumable("auto")
    cpu_keep_freed_memory: bool = True  # on CPU: malloc keeps freed memory for reuse (neox.train.speed)
    fused_head_loss: bool = resumable(True)  # output head + cross entropy chunk by chunk (neox.model.head_loss)
    # options of current bases (docs/converters.md, "Base models"); the defaults are Llama 2's
    head_dim: int  # derived when not given: hidden_size / num_attention_heads (Mistral-Nemo sets 128)
    qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2)
    tie_word_embeddings: bool = False  # output head = input embedding, one parameter (Llama 3.2 1B/3B)
    # RoPE frequency scaling as Hugging Face writes it: {rope_type: linear, factor} or
    # {rope_type: llama3, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings}
    rope_scaling: Optional[dict] = None
    hf_model_type: Optional[str] = None  # the Hugging Face family an export writes (None: llama)
    # options of the 2025-26 bases (Qwen3, OLMo 2, Gemma 3); the defaults are Llama's
    qk_norm: Optional[str] = None  # RMSNorm of queries and keys before RoPE: per_head (Qwen3, Gemma 3) | full_width (OLMo 2)
    sublayer_norms: str = "pre"  # pre (Llama) | post (OLMo 2: after each sublayer's output) | pre_and_post (Gemma 3)
    apply_layernorm_1p: bool = False  # norms multiply by (1 + weight), weights centred at 0 (Gemma; Megatron's key)
    scale_embeddings: bool = False  # embeddings multiplied by sqrt(hidden_size) (Gemma)
    mlp_activation: str = "silu"  # the gated MLP's activation: silu (SwiGLU) | gelu_tanh (Gemma's GeGLU)
    query_pre_attn_scalar: Optional[float] = None  # attention scores scaled by its -1/2 power (None: head_dim's)
    sliding_window: Optional[int] = None  # sliding layers attend to the last sliding_window positions, their own included
    sliding_window_pattern: Optional[int] = None  # every N-th layer (N-1, 2N-1, ...) attends fully; None: every layer slides
    rotary_emb_base_local: Optional[float] = None  # RoPE base of the sliding layers (Gemma 3: 10,000); None: rotary_emb_base
    # packed documents (GPT-NeoX's keys): an EOD token ends a document inside a sequence
    reset_attention_mask: bool = resumable(False)  # attention stays within each document (block-causal)
    reset_position_ids: bool = resumable(False)  # RoPE positions restart at 0 after each EOD
    eod_mask_loss: bool = resumable(False)  # no loss where the input token is the EOD (predicting the next document)

    def check(self) -> None:
        _positive(self, "num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "intermediate_size",
                  "seq_length", "max_position_embeddings", "rotary_emb_base", "vocab_size",
                  "make_vocab_size_divisible_by", "rms_norm_epsilon")
        _finite(self, "rms_norm_epsilon", "init_method_std", "rotary_emb_base")
        _positive(self, "init_method_std")
        if self.seq_length > self.max_position_embeddings:
            raise ConfigError(f"key 'seq_length' ({self.seq_length}) exceeds 'max_position_embeddings' "
                              f"({self.max_position_embeddings})")
        if self.norm != "rmsnorm":
            raise ConfigError(f"key 'norm' must be 'rmsnorm' (Llama), got '{self.norm}'")
        if self.attention_impl not in ("auto", "sdpa", "flash"):
            raise ConfigError(f"key 'attention_impl' must be auto, sdpa or flash, got '{self.attention_impl}'")
        self._check_checkpoint_layers()
        self._check_recompute()
        _positive(self, "head_dim")
        try:
            check_rope_scaling(self.rope_scaling)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.num_attention_heads % self.num_kv_heads:
            raise ConfigError(f"key 'num_attention_heads' ({self.num_attention_heads}) must be divisible "
                              f"by 'num_kv_heads' ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"key 'head_dim' ({self.head_dim}) must be even for rotary embeddings")
        self._check_base_options()

    def _check_base_options(self) -> None:
        for key, allowed in (("qk_norm", (None, "per_head", "full_width")),
                             ("sublayer_norms", ("pre", "post", "pre_and_post")),
                             ("mlp_activation", ("silu", "gelu_tanh"))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"key '{key}' must be one of {', '.join(str(a) for a in allowed)}, "
                                  f"got {getattr(self, key)!r}")
        _positive(self, "query_pre_attn_scalar", "sliding_window", "sliding_window_pattern", "rotary_emb_base_local")
        _finite(self, "query_pre_attn_scalar", "rotary_emb_base_local")
        if self.sliding_window is None:
            for key in ("sliding_window_pattern", "rotary_emb_base_local"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"key '{key}' ({getattr(self, key)}) is set but 'sliding_window' is not; "
                                      "it applies to the sliding-window layers only")

    def sliding_layers(self) -> list[int]:
        """Indices of the layers with sliding-window attention (the others attend to every earlier position)."""
        return sliding_layers(self.num_layers, self.sliding_window, self.sliding_window_pattern)

    def _check_checkpoint_layers(self) -> None:
        layers = self.checkpoint_layers
        if layers is None:
            return
        if not self.checkpoint_activations:
            raise ConfigError(f"key 'checkpoint_layers' ({layers}) is set but 'checkpoint_activations' is "
                              "false; set checkpoint_activations: true to checkpoint these layers")
        bad = [x for x in layers if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < self.num_layers]
        if bad or not layers or len(set(layers)) != len(layers):
            raise ConfigError(f"key 'checkpoint_layers' must be a non-empty list of distinct layer indices in "
                              f"0..{self.num_layers - 1} (num_layers is {self.num_layers}), got {layers!r}")

    def _check_recompute(self) -> None:
        g, modules = self.recompute_granularity, self.recompute_modules
        if g not in (None, "full", "selective"):
            raise ConfigError(f"key 'recompute_granularity' must be full or selective, got {g!r}")
        if g == "selective" and self.checkpoint_activations:
            raise ConfigError("keys 'recompute_granularity: selective' and 'checkpoint_activations: true' (every "
                              "layer recomputed whole) exclude each other: choose one")
        if modules is not None:
            if g != "selective":
                raise ConfigError("key 'recompute_modules' is set but 'recompute_granularity' is not selective")
            bad = [x for x in modules if x not in RECOMPUTE_MODULES]
            if bad or not modules:
                raise ConfigError(f"key 'recompute_modules' must list some of {', '.join(RECOMPUTE_MODULES)}, "
                                  f"got {modules!r}")

    def selective_recompute(self) -> list:
        """The modules recomputed in backward under recompute_granularity: selective (default core_attn)."""
        if self.recompute_granularity != "selective":
            return []
        return list(self.recompute_modules or ["core_attn"])

    def checkpointed_layers(self) -> list:
        """Indices of the layers whose activations are recomputed in backward (whole layers)."""
        if not (self.checkpoint_activations or self.recompute_granularity == "full"):
            return []
        if self.checkpoint_layers is None:
            return list(range(self.num_layers))
        return sorted(self.checkpoint_layers)


@dataclass(frozen=True, kw_only=True)
class ParallelArgs(_Section):
    model_parallel_size: int = resumable(1, reshard=True)  # tensor parallel size
    # activations outside the TP regions (norms, residual stream) split along the sequence over the
    # TP ranks (megatron-core's mechanism; GPT-NeoX's key); same numbers, less activation memory
    sequence_parallel: bool = resumable(False)
    pipe_parallel_size: int = 0  # accepted for GPT-NeoX compatibility; only 0 or 1 supported
    num_gpus: int = resumable(1)  # processes started on this node
    num_nodes: int = resumable(1)
    launcher: str = resumable("local")
    master_port: Optional[int] = resumable(None)
    distributed_timeout_minutes: int = resumable(10)  # every process group: a collective waits this long, then fails

    def check(self) -> None:
        _positive(self, "model_parallel_size", "num_gpus", "num_nodes", "distributed_timeout_minutes")
        if self.pipe_parallel_size < 0:
            raise ConfigError(f"key 'pipe_parallel_size' must be 0 or 1, got {self.pipe_parallel_size}")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise ConfigError(f"key 'master_port' must be a TCP port (1..65535), got {self.master_port}")
        if self.pipe_parallel_size > 1:
            raise ConfigError(f"key 'pipe_parallel_size' ({self.pipe_parallel_size}) is not supported; "
                              "use 0 or 1 (Llemma used tensor parallelism only)")
        if self.launcher not in ("local", "slurm"):
            raise ConfigError(f"key 'launcher' must be 'local' or 'slurm', got '{self.launcher}'")


@dataclass(frozen=True, kw_only=True)
class BatchArgs(_Section):
    train_micro_batch_size_per_gpu: int = resumable()
    gradient_accumulation_steps: int = resumable()  # derived when not given (global / micro / data parallel)
    train_batch_size: int  # global batch, in sequences; derived when not given (micro x accumulation x DP)

    def check(self) -> None:
        _positive(self, "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


@dataclass(frozen=True, kw_only=True)
class OptimizerArgs(_Section):
    optimizer: dict = field(
        default_factory=lambda: {
            "type": "AdamW",
            "params": {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8},
        }
    )
    weight_decay: float = 0.1
    gradient_clipping: float = 1.0
    # stage 1 or 2 (and DeepSpeed's bucket keys); a resume may change it (neox.checkpoint.reshard)
    zero_optimization: dict = resumable(reshard=True, factory=lambda: {"stage": 1})
    precision: str = "bf16"  # bf16 | fp32

    def resolved(self) -> OptimizerArgs:
        """With the optimizer's numbers as floats, its type and eps filled, precision's one spelling."""
        opt = copy.deepcopy(self.optimizer)
        if not isinstance(opt.get("params"), dict) or "lr" not in opt["params"]:
            raise ConfigError("key 'optimizer' needs params.lr (e.g. optimizer: {type: AdamW, params: {lr: 1e-4}})")
        if str(opt.get("type", "AdamW")).lower() not in ("adam", "adamw"):
            raise ConfigError(f"key 'optimizer.type' must be Adam or AdamW, got '{opt.get('type')}'")
        unknown = set(opt["params"]) - {"lr", "betas", "eps"}
        if unknown:
            raise ConfigError(f"key 'optimizer.params' has unsupported entries {sorted(unknown)}")
        params = opt["params"]
        params["lr"] = _coerce("optimizer.params.lr", params["lr"], float)
        params["eps"] = _coerce("optimizer.params.eps", params.get("eps", 1e-8), float)
        betas = params.get("betas", [0.9, 0.95])
        if not (isinstance(betas, list) and len(betas) == 2):
            raise ConfigError(f"key 'optimizer.params.betas' must be a list of two floats, got {betas!r}")
        params["betas"] = [_coerce("optimizer.params.betas", x, float) for x in betas]
        opt.setdefault("type", "AdamW")
        if not params["lr"] > 0 or not math.isfinite(params["lr"]):
            raise ConfigError(f"key 'optimizer.params.lr' must be positive, got {params['lr']}")
        if not all(math.isfinite(x) for x in [params["eps"], *params["betas"]]):
            raise ConfigError(f"key 'optimizer.params' must hold finite numbers, got {params!r}")
        precision = PRECISIONS.get(str(self.precision).lower())
        if precision is None:
            raise ConfigError(f"key 'precision' must be bf16 or fp32, got '{self.precision}'")
        stage = self.zero_optimization.get("stage", 0)
        if stage == 3:
            raise ConfigError("key 'zero_optimization.stage' = 3 is not supported: stage 3 shards the weights "
                              "themselves over data parallel, which this trainer's tensor-parallel layers are not "
                              "checked against; use stage 2 (gradients and optimizer states sharded) with "
                              "model_parallel_size and sequence_parallel")
        if stage not in (0, 1, 2):
            raise ConfigError(f"key 'zero_optimization.stage' must be 0, 1 or 2, got {stage!r}")
        _gpt_neox_call(check_zero_optimization, self.zero_optimization)
        _finite(self, "gradient_clipping", "weight_decay")
        if self.gradient_clipping < 0 or self.weight_decay < 0:
            raise ConfigError("keys 'gradient_clipping' and 'weight_decay' must be >= 0")
        return dataclasses.replace(self, optimizer=opt, precision=precision)


WSD_STYLES = ("linear", "cosine", "exponential", "minus_sqrt")  # neox.train.lr_schedule.WSD_SHAPES


@dataclass(frozen=True, kw_only=True)
class ScheduleArgs(_Section):
    train_iters: int = resumable()
    lr_decay_style: str = "cosine"
    lr_decay_iters: int  # derived when not given: train_iters
    warmup_iters: int = 0
    min_lr: float = 0.0
    # warmup-stable-decay (lr_decay_style: wsd, Megatron's names): the peak until the last
    # lr_wsd_decay_iters steps before lr_decay_iters (or that fraction of lr_decay_iters), then down to min_lr
    lr_wsd_decay_style: str = "linear"  # linear | cosine | exponential | minus_sqrt
    lr_wsd_decay_iters: Optional[int] = None
    lr_wsd_decay_fraction: Optional[float] = None

    def check(self) -> None:
        _positive(self, "train_iters", "lr_decay_iters")
        _finite(self, "min_lr")
        if self.lr_decay_style not in ("cosine", "linear", "constant", "wsd"):
            raise ConfigError(f"key 'lr_decay_style' must be cosine, linear, constant or wsd, got "
                              f"'{self.lr_decay_style}'")
        self._check_wsd()
        if self.min_lr < 0 or self.warmup_iters < 0:
            raise ConfigError("keys 'min_lr' and 'warmup_iters' must be >= 0")
        if self.warmup_iters >= self.lr_decay_iters:
            raise ConfigError(f"key 'warmup_iters' ({self.warmup_iters}) must be < 'lr_decay_iters' "
                              f"({self.lr_decay_iters})")

    def _check_wsd(self) -> None:
        wsd_keys = [k for k in ("lr_wsd_decay_iters", "lr_wsd_decay_fraction") if getattr(self, k) is not None]
        if self.lr_decay_style != "wsd":
            if wsd_keys:
                raise ConfigError(f"key '{wsd_keys[0]}' is set but 'lr_decay_style' is '{self.lr_decay_style}', not wsd")
            return
        if self.lr_wsd_decay_style not in WSD_STYLES:
            raise ConfigError(f"key 'lr_wsd_decay_style' must be one of {', '.join(WSD_STYLES)}, got "
                              f"'{self.lr_wsd_decay_style}'")
        fraction = self.lr_wsd_decay_fraction
        if not wsd_keys:
            raise ConfigError("lr_decay_style wsd needs 'lr_wsd_decay_iters' (steps) or 'lr_wsd_decay_fraction' "
                              "(of lr_decay_iters): the length of the decay")
        if fraction is not None and not 0 < fraction <= 1:
            raise ConfigError(f"key 'lr_wsd_decay_fraction' must be in (0, 1], got {fraction}")
        if len(wsd_keys) == 2 and self.lr_wsd_decay_iters != round(fraction * self.lr_decay_iters):  # type: ignore[operator]
            raise ConfigError(f"keys 'lr_wsd_decay_iters' ({self.lr_wsd_decay_iters}) and 'lr_wsd_decay_fraction' "
                              f"({fraction} of {self.lr_decay_iters}) disagree: give one")
        iters = self.wsd_decay_iters()
        if not 0 < iters <= self.lr_decay_iters - self.warmup_iters:
            raise ConfigError(f"key 'lr_wsd_decay_iters' ({iters}) must be positive and at most lr_decay_iters - "
                              f"warmup_iters ({self.lr_decay_iters - self.warmup_iters}): the decay follows the warmup")

    def wsd_decay_iters(self) -> int:
        """The WSD decay's length in steps (from the fraction when that is what was given)."""
        if self.lr_wsd_decay_iters is not None:
            return self.lr_wsd_decay_iters
        return round((self.lr_wsd_decay_fraction or 0.0) * self.lr_decay_iters)

    def resolved(self) -> ScheduleArgs:
        self.check()
        if self.lr_decay_style == "wsd":
            return dataclasses.replace(self, lr_wsd_decay_iters=self.wsd_decay_iters())
        return self


@dataclass(frozen=True, kw_only=True)
class DataArgs(_Section):
    train_data_paths: list = field(default_factory=list)
    train_data_weights: Optional[list] = None
    valid_data_paths: list = field(default_factory=list)
    test_data_paths: list = field(default_factory=list)
    vocab_file: Optional[str] = None  # SentencePiece tokenizer.model or Hugging Face tokenizer.json
    tokenizer_type: str = "SPMTokenizer"
    data_cache_dir: Optional[str] = resumable(None)  # where sample-index caches go (None: beside the data)
    data_without_manifest: bool = resumable(False)  # data with no preprocessing manifest: tokenizer not checked
    # the mixture by phase: [{after_step: N, weights: [...]}, ...]: from batch N on these weights
    # replace train_data_weights (each component continues where the previous phase left it)
    data_phases: Optional[list] = None

    def resolved(self) -> DataArgs:
        """With train_data_weights (and the phases' weights) as floats."""
        if not self.train_data_paths:
            raise ConfigError("key 'train_data_paths' is required (tokenized .bin/.idx prefixes)")
        weights = None
        if self.train_data_weights is not None:
            weights = self._weights("train_data_weights", self.train_data_weights)
        if self.tokenizer_type not in ("SPMTokenizer", "SentencePieceTokenizer", "HFTokenizer"):
            raise ConfigError(f"key 'tokenizer_type' must be SPMTokenizer (a SentencePiece .model) or HFTokenizer "
                              f"(a tokenizer.json), got '{self.tokenizer_type}'")
        if self.vocab_file and os.path.isfile(self.vocab_file):
            found = kind_of_file(self.vocab_file)
            if KINDS[self.tokenizer_type] != found:
                raise ConfigError(f"key 'vocab_file': {self.vocab_file} is a "
                                  f"{'tokenizer.json' if found == HF else 'SentencePiece model'}, but tokenizer_type "
                                  f"is {self.tokenizer_type} (use {found})")
        return dataclasses.replace(self, train_data_weights=weights, data_phases=self._phases())

    def _weights(self, key: str, given: Any) -> list[float]:
        if not isinstance(given, list) or len(given) != len(self.train_data_paths):
            raise ConfigError(f"key '{key}' has {len(given) if isinstance(given, list) else given!r} entries "
                              f"but 'train_data_paths' has {len(self.train_data_paths)}")
        weights = [_coerce(key, w, float) for w in given]
        if any(not (w >= 0 and math.isfinite(w)) for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"key '{key}' must be non-negative with a positive sum")
        return weights

    def _phases(self) -> Optional[list]:
        if self.data_phases is None:
            return None
        phases, last = [], 0
        for i, phase in enumerate(self.data_phases):
            if not isinstance(phase, dict) or set(phase) != {"after_step", "weights"}:
                raise ConfigError(f"key 'data_phases[{i}]' must be {{after_step: N, weights: [...]}}, got {phase!r}")
            after = _coerce(f"data_phases[{i}].after_step", phase["after_step"], int)
            if after <= last:
                raise ConfigError(f"key 'data_phases[{i}].after_step' ({after}) must be positive and later than the "
                                  f"previous phase's ({last})")
            phases.append({"after_step": after, "weights": self._weights(f"data_phases[{i}].weights", phase["weights"])})
            last = after
        return phases


@dataclass(frozen=True, kw_only=True)
class CheckpointArgs(_Section):
    save: Optional[str] = resumable(None)
    load: Optional[str] = resumable(None)
    checkpoint_factor: Optional[int] = resumable(None)  # save every N steps (and at the end)
    finetune: bool = resumable(False)  # load weights only: step 0, fresh optimizer and data position
    keep_last_n_checkpoints: Optional[int] = resumable(None)  # None: keep all; never deletes the newest
    reference_loss_tolerance: float = resumable(1e-3)  # guarded start: |loss - converter's loss| allowed
    eval_after_checkpoint: Optional[str] = resumable(None)  # shell command started after each complete checkpoint
    save_lock_stale_minutes: float = resumable(30.0)  # a lock of another host not refreshed this long is stale
    load_step: Optional[int] = resumable(None)  # which complete step of `load` to start from (None: its latest)
    # a branch of the run in `load` (an anneal): its own schedule and data mixture from that step on,
    # weights, optimizer, step and RNG from the checkpoint; `load` is only read
    anneal: bool = resumable(False)

    def check(self) -> None:
        _finite(self, "reference_loss_tolerance")
        if self.reference_loss_tolerance < 0:
            raise ConfigError(f"key 'reference_loss_tolerance' must be >= 0, got {self.reference_loss_tolerance}")
        _positive(self, "save_lock_stale_minutes")
        _finite(self, "save_lock_stale_minutes")
        if self.eval_after_checkpoint:
            try:
                check_command(self.eval_after_checkpoint)
            except ValueError as e:
                raise ConfigError(f"key {e}") from None
        if self.keep_last_n_checkpoints is not None and self.keep_last_n_checkpoints < 1:
            raise ConfigError(f"key 'keep_last_n_checkpoints' must be >= 1, got {self.keep_last_n_checkpoints}")
        if self.checkpoint_factor is not None and self.checkpoint_factor <= 0:
            raise ConfigError(f"key 'checkpoint_factor' must be positive, got {self.checkpoint_factor}")
        if self.finetune and not self.load:
            raise ConfigError("key 'finetune' is true but 'load' is not set (which checkpoint to start from?)")
        for key in ("load_step", "anneal"):
            if getattr(self, key) not in (None, False) and (not self.load or self.finetune):
                raise ConfigError(f"key '{key}' needs 'load' (a run's save directory) without 'finetune': it starts "
                                  "from that run's checkpoint, optimizer state included")
        if self.anneal and self.save and self.load and os.path.abspath(self.save) == os.path.abspath(self.load):
            raise ConfigError(f"key 'anneal': 'save' must be another directory than 'load' ({self.load}): the "
                              "source run is never written")
        if self.load_step is not None and self.load_step < 1:
            raise ConfigError(f"key 'load_step' must be a positive step, got {self.load_step}")


@dataclass(frozen=True, kw_only=True)
class LoggingArgs(_Section):
    log_dir: str = resumable("logs")
    log_interval: int = resumable(1)
    eval_interval: Optional[int] = resumable(None)
    eval_iters: int = resumable(0)
    use_wandb: bool = resumable(False)
    wandb_project: str = resumable("llemma-neox")
    wandb_group: Optional[str] = resumable(None)
    wandb_entity: Optional[str] = resumable(None)  # GPT-NeoX's wandb_team
    use_tensorboard: bool = resumable(False)
    peak_flops_per_gpu: float = resumable(312e12)  # A100 bf16 dense peak, for MFU

    def check(self) -> None:
        _positive(self, "log_interval", "peak_flops_per_gpu")
        _finite(self, "peak_flops_per_gpu")
        if self.eval_interval is not None and self.eval_interval <= 0:
            raise ConfigError(f"key 'eval_interval' must be positive, got {self.eval_interval}")
        if self.eval_iters < 0:
            raise ConfigError(f"key 'eval_iters' must be >= 0, got {self.eval_iters}")


@dataclass(frozen=True, kw_only=True)
class PlannerArgs(_Section):
    gpu_memory_gib: float = resumable(40.0)  # A100-40GB, as Llemma; a plan above it is an error
    planner_mfu: float = resumable(0.35)  # for the GPU-hours estimate of --dry-run

    def check(self) -> None:
        _finite(self, "gpu_memory_gib", "planner_mfu")
        _positive(self, "gpu_memory_gib")
        if not 0 < self.planner_mfu <= 1:
            raise ConfigError(f"key 'planner_mfu' must be in (0, 1], got {self.planner_mfu}")


@dataclass(frozen=True, kw_only=True)
class GuardArgs(_Section):
    """NaN / loss-spike guard (neox.train.guard). A non-finite loss or gradient norm skips the update;
    a spike or a run of bad steps rolls back to the last complete checkpoint."""
    loss_spike_std_factor: float = 6.0  # spike: loss > running mean + k * std (0 disables)
    loss_spike_window: int = 100  # steps in the running mean and std
    loss_spike_min_history: int = 50  # no spike test before this many good steps
    max_bad_steps_in_a_row: int = 3  # this many skipped steps in a row also roll back
    max_rollbacks: int = 5  # one more rollback stops the run with an error
    watchdog_min_seconds: float = resumable(300.0)  # a step may take max(5 x median step time, this) (neox.launch.watchdog)
    watchdog_first_step_seconds: float = resumable(1800.0)  # setup and the first step; each checkpoint and evaluation

    def check(self) -> None:
        _positive(self, "loss_spike_window", "loss_spike_min_history", "max_bad_steps_in_a_row",
                  "watchdog_min_seconds", "watchdog_first_step_seconds")
        _finite(self, "watchdog_min_seconds", "watchdog_first_step_seconds")
        _finite(self, "loss_spike_std_factor")
        if self.loss_spike_std_factor < 0 or self.max_rollbacks < 0:
            raise ConfigError("keys 'loss_spike_std_factor' and 'max_rollbacks' must be >= 0")


@dataclass(frozen=True, kw_only=True)
class MiscArgs(_Section):
    seed: int = 1234

    def check(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"key 'seed' must be >= 0, got {self.seed}")


SECTIONS = {
    "model": ModelArgs,
    "parallel": ParallelArgs,
    "batch": BatchArgs,
    "optim": OptimizerArgs,
    "schedule": ScheduleArgs,
    "data": DataArgs,
    "checkpoint": CheckpointArgs,
    "logging": LoggingArgs,
    "planner": PlannerArgs,
    "guard": GuardArgs,
    "misc": MiscArgs,
}

KEY_TO_SECTION = {f.name: sec for sec, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
# Keys a resume may change (declared on the fields with resumable()); any other key that differs from
# the checkpoint's config is refused. The layout keys may change where neox.checkpoint.reshard can
# reshard the state.
RESUME_MAY_CHANGE = frozenset(f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)
                              if f.metadata.get(RESUME) is True)
LAYOUT_KEYS = frozenset(f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)
                        if f.metadata.get(RESUME) == "reshard")
REQUIRED = [
    "num_layers", "hidden_size", "num_attention_heads", "intermediate_size", "seq_length",
    "rotary_emb_base", "train_iters", "train_micro_batch_size_per_gpu",
]
REQUIRED_HINTS = {
    "rotary_emb_base": (" (GPT-NeoX would have used its default 10000 silently; Code Llama was trained at "
                        "1000000, Llemma 7B at 10000: say which)"),
    "intermediate_size": " (the MLP width; GPT-NeoX configs may give mlp_type: llama or activation: swiglu instead)",
}
# keys a config may leave out (or give as null) that are computed from others (with_derived)
DERIVED = ("num_kv_heads", "max_position_embeddings", "head_dim", "lr_decay_iters", "gradient_accumulation_steps",
           "train_batch_size")
PRECISIONS = {"bf16": "bf16", "bfloat16": "bf16", "fp32": "fp32", "float32": "fp32"}


def _positive_keys(flat: dict, *keys: str) -> None:
    for key in keys:
        value = flat[key]
        if not value > 0:  # `not > 0` also catches NaN
            raise ConfigError(f"key '{key}' must be positive, got {value}")


def with_derived(flat: dict) -> dict:
    """A config's keys (coerced) with the required ones checked and the DERIVED ones filled, so that
    every field of the config holds a value of its type."""
    for key in REQUIRED:
        if flat.get(key) is None:
            raise ConfigError(f"key '{key}' is required" + REQUIRED_HINTS.get(key, ""))
    out = {k: v for k, v in flat.items() if not (k in DERIVED and v is None)}
    _positive_keys(out, "hidden_size", "num_attention_heads", "seq_length", "train_iters",
                   "train_micro_batch_size_per_gpu")
    hidden, heads = out["hidden_size"], out["num_attention_heads"]
    if "head_dim" not in out and hidden % heads:
        raise ConfigError(f"key 'hidden_size' ({hidden}) must be divisible by 'num_attention_heads' ({heads}), "
                          "or set 'head_dim'")
    out.setdefault("num_kv_heads", heads)
    out.setdefault("max_position_embeddings", out["seq_length"])
    out.setdefault("head_dim", hidden // heads)
    out.setdefault("lr_decay_iters", out["train_iters"])
    out["gradient_accumulation_steps"], out["train_batch_size"] = _derived_batch(out)
    return out


def _derived_batch(flat: dict) -> tuple[int, int]:
    """Gradient accumulation and the global batch, one derived from the other (micro x accumulation x
    data parallel = global); checked whole by check_batch."""
    layout = {key: flat.get(key, _default_of(key)) for key in ("num_gpus", "num_nodes", "model_parallel_size")}
    _positive_keys(layout, *layout)
    # a GPU count that TP does not divide is refused by check_tensor_parallel, after the model's rules
    dp = max(1, layout["num_gpus"] * layout["num_nodes"] // layout["model_parallel_size"])
    micro = flat["train_micro_batch_size_per_gpu"]
    accum, total = flat.get("gradient_accumulation_steps"), flat.get("train_batch_size")
    if accum is None and total is None:
        accum = 1
    if total is None:
        assert accum is not None  # set above when neither key was given
        return accum, micro * accum * dp
    if accum is None:
        if total % (micro * dp) and layout["num_gpus"] % layout["model_parallel_size"] == 0:
            raise ConfigError(f"key 'train_batch_size' ({total}) is not divisible by "
                              f"train_micro_batch_size_per_gpu x data-parallel size ({micro} x {dp})")
        accum = max(1, total // (micro * dp))
    return accum, total


@dataclass(frozen=True, kw_only=True)
class NeoXConfig:
    model: ModelArgs
    parallel: ParallelArgs
    batch: BatchArgs
    optim: OptimizerArgs
    schedule: ScheduleArgs
    data: DataArgs
    checkpoint: CheckpointArgs
    logging: LoggingArgs
    planner: PlannerArgs
    guard: GuardArgs
    misc: MiscArgs
    warnings: list = field(default_factory=list)
    explicit: set = field(default_factory=set)  # keys the files and overrides set
    gpt_neox: dict = field(default_factory=dict)  # GPT-NeoX keys: {"translated": [...], "no_effect": [...]}

    # ---- conveniences used all over the trainer
    @property
    def lr(self) -> float:
        return float(self.optim.optimizer["params"]["lr"])

    @property
    def world_size(self) -> int:
        return self.parallel.num_gpus * self.parallel.num_nodes

    @property
    def data_parallel_size(self) -> int:
        return self.world_size // self.parallel.model_parallel_size

    @property
    def padded_vocab_size(self) -> Optional[int]:
        return padded_vocab_size(self.model.vocab_size, self.model.make_vocab_size_divisible_by,
                                 self.parallel.model_parallel_size)

    def to_flat(self) -> dict:
        """The resolved config as flat, underscored GPT-NeoX keys."""
        flat = {}
        for sec in SECTIONS:
            flat.update(dataclasses.asdict(getattr(self, sec)))
        return flat

    @classmethod
    def from_flat(cls, flat: dict) -> NeoXConfig:
        """The config of coerced flat keys, the DERIVED ones filled (validate() checks it whole)."""
        kwargs: dict[str, dict] = {sec: {} for sec in SECTIONS}
        for key, value in with_derived(flat).items():
            kwargs[KEY_TO_SECTION[key]][key] = value
        return cls(**{sec: SECTIONS[sec](**kw) for sec, kw in kwargs.items()}, explicit=set(flat))


@overload
def padded_vocab_size(vocab: int, divisible_by: int, tp: int) -> int: ...
@overload
def padded_vocab_size(vocab: None, divisible_by: int, tp: int) -> None: ...
@overload
def padded_vocab_size(vocab: Optional[int], divisible_by: int, tp: int) -> Optional[int]: ...
def padded_vocab_size(vocab: Optional[int], divisible_by: int, tp: int) -> Optional[int]:
    """Smallest size >= vocab that divides by divisible_by * tp (pad rows never get mass)."""
    if vocab is None:
        return None
    multiple = divisible_by * tp
    return int(math.ceil(vocab / multiple) * multiple)


# ----------------------------------------------------------------------------- loading


def normalize_key(key: str) -> str:
    return key.replace("-", "_")


def _normalize_tree(value):
    if isinstance(value, dict):
        return {normalize_key(str(k)): _normalize_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize_tree(v) for v in value]
    return value


def _unknown_key_error(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(KEY_TO_SECTION) + list(GPT_NEOX_KEYS), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown key '{key}' in {where}{hint}")


def _known(key: str) -> bool:
    return key in KEY_TO_SECTION or key in GPT_NEOX_KEYS


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last)."""


def _mapping_without_duplicates(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"{loader.name}: key '{key}' is set twice (lines {seen[key] + 1} and "
                              f"{key_node.start_mark.line + 1})")
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _read_yaml(path: str):
    try:
        with open(path) as f:
            loader = _StrictLoader(f)
            loader.name = path
            try:
                return loader.get_single_data()
            finally:
                loader.dispose()
    except yaml.YAMLError as e:
        # the context mark (e.g. the key whose ':' is missing) is the line to fix; the problem
        # mark is where the parser noticed, often the line after
        mark = getattr(e, "context_mark", None) or getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None


def load_yaml_files(paths: list[str]) -> tuple[dict, dict]:
    """Merge YAML files in order; a key set in two files is an error. Returns (flat, origin)."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for path in paths:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        data = _read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of keys to values")
        for raw_key, value in data.items():
            key = normalize_key(str(raw_key))
            if not _known(key):
                raise _unknown_key_error(key, path)
            if key in merged:
                raise ConfigError(f"key '{key}' is set in both {origin[key]} and {path}")
            merged[key] = _normalize_tree(value)
            origin[key] = path
    return merged, origin


def apply_overrides(flat: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` overrides; dotted keys reach into nested dicts."""
    flat = dict(flat)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        dotted, raw = item.split("=", 1)
        parts = [normalize_key(p) for p in dotted.strip().split(".")]
        if not _known(parts[0]):
            raise _unknown_key_error(parts[0], "-o overrides")
        value = _normalize_tree(yaml.safe_load(raw)) if raw.strip() else None
        if len(parts) == 1:
            flat[parts[0]] = value
            continue
        if parts[0] not in flat:  # start from the default of a nested key
            flat[parts[0]] = _default_of(parts[0])
        node = flat[parts[0]] = _deepcopy(flat[parts[0]])
        for p in parts[1:-1]:
            if not isinstance(node, dict):
                raise ConfigError(f"override '{dotted}': '{p}' is not inside a mapping")
            node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': parent is not a mapping")
        node[parts[-1]] = value
    return flat


def _deepcopy(v):
    return yaml.safe_load(yaml.safe_dump(v))


def _default_of(key: str):
    if key not in KEY_TO_SECTION:  # a GPT-NeoX block such as bf16.enabled
        return {}
    cls = SECTIONS[KEY_TO_SECTION[key]]
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# ----------------------------------------------------------------------------- types


def _type_name(tp) -> str:
    if tp == BoolOrAuto:
        return "true, false or auto"
    if get_origin(tp) is Literal:
        return " or ".join(map(str, get_args(tp)))
    return str(tp) if get_origin(tp) else tp.__name__


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """A YAML value as the field's type ``tp`` (from typing.get_type_hints: YAML reads '3e-4' as a
    string; an Optional field takes None, any other refuses it)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        rest = tuple(a for a in args if a is not type(None))
        return _coerce(key, value, rest[0] if len(rest) == 1 else Union[rest])
    if value is None:
        raise ConfigError(f"key '{key}' must not be empty")
    try:
        return _coerce_value(value, tp)
    except (TypeError, ValueError):
        raise ConfigError(f"key '{key}' must be {_type_name(tp)}, got {value!r}") from None


def _coerce_value(value: Any, tp: Any) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):  # the first member that takes the value (bool before "auto")
        for member in args:
            try:
                return _coerce_value(value, member)
            except (TypeError, ValueError):
                pass
        raise ValueError
    if origin is Literal:
        for allowed in args:
            if value == allowed or (isinstance(value, str) and value.lower() == str(allowed).lower()):
                return allowed
        raise ValueError
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError
        return value
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        if isinstance(value, str):
            value = float(value) if any(c in value for c in ".eE") else int(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError
        return str(value)
    if tp is list or origin is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ValueError
        return [_coerce_value(v, args[0]) for v in items] if args else items
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError
        return value
    raise TypeError(f"no coercion for {tp}")


def field_types(cls) -> dict[str, Any]:
    """A section's field types, resolved (the module uses postponed annotations)."""
    return get_type_hints(cls)


def _coerce_all(flat: dict) -> dict:
    """Every value as its field's type; a null required or derived key counts as not given."""
    return {key: _coerce(key, value, field_types(SECTIONS[KEY_TO_SECTION[key]])[key]) for key, value in flat.items()
            if not (value is None and (key in DERIVED or key in REQUIRED))}


# ----------------------------------------------------------------------------- validation


def _data_files(prefix: str) -> list[str]:
    return [prefix + ".bin", prefix + ".idx"]


def validate(cfg: NeoXConfig, dry_run: bool = False) -> NeoXConfig:
    """The resolved config: every rule that can be checked before spawning, checked; the derived
    values filled in a new, frozen config (normalised optimizer numbers and precision, mixture weights,
    the vocabulary size read from the tokenizer); the structural ones (KV heads, batch, decay length)
    are filled when the config is built (with_derived).

    Each section resolves its own keys (``resolved``); the rules that span sections follow. With
    dry_run, missing data/checkpoint/tokenizer files become warnings (so a 256-GPU config can be
    planned on a laptop); everything else is still an error.
    """
    cfg = dataclasses.replace(cfg, **{sec: getattr(cfg, sec).resolved() for sec in SECTIONS})
    check_tensor_parallel(cfg)
    check_batch(cfg)
    check_lr_range(cfg)
    check_files(cfg, dry_run)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=resolved_vocab_size(cfg)))
    check_memory(cfg)
    return cfg


# ----------------------------------------------------------------------------- rules across sections


def check_tensor_parallel(cfg: NeoXConfig) -> None:
    """Heads, KV heads, MLP width and the GPU count divide by the tensor-parallel size."""
    m, p = cfg.model, cfg.parallel
    tp = p.model_parallel_size
    for key in ("num_attention_heads", "num_kv_heads", "intermediate_size"):
        if getattr(m, key) % tp:
            raise ConfigError(f"key '{key}' ({getattr(m, key)}) must be divisible by 'model_parallel_size' ({tp})")
    if p.sequence_parallel and m.seq_length % tp:
        raise ConfigError(f"key 'sequence_parallel' needs 'seq_length' ({m.seq_length}) divisible by "
                          f"'model_parallel_size' ({tp}): each TP rank holds seq_length / {tp} positions")
    if p.sequence_parallel and tp == 1:
        cfg.warnings.append("sequence_parallel has no effect at model_parallel_size 1 (there is no TP group to "
                            "split the sequence over)")
    if p.num_gpus % tp:
        hint = ""
        if cfg.explicit and "num_gpus" not in cfg.explicit:
            hint = ("; num_gpus is not set: GPT-NeoX configs name no GPU count (GPT-NeoX took it from the "
                    "hostfile or Slurm): plan with -o num_gpus=8 -o num_nodes=32, or launch with slurm/")
        raise ConfigError(f"key 'num_gpus' ({p.num_gpus}) must be divisible by 'model_parallel_size' ({tp})" + hint)


def check_batch(cfg: NeoXConfig) -> None:
    """micro x accumulation x data parallel = global batch."""
    b, dp, tp = cfg.batch, cfg.data_parallel_size, cfg.parallel.model_parallel_size
    micro, accum, total = b.train_micro_batch_size_per_gpu, b.gradient_accumulation_steps, b.train_batch_size
    if micro * accum * dp != total:
        raise ConfigError(
            f"key 'train_batch_size' ({total}) != train_micro_batch_size_per_gpu "
            f"({micro}) x gradient_accumulation_steps ({accum}) x "
            f"data-parallel size ({dp} = {cfg.world_size} GPUs / TP {tp})")


def check_lr_range(cfg: NeoXConfig) -> None:
    if cfg.schedule.min_lr > cfg.lr:
        raise ConfigError(f"key 'min_lr' ({cfg.schedule.min_lr}) must be <= optimizer.params.lr ({cfg.lr})")


def check_files(cfg: NeoXConfig, dry_run: bool) -> None:
    """Data, tokenizer and the finetune checkpoint exist (warnings in a dry run)."""
    d, c = cfg.data, cfg.checkpoint
    missing = []
    for key in ("train_data_paths", "valid_data_paths", "test_data_paths"):
        for prefix in getattr(d, key):
            missing += [(key, f) for f in _data_files(prefix) if not os.path.isfile(f)]
    if d.vocab_file is None:
        if cfg.model.vocab_size is None:
            raise ConfigError("key 'vocab_file' is required (SentencePiece tokenizer.model or tokenizer.json)")
    elif not os.path.isfile(d.vocab_file):
        missing.append(("vocab_file", d.vocab_file))
    if c.load and c.finetune and not os.path.isfile(os.path.join(c.load, "latest")):
        missing.append(("load", os.path.join(c.load, "latest")))
    for key, path in missing:
        msg = f"key '{key}': file not found: {path}" + _missing_file_hint(key, path)
        if not dry_run:
            raise ConfigError(msg)
        cfg.warnings.append(msg)


def _missing_file_hint(key: str, path: str) -> str:
    if os.path.isabs(path):
        return ""
    hint = f" (relative to the current directory {os.getcwd()}"
    if os.path.normpath(path).startswith(os.path.join("data", "toy")):
        hint += "; the toy data is made by python tools/make_toy_data.py, run from the repository root"
    return hint + ")"


def resolved_vocab_size(cfg: NeoXConfig) -> Optional[int]:
    """vocab_size against the tokenizer's (read from it when not given); None when neither says."""
    m, d = cfg.model, cfg.data
    if d.vocab_file and os.path.isfile(d.vocab_file):
        try:
            found = tokenizer_vocab_size(d.vocab_file, d.tokenizer_type)
        except TokenizerError as e:
            if m.vocab_size is None:
                raise
            found = m.vocab_size
            cfg.warnings.append(f"{e}: vocab_size {m.vocab_size} not checked against it")
        if m.vocab_size is None:
            return found
        if m.vocab_size < found:
            raise ConfigError(f"key 'vocab_size' ({m.vocab_size}) is smaller than the vocabulary of vocab_file "
                              f"{d.vocab_file} ({found})")
        elif m.vocab_size > found:
            cfg.warnings.append(f"vocab_size {m.vocab_size} is larger than the tokenizer's {found} ({d.vocab_file}): "
                                "the extra rows are never used")
    return m.vocab_size


def check_memory(cfg: NeoXConfig) -> None:
    """The memory plan against the GPU."""
    if cfg.model.vocab_size is None:
        cfg.warnings.append("vocab size unknown (no tokenizer file and no vocab_size): memory plan skipped; "
                            "give -o vocab_size=N to plan (32016 for Code Llama 7B, 32000 for 34B)")
        return
    mem = memory_per_gpu(cfg)
    limit = cfg.planner.gpu_memory_gib
    if mem["total_gib"] > limit:
        fit = what_would_fit(cfg, limit)
        advice = (f"it would fit with {fit}" if fit else "no change of sequence_parallel, ZeRO stage, "
                  "checkpointing, micro batch or model_parallel_size fits it on this many GPUs: use more GPUs")
        raise ConfigError(f"plan needs {format_memory(mem)} but key 'gpu_memory_gib' is {limit:g}; {advice}")


def derived(cfg: NeoXConfig) -> dict:
    g = cfg.batch.train_batch_size
    return {
        "world_size": cfg.world_size,
        "data_parallel_size": cfg.data_parallel_size,
        "global_batch_size": g,
        "vocab_size": cfg.model.vocab_size,
        "padded_vocab_size": cfg.padded_vocab_size,
        **plan(cfg),
    }


def fit_to_cluster(cfg: NeoXConfig, num_nodes: int, gpus_per_node: int, dry_run: bool = False) -> NeoXConfig:
    """Re-plan for the GPUs actually allocated, keeping the global batch (4M tokens) exact.

    The micro batch stays as configured when it divides the per-rank share, else the largest
    micro batch below it that does; gradient accumulation makes up the rest."""
    flat = cfg.to_flat()
    tp, g = cfg.parallel.model_parallel_size, cfg.batch.train_batch_size
    world = num_nodes * gpus_per_node
    if world % tp:
        raise ConfigError(f"{world} GPUs do not divide by model_parallel_size {tp}")
    dp = world // tp
    if g % dp:
        raise ConfigError(f"train_batch_size {g} cannot be split over data-parallel size {dp} "
                          f"({world} GPUs / TP {tp}): {g * cfg.model.seq_length:,} tokens per step cannot "
                          "be kept exactly; use a GPU count whose data-parallel size divides it")
    per_rank = g // dp
    micro = max(m for m in range(1, min(cfg.batch.train_micro_batch_size_per_gpu, per_rank) + 1)
                if per_rank % m == 0)
    flat.update(num_nodes=num_nodes, num_gpus=gpus_per_node, train_micro_batch_size_per_gpu=micro,
                gradient_accumulation_steps=per_rank // micro, train_batch_size=g)
    return validate(NeoXConfig.from_flat(_coerce_all(flat)), dry_run=dry_run)


def load_config(paths: list[str], overrides: Sequence[str] = (), dry_run: bool = False,
                unset_defaults: Optional[dict] = None) -> NeoXConfig:
    """Load, merge, override, translate GPT-NeoX keys and validate. ``unset_defaults`` fills its
    keys when the files and overrides set none of them (train.py: the cluster it was started on; a
    config that names part of its cluster, num_gpus only, keeps the rest of its own defaults, and
    train.py fits it to the real cluster after validation)."""
    flat, _ = load_yaml_files(list(paths))
    flat = apply_overrides(flat, list(overrides))
    if unset_defaults and not any(key in flat for key in unset_defaults):
        flat.update(unset_defaults)
    cfg, gpt_neox = from_gpt_neox_flat(flat)
    return validate(dataclasses.replace(cfg, gpt_neox=gpt_neox), dry_run=dry_run)


def from_gpt_neox_flat(flat: dict) -> tuple[NeoXConfig, dict]:
    """Our config from keys that may include GPT-NeoX ones (``neox.config.gpt_neox_keys``), and what
    was translated or ignored, for the plan."""
    t = _gpt_neox_call(translate, flat, set(KEY_TO_SECTION))
    cfg = NeoXConfig.from_flat(_coerce_all(t.flat))
    return cfg, {"translated": t.notes, "no_effect": sorted(t.no_effect)}


def config_from_flat(flat: dict) -> NeoXConfig:
    """Rebuild a resolved config (e.g. the JSON deepy.py hands to train.py)."""
    unknown = [k for k in flat if k not in KEY_TO_SECTION]
    if unknown:
        raise _unknown_key_error(unknown[0], "resolved config")
    return NeoXConfig.from_flat(_coerce_all(flat))

