"""Resume a checkpoint at another parallel layout (TP and/or DP size), optimizer state included.

A checkpoint written at TP=2 x DP=1 can continue at TP=1 x DP=2, TP=1 x DP=1, and back. This
happens inside the resumed job, at load time; there is no offline conversion step and nothing
is written to disk.

1. Read the saved job's files: ``mp_rank_<TT>_model_states.pt`` (the shard shapes of every
   parameter, ``param_shapes``, and the client state: step, RNG) and every ZeRO optimizer file
   ``[bf16_]zero_pp_rank_<D>_mp_rank_<TT>_optim_states.pt`` (this DP rank's slice of the flat
   fp32 master weights and of Adam's ``exp_avg`` / ``exp_avg_sq``; ``param_slice_mappings``
   says where each parameter's fragment lies in it). Files are memory-mapped and tensors are
   rebuilt one parameter at a time, so memory holds about one full parameter, not the model.
2. For each parameter: the fragments of the saved DP ranks, in DP order, make the TP shard
   (the same order DeepSpeed's ZeRO partitioning uses); ``partition.unshard`` joins the TP shards
   into the full tensor; vocabulary rows beyond the real vocabulary are dropped (their padding
   depends on TP).
3. Cut this rank's shard for the new layout with ``hf_compat.shard_hf_weights`` (the same
   code that shards a Hugging Face model: re-pads the vocabulary, follows the table), and write
   the part this DP rank owns into DeepSpeed's ZeRO partition through the engine's
   own fragment mappings (``param._hp_mapping``, the path DeepSpeed's universal-checkpoint
   loader uses, working for the fp32 ZeRO-1 optimizer and the BF16_Optimizer alike). Then the
   optimizer copies the master weights into the module weights.

Why not DeepSpeed's universal checkpoint (``ds_to_universal`` + ``load_universal``): it does work
on these checkpoints for fp32 ZeRO-1 (TP=2 -> TP=1 x DP=2 gave the uninterrupted losses), but
it needed a patched copy of every model file (megatron-core's ``_extra_state`` entries are
``None`` and crash the converter), an offline pass writing two copies of the full fp32 + Adam
state to disk, and the TP layout restated as DeepSpeed's pattern lists, whose loader re-slices by
``chunk`` along one dimension. The layout is declared once, in ``neox.model.partition``; a fused,
rank-blocked weight there would be re-sliced wrongly, silently. Here only ``partition.shard`` /
``unshard`` decide where rows go, so any layout the table can express reshards correctly.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

import torch
from megatron.core import parallel_state as ps

from neox.checkpoint.files import CheckpointError, load_rank, tensor_parallel_size
from neox.config import ModelArgs, NeoXConfig
from neox.model import partition
from neox.model.hf_compat import shard_hf_weights

OPTIM_FILE = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def saved_layout(directory: str, tag: str) -> tuple[int, int | None]:
    """(TP size, DP size) a checkpoint was written at; DP is None without ZeRO optimizer files."""
    tp = tensor_parallel_size(directory, tag)
    files = glob.glob(os.path.join(directory, tag, "*_optim_states.pt"))
    dps = {int(m.group(1)) for m in map(OPTIM_FILE.search, map(os.path.basename, files)) if m}
    return tp, (max(dps) + 1 if dps else None)


def supported(cfg: NeoXConfig) -> bool:
    """Resharding rebuilds the state from ZeRO optimizer files (stage 1 or 2)."""
    return int(cfg.optim.zero_optimization.get("stage", 0)) in (1, 2)


def saved_stage(directory: str, tag: str) -> int | None:
    """The ZeRO stage a checkpoint was written with (its config.json), None if it does not say."""
    path = os.path.join(directory, tag, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return int((json.load(f).get("zero_optimization") or {}).get("stage", 0))


def needed(cfg: NeoXConfig, directory: str, tag: str) -> bool:
    """True when the checkpoint's layout differs from this job's in a way a plain load cannot take:
    another TP size, (with ZeRO) another DP size, or another ZeRO stage (stage 1 in bf16 keeps its
    state in DeepSpeed's BF16_Optimizer files, stage 2 in the ZeRO optimizer's)."""
    tp, dp = saved_layout(directory, tag)
    stage = saved_stage(directory, tag)
    return (tp != cfg.parallel.model_parallel_size or (dp is not None and dp != cfg.data_parallel_size)
            or (stage is not None and stage != int(cfg.optim.zero_optimization.get("stage", 0))))


class SavedState:
    """The full (unsharded, vocabulary unpadded) fp32 master weight and Adam moments of every
    parameter of a ZeRO checkpoint, read one parameter at a time from memory-mapped files."""

    def __init__(self, directory: str, tag: str, model_args: ModelArgs):
        self.path = os.path.join(directory, tag)
        assert model_args.vocab_size is not None, "a training run's vocab_size is set (validate() read it)"
        self.vocab_size = model_args.vocab_size
        self.dims = partition.sizes(model_args)
        self.tp, dp = saved_layout(directory, tag)
        if dp is None:
            raise CheckpointError(f"{self.path}: no ZeRO optimizer files (*zero_pp_rank_*_optim_states.pt); "
                                  "cannot reshard its optimizer state")
        self.dp = dp
        self.models = [load_rank(directory, tag, t) for t in range(self.tp)]
        self.optim = {}
        for f in glob.glob(os.path.join(self.path, "*_optim_states.pt")):
            m = OPTIM_FILE.search(os.path.basename(f))
            if m:
                try:
                    sd = torch.load(f, map_location="cpu", mmap=True, weights_only=False)
                except Exception as e:
                    raise CheckpointError(f"cannot read checkpoint file {f}: {e}") from None
                self.optim[int(m.group(1)), int(m.group(2))] = sd["optimizer_state_dict"]
        missing = [(d, t) for d in range(self.dp) for t in range(self.tp) if (d, t) not in self.optim]
        if missing:
            raise CheckpointError(f"{self.path}: missing ZeRO optimizer files for (dp, tp) ranks {missing}")
        # shard shape of every parameter on each TP rank; the optimizer group of every parameter
        self.shapes = [{n: s for group in model["param_shapes"] for n, s in group.items()} for model in self.models]
        first = self.optim[0, 0]
        self.group_of = {n: g for g, group in enumerate(self.models[0]["param_shapes"]) for n in group}
        if any("exp_avg" not in first["base_optimizer_state"]["state"].get(g, {})
               for g in range(len(self.models[0]["param_shapes"]))):
            raise CheckpointError(f"{self.path}: the optimizer state has no Adam moments (saved before any step?)")

    def _flat(self, sd: dict, key: str, group: int) -> torch.Tensor:
        if key == "fp32":
            return sd["single_partition_of_fp32_groups"][group]
        return sd["base_optimizer_state"]["state"][group][key]

    def full(self, name: str, key: str) -> dict:
        """Full HF tensor(s) of ``key`` ('fp32', 'exp_avg' or 'exp_avg_sq') for parameter ``name``,
        by HF name (a fused weight gives several)."""
        if name not in self.group_of:
            raise CheckpointError(f"{self.path}: parameter '{name}' is not in the checkpoint")
        g = self.group_of[name]
        shards = []
        for t in range(self.tp):
            pieces = []
            for d in range(self.dp):
                sd = self.optim[d, t]
                frag = sd["param_slice_mappings"][g].get(name)
                if frag is not None and frag.numel:
                    pieces.append(self._flat(sd, key, g).narrow(0, frag.start, frag.numel))
            shards.append(torch.cat(pieces).float().reshape(self.shapes[t][name]))
        parts = partition.unshard(shards, name, self.dims)
        return {hf: partition.strip_vocab(t, name, self.vocab_size) for hf, t in zip(partition.hf_names(name), parts)}

    def step(self, group: int) -> torch.Tensor | float:
        step = self.optim[0, 0]["base_optimizer_state"]["state"][group]["step"]
        return step.clone() if torch.is_tensor(step) else step

    def param_group(self, group: int) -> dict:
        return {k: v for k, v in self.optim[0, 0]["base_optimizer_state"]["param_groups"][group].items()
                if k != "params"}

    def client_state(self, tp_rank: int) -> dict:
        return self.models[tp_rank if tp_rank < self.tp else 0]


@torch.no_grad()
def load_resharded(engine: Any, cfg: NeoXConfig, directory: str, tag: str) -> dict:
    """Load master weights, Adam state and step counters of a checkpoint written at another
    layout into ``engine`` (already built for this job's layout). Returns the client state."""
    assert cfg.model.vocab_size is not None and cfg.padded_vocab_size is not None, \
        "a training run's vocab_size is set (validate() read it from the tokenizer)"
    saved = SavedState(directory, tag, cfg.model)
    opt = engine.optimizer  # DeepSpeed's ZeRO-1/2 optimizer or its BF16_Optimizer
    lp_groups = opt.bf16_groups if hasattr(opt, "bf16_groups") else opt.bit16_groups
    base = opt.optimizer  # the torch AdamW over this rank's flat fp32 partitions
    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    from deepspeed.utils.tensor_fragment import map_to_flat_opt_states

    for g, lps in enumerate(lp_groups):
        for lp in lps:
            name = opt.param_names[lp]
            if saved.group_of.get(name, g) != g:
                raise CheckpointError(f"{saved.path}: parameter '{name}' is in optimizer group "
                                      f"{saved.group_of[name]} there but in group {g} here")
            mapping = lp._hp_mapping
            if mapping is None:  # another DP rank owns all of this parameter
                continue
            mapping.optim_fragment = {}
            start, numel = mapping.lp_fragment_address.start, mapping.lp_fragment_address.numel
            for key in ("fp32",) + ADAM_KEYS:
                local = shard_hf_weights(saved.full(name, key), [name], cfg.model.vocab_size,
                                         cfg.padded_vocab_size, tp_rank, tp)[name]
                if local.shape != lp.shape:
                    raise CheckpointError(f"{saved.path}: '{name}' resharded to {tuple(local.shape)} but the "
                                          f"model holds {tuple(lp.shape)} on this rank")
                fragment = local.reshape(-1).narrow(0, start, numel)
                if key == "fp32":
                    mapping.get_hp_fragment().copy_(fragment)
                else:
                    mapping.optim_fragment[key] = fragment.clone()
        hp_param = base.param_groups[g]["params"][0]
        base.state[hp_param]["step"] = saved.step(g)
        map_to_flat_opt_states(hp_param, lps, base.state, ADAM_KEYS)
        base.param_groups[g].update(saved.param_group(g))
    opt.update_lp_params()  # master weights -> module weights, all-gathered over DP

    state = saved.client_state(tp_rank)
    engine.global_steps = state.get("global_steps", engine.global_steps)
    engine.global_samples = state.get("global_samples", engine.global_samples)
    engine.skipped_steps = state.get("skipped_steps", engine.skipped_steps)
    return {k: v for k, v in state.items() if k not in ("module", "optimizer", "param_shapes")}
