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
import sys
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch

from neox import exit_status
from neox.config import KEY_TO_SECTION, NeoXConfig, _coerce_all, validate
from neox.errors import NeoxError
from neox.model import partition

CONVERSION_FILE = "neox_conversion.json"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
TOKENIZER_FILES = ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


class CheckpointError(NeoxError, RuntimeError):
    """A problem with a checkpoint or model directory; the message names the file."""


# ----------------------------------------------------------------------------- Hugging Face input


_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
              "U8": torch.uint8, "BOOL": torch.bool}


class _SafetensorsFile:
    """Reads tensors (or row ranges) of a .safetensors file with plain file reads.

    The safetensors package memory-maps the file, and every page a converter touches then counts
    in its resident memory until the map is dropped: converting a 2 GB model took 3.4 GB of RSS.
    The format is an 8-byte header length, a JSON header of {name: dtype, shape, data_offsets},
    then raw little-endian data, so reading exactly the bytes needed is simple."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        self.base = 8 + n
        self.header = header

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple:
        return tuple(self.header[name]["shape"])

    def read_rows(self, name: str, start: int | None = None, end: int | None = None) -> torch.Tensor:
        info = self.header[name]
        if info["dtype"] not in _ST_DTYPES:
            raise CheckpointError(f"{self.path}: tensor '{name}' has unsupported dtype {info['dtype']}")
        dtype, shape = _ST_DTYPES[info["dtype"]], list(info["shape"])
        rows = shape[0] if shape else 1
        start, end = (0, rows) if start is None else (start, end)
        assert end is not None, "a row range is given with both ends"
        row_bytes = (info["data_offsets"][1] - info["data_offsets"][0]) // max(rows, 1)
        out = torch.empty([end - start] + shape[1:], dtype=dtype) if shape else torch.empty((), dtype=dtype)
        with open(self.path, "rb") as f:
            f.seek(self.base + info["data_offsets"][0] + start * row_bytes)
            buf = out.view(torch.uint8).reshape(-1).numpy() if out.numel() else None
            # numpy's stub gives ndarray __buffer__ only for Python >= 3.12; it is a buffer on every version
            if buf is not None and f.readinto(memoryview(buf)) != buf.nbytes:  # type: ignore[arg-type]
                raise CheckpointError(f"{self.path}: file is truncated (tensor '{name}')")
        return out


class HFWeights:
    """Tensors of a Hugging Face model directory, read one at a time and only the rows needed,
    so a converter holds one output shard plus one tensor, never the model."""

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
            for path in st:
                try:
                    self._open[path] = _SafetensorsFile(path)
                except (OSError, ValueError) as e:
                    raise CheckpointError(f"cannot read {path}: {e}") from None
                for name in self._open[path].keys():
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
        if path not in self._open:  # memory-mapped: tensors are read when touched
            try:
                self._open[path] = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as e:
                raise CheckpointError(f"cannot read {path}: {e}") from None
        return self._open[path]

    def _handle(self, name):
        if name not in self._where:
            raise CheckpointError(f"tensor '{name}' not found in {self.dir}")
        return self._open[self._where[name]]

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple:
        h = self._handle(name)
        return tuple(h[name].shape) if self._kind == "bin" else h.shape(name)

    def get(self, name: str) -> torch.Tensor:
        h = self._handle(name)
        return h[name].clone() if self._kind == "bin" else h.read_rows(name)

    def get_slice(self, name: str, dim: int, start: int, end: int) -> torch.Tensor:
        """Rows (dim 0) or columns (dim 1) [start, end) of a 2-D tensor."""
        h = self._handle(name)
        if self._kind == "bin":
            t = h[name]
            return (t[start:end] if dim == 0 else t[:, start:end]).clone()
        if dim == 0:
            return h.read_rows(name, start, end)
        return h.read_rows(name)[:, start:end].clone()


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


def _rank_of_file(path: str) -> int:
    m = re.search(r"mp_rank_(\d+)_", path)
    assert m is not None, f"{path}: not an mp_rank_<N>_model_states.pt file"
    return int(m.group(1))


def tensor_parallel_size(ckpt_dir: str, tag: str) -> int:
    files = glob.glob(os.path.join(ckpt_dir, tag, "mp_rank_*_model_states.pt"))
    ranks = sorted(_rank_of_file(f) for f in files)
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


def unfused_hint(names: Iterable[str]) -> str:
    """Explains a checkpoint written before q/k/v and gate/up were fused (empty if it is not one)."""
    if any(partition.is_unfused_part(n) for n in names):
        return (" (separate q/k/v or gate/up weights: the checkpoint predates fused qkv_proj/gate_up_proj; "
                "re-convert it from the Hugging Face model)")
    return ""


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


def open_checkpoint(ckpt_dir: str, step: Optional[int] = None) -> tuple[str, int, list[dict], dict]:
    """(tag, TP size, every TP rank's state memory-mapped and read lazily, model keys) of the
    checkpoint at ``step`` (default: ``latest``): what the exporters read."""
    tag = resolve_tag(ckpt_dir, step)
    tp = tensor_parallel_size(ckpt_dir, tag)
    ranks = [load_rank(ckpt_dir, tag, r) for r in range(tp)]
    return tag, tp, ranks, checkpoint_model_info(ckpt_dir, tag, ranks[0])


def load_finetune_weights(model: Any, cfg: NeoXConfig) -> dict | None:
    """``finetune: true``: this rank's weights from <load>/latest; nothing else is restored.

    Refuses, with the reason, a checkpoint written for another TP size, another model shape or
    another RoPE theta (re-convert with --rope-theta to change it)."""
    load = cfg.checkpoint.load
    assert load is not None, "finetune: validate() requires load"
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
        raise CheckpointError(f"{model_file(load, tag, model.tp_rank)} does not fit the configured model: "
                              f"{detail}{unfused_hint(extra)}")
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(weights[name].to(param.dtype))
    return state.get("neox_conversion")


def config_for_checkpoint(info: dict, tp: int, **overrides: Any) -> NeoXConfig:
    """A validated trainer config for running a checkpoint's model (e.g. to verify or export)."""

    flat = {k: v for k, v in info.items() if k in KEY_TO_SECTION and KEY_TO_SECTION[k] == "model"}
    flat.setdefault("seq_length", flat.get("max_position_embeddings") or 2048)
    flat.update(model_parallel_size=tp, num_gpus=tp, num_nodes=1, train_iters=1,
                train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, train_batch_size=None,
                train_data_paths=["unused"], precision="fp32", lr_decay_iters=None, warmup_iters=0,
                checkpoint_activations=False, checkpoint_layers=None, compile_blocks=False, **overrides)
    cfg = NeoXConfig.from_flat(_coerce_all(flat))
    return validate(cfg, dry_run=True)


def run_tool(fn: Callable[..., object], *args: Any) -> int:
    """Runs a tool's ``fn``: exit status 0, or FAILED with one `error:` line when it raises CheckpointError."""

    try:
        fn(*args)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_status.FAILED
    return exit_status.OK
