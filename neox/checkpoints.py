"""Reading and writing weights: Hugging Face directories (lazily) and trainer checkpoints.

Trainer checkpoint layout (GPT-NeoX / DeepSpeed):

    <dir>/latest                                   name of the newest complete tag
    <dir>/global_step<N>/mp_rank_<TT>_model_states.pt   {"module": weights of TP rank TT, ...}
    <dir>/global_step<N>/config.json               resolved trainer config (trained checkpoints)
    <dir>/neox_conversion.json                     metadata (converted checkpoints)

A converted base model is ``global_step0`` with no optimizer state; ``finetune: true`` loads it.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Optional

import torch

CONVERSION_FILE = "neox_conversion.json"


class CheckpointError(RuntimeError):
    """A problem with a checkpoint or model directory; the message names the file."""


# ----------------------------------------------------------------------------- Hugging Face input


class HFWeights:
    """Tensors of a Hugging Face model directory, read one at a time (safetensors are memory-mapped;
    a slice of a tensor is read without reading the rest)."""

    def __init__(self, hf_dir: str):
        self.dir = hf_dir
        if not os.path.isdir(hf_dir):
            raise CheckpointError(f"model directory not found: {hf_dir}")
        config_path = os.path.join(hf_dir, "config.json")
        if not os.path.isfile(config_path):
            raise CheckpointError(f"missing file: {config_path}")
        with open(config_path) as f:
            self.config = json.load(f)
        self._where = {}  # tensor name -> file
        self._open = {}
        st = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
        bins = sorted(glob.glob(os.path.join(hf_dir, "pytorch_model*.bin")))
        if st:
            from safetensors import safe_open

            for path in st:
                with safe_open(path, framework="pt") as f:
                    for name in f.keys():
                        self._where[name] = path
            self._kind = "safetensors"
        elif bins:
            for path in bins:
                for name in self._load_bin(path):
                    self._where[name] = path
            self._kind = "bin"
        else:
            raise CheckpointError(f"no *.safetensors or pytorch_model*.bin weights in {hf_dir}")

    def _load_bin(self, path):
        if path not in self._open:
            try:
                self._open[path] = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as e:
                raise CheckpointError(f"cannot read {path}: {e}") from None
        return self._open[path]

    def _handle(self, name):
        if name not in self._where:
            raise CheckpointError(f"tensor '{name}' not found in {self.dir}")
        path = self._where[name]
        if self._kind == "bin":
            return self._load_bin(path)
        if path not in self._open:
            from safetensors import safe_open

            self._open[path] = safe_open(path, framework="pt")
        return self._open[path]

    def names(self):
        return list(self._where)

    def shape(self, name) -> tuple:
        h = self._handle(name)
        if self._kind == "bin":
            return tuple(h[name].shape)
        return tuple(h.get_slice(name).get_shape())

    def get(self, name) -> torch.Tensor:
        h = self._handle(name)
        return h[name].clone() if self._kind == "bin" else h.get_tensor(name)

    def get_slice(self, name, dim: int, start: int, end: int) -> torch.Tensor:
        """Rows (dim 0) or columns (dim 1) [start, end) of a 2-D tensor."""
        h = self._handle(name)
        if self._kind == "bin":
            t = h[name]
            return (t[start:end] if dim == 0 else t[:, start:end]).clone()
        s = h.get_slice(name)
        return s[start:end] if dim == 0 else s[:, start:end]


# ----------------------------------------------------------------------------- trainer checkpoints


def model_file(ckpt_dir: str, tag: str, tp_rank: int) -> str:
    return os.path.join(ckpt_dir, tag, f"mp_rank_{tp_rank:02d}_model_states.pt")


def resolve_tag(ckpt_dir: str, step: Optional[int] = None) -> str:
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"checkpoint directory not found: {ckpt_dir}")
    if step is not None:
        tag = f"global_step{step}"
    else:
        latest = os.path.join(ckpt_dir, "latest")
        if not os.path.isfile(latest):
            raise CheckpointError(f"no 'latest' file in {ckpt_dir} (is it a trainer checkpoint?)")
        with open(latest) as f:
            tag = f.read().strip()
    if not os.path.isdir(os.path.join(ckpt_dir, tag)):
        raise CheckpointError(f"checkpoint {os.path.join(ckpt_dir, tag)} not found")
    return tag


def tensor_parallel_size(ckpt_dir: str, tag: str) -> int:
    files = glob.glob(os.path.join(ckpt_dir, tag, "mp_rank_*_model_states.pt"))
    ranks = sorted(int(re.search(r"mp_rank_(\d+)_", f).group(1)) for f in files)
    if not ranks or ranks != list(range(len(ranks))):
        raise CheckpointError(f"{os.path.join(ckpt_dir, tag)}: missing or incomplete mp_rank_*_model_states.pt files")
    return len(ranks)


def load_rank(ckpt_dir: str, tag: str, tp_rank: int, mmap: bool = True) -> dict:
    path = model_file(ckpt_dir, tag, tp_rank)
    if not os.path.isfile(path):
        raise CheckpointError(f"missing checkpoint file: {path}")
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint file {path}: {e}") from None


def weights_of(state: dict) -> dict:
    return {k: v for k, v in state["module"].items() if not k.endswith("_extra_state")}


def checkpoint_model_info(ckpt_dir: str, tag: str, state: dict) -> dict:
    """Model keys of a checkpoint: from a converter's metadata or a trained run's config."""
    if "neox_conversion" in state:
        return dict(state["neox_conversion"]["neox_model_keys"])
    if "neox_config" in state:
        return dict(state["neox_config"])
    path = os.path.join(ckpt_dir, tag, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    raise CheckpointError(f"{model_file(ckpt_dir, tag, 0)}: no model metadata (neox_conversion or neox_config)")


def load_finetune_weights(model, cfg):
    """``finetune: true``: this rank's weights from <load>/latest; nothing else is restored.

    Refuses, with the reason, a checkpoint written for another TP size, another model shape or
    another RoPE theta (re-convert with --rope-theta to change it)."""
    load = cfg.checkpoint.load
    tag = resolve_tag(load)
    tp = tensor_parallel_size(load, tag)
    if tp != cfg.parallel.model_parallel_size:
        raise CheckpointError(f"{os.path.join(load, tag)} is sharded for TP={tp} but model_parallel_size="
                              f"{cfg.parallel.model_parallel_size}; re-convert with --tp "
                              f"{cfg.parallel.model_parallel_size}")
    state = load_rank(load, tag, model.tp_rank)
    info = checkpoint_model_info(load, tag, state)
    theta = info.get("rotary_emb_base")
    if theta is not None and float(theta) != float(cfg.model.rotary_emb_base):
        raise CheckpointError(f"{load}: checkpoint rotary_emb_base {theta} != config rotary_emb_base "
                              f"{cfg.model.rotary_emb_base}; convert with --rope-theta to change it")
    weights = weights_of(state)
    own = model.weight_state()
    bad = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
           for k, v in own.items() if k in weights and weights[k].shape != v.shape]
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    if bad or missing or extra:
        detail = "; ".join(bad[:3] + [f"missing {m}" for m in missing[:3]] + [f"unexpected {e}" for e in extra[:3]])
        raise CheckpointError(f"{model_file(load, tag, model.tp_rank)} does not fit the configured model: {detail}")
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(weights[name].to(param.dtype))
    return info


def config_for_checkpoint(info: dict, tp: int, **overrides):
    """A validated trainer config for running a checkpoint's model (e.g. to verify or export)."""
    from neox.config import KEY_TO_SECTION, NeoXConfig, _coerce_all, validate

    flat = {k: v for k, v in info.items() if k in KEY_TO_SECTION and KEY_TO_SECTION[k] == "model"}
    flat.setdefault("seq_length", flat.get("max_position_embeddings") or 2048)
    flat.update(model_parallel_size=tp, num_gpus=tp, num_nodes=1, train_iters=1,
                train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, train_batch_size=None,
                train_data_paths=["unused"], precision="fp32", lr_decay_iters=None, warmup_iters=0,
                checkpoint_activations=False, **overrides)
    cfg = NeoXConfig.from_flat(_coerce_all(flat))
    return validate(cfg, dry_run=True)
