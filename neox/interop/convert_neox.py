#!/usr/bin/env python
"""GPT-NeoX Llama checkpoint -> trainer checkpoint sharded for tensor parallel (weights only).

    python tools/convert_neox.py --ckpt DIR [--step N] [--config YML ...] --out DIR --tp N
                                 [--layout per-head|llemma-gqa|per-rank] [--verify-hf HF_DIR]
                                 [--vocab-size V] [--rope-theta F] [--dtype auto|bf16|fp32] [--force]

Reads ``global_step<N>/mp_rank_<TT>_model_states.pt`` (``sequential.<i>.*`` keys,
pipe_parallel_size 0) or ``global_step<N>/layer_<ii>-model_<TT>-model_states.pt`` (pipeline
layouts), with the ``llemma`` branch's names (``mlp.w1/w2/w3``, ``attention.rotary_emb.inv_freq``)
or GPT-NeoX main's (``mlp.linear1`` = [up; gate]), at the TP size it was saved with; writes the
same format as tools/convert_codellama.py (``finetune: true`` with ``load: <out>``).

The model's sizes and RoPE theta come from the checkpoint's own config
(``global_step<N>/configs/*.yml``, or ``--config``). The fused query_key_value layout (see
neox/interop/gptneox_format.py) is read from the checkpoint where it says it, otherwise ``--layout`` must
name it. The layout is then checked on the model's function, before anything is written, against
every reference there is: the logits GPT-NeoX recorded in the checkpoint
(``checkpoint_validation_with_forward_pass``), the reference loss tools/export_neox.py records,
and a Hugging Face model given with ``--verify-hf``. A layout that fails a check is refused.
"""

import argparse
import glob
import os
import re
import sys
from collections.abc import Iterable, Sequence

import torch

from neox.checkpoint.files import CheckpointError, HFWeights, run_tool
from neox.config import padded_vocab_size
from neox.interop import gptneox_format as fmt
from neox.interop.convert_codellama import limit_heap_growth, write_checkpoint
from neox.interop.export_hf import hf_config
from neox.interop.publish import check_out
from neox.interop.reference import reference_tokens, streamed_hf_logits, streamed_hf_loss
from neox.model import partition
from neox.model.hf_compat import ShardedWeights

GPTNEOX_DEFAULT_THETA = 10000  # neox_args.py's rotary_emb_base default (both branches)
GPTNEOX_DEFAULT_RMS_EPS = 1.0e-8  # neox_args.py's rms_norm_epsilon default (both branches)


def _number(pattern: str, path: str) -> int:
    """The number a checkpoint file's name holds (group 1 of ``pattern``); the file was globbed by that name."""
    m = re.search(pattern, path)
    assert m is not None, f"{path}: no match for {pattern}"
    return int(m.group(1))


class NeoXCheckpoint:
    """One tag of a GPT-NeoX checkpoint: its rank files (read lazily, memory-mapped) and config."""

    def __init__(self, path: str, step: int | None = None, config_files: Iterable[str] = ()):
        self.dir = self._tag_dir(path, step)
        layer_files = glob.glob(os.path.join(self.dir, "layer_*-model_*-model_states.pt"))
        rank_files = glob.glob(os.path.join(self.dir, "mp_rank_*_model_states.pt"))
        self.pipeline = bool(layer_files)
        ranks = {_number(r"model_(\d+)-model_states", f) for f in layer_files} if layer_files \
            else {_number(r"mp_rank_(\d+)_", f) for f in rank_files}
        if not ranks or sorted(ranks) != list(range(len(ranks))):
            raise CheckpointError(f"{self.dir}: no complete set of mp_rank_*_model_states.pt or "
                                  f"layer_*-model_*-model_states.pt files")
        self.tp = len(ranks)
        self._loaded: dict[str, dict] = {}
        self.saved_config = sorted(glob.glob(os.path.join(self.dir, "configs", "*.yml")) +
                                   glob.glob(os.path.join(self.dir, "configs", "*.yaml")))
        self.config = read_configs(self.saved_config + list(config_files))

    @staticmethod
    def _tag_dir(path, step):
        if not os.path.isdir(path):
            raise CheckpointError(f"checkpoint directory not found: {path}")
        if step is not None:
            tag = f"global_step{step}"
        elif os.path.isfile(os.path.join(path, "latest")):
            with open(os.path.join(path, "latest")) as f:
                tag = f.read().strip()
        else:
            return path  # the global_step<N> directory itself
        if not os.path.isdir(os.path.join(path, tag)):
            raise CheckpointError(f"checkpoint {os.path.join(path, tag)} not found")
        return os.path.join(path, tag)

    def _load(self, path):
        if path not in self._loaded:
            if not os.path.isfile(path):
                raise CheckpointError(f"missing checkpoint file: {path}")
            try:
                self._loaded[path] = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
            except Exception as e:
                raise CheckpointError(f"cannot read checkpoint file {path}: {e}") from None
        return self._loaded[path]

    def rank_state(self, rank: int) -> dict:
        """mp_rank_<TT>_model_states.pt (client state; in the sequential layout also the weights)."""
        path = os.path.join(self.dir, f"mp_rank_{rank:02d}_model_states.pt")
        return self._load(path) if os.path.isfile(path) or not self.pipeline else {}

    def module(self, rank: int, index: int) -> dict:
        """Tensors of GPT-NeoX module ``index`` on TP rank ``rank``, by their module-local names."""
        if self.pipeline:
            return self._load(os.path.join(self.dir, f"layer_{index:02d}-model_{rank:02d}-model_states.pt"))
        prefix = f"sequential.{index}."
        return {k[len(prefix):]: v for k, v in self.rank_state(rank)["module"].items() if k.startswith(prefix)}

    def all_names(self) -> list[str]:
        if self.pipeline:
            files = sorted(glob.glob(os.path.join(self.dir, "layer_*-model_00-model_states.pt")))
            index = {f: _number(r"layer_(\d+)-", f) for f in files}
            return [f"{index[f]}.{k}" for f in files for k in self._load(f)]
        return [k[len("sequential."):] for k in self.rank_state(0)["module"]]

    def tensor(self, rank: int, index: int, name: str) -> torch.Tensor:
        module = self.module(rank, index)
        if name not in module:
            where = f"layer_{index:02d}-model_{rank:02d}" if self.pipeline else f"sequential.{index}"
            raise CheckpointError(f"{self.dir}: tensor '{where}.{name}' not found")
        return module[name]


def read_configs(paths: Iterable[str]) -> dict:
    """GPT-NeoX YAML files merged in order, keys with dashes spelled with underscores."""
    import yaml

    merged = {}
    for path in paths:
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as e:
            raise CheckpointError(f"cannot read config {path}: {e}") from None
        merged.update({k.replace("-", "_"): v for k, v in data.items()})
    return merged


# ----------------------------------------------------------------------------- model and layout


def refuse_unsupported(ckpt: NeoXCheckpoint) -> None:
    c = ckpt.config
    wanted = {"norm": "rmsnorm", "pos_emb": "rotary", "gpt_j_residual": False, "no_weight_tying": True,
              "use_qk_layernorm": False}
    for key, value in wanted.items():
        if key in c and c[key] != value:
            raise CheckpointError(f"config key '{key}: {c[key]}' is not supported (only {value})")
    if float(c.get("rotary_pct", 1)) != 1:
        raise CheckpointError(f"config key 'rotary_pct: {c['rotary_pct']}' is not supported (only 1)")
    if c.get("activation", "silu") not in ("silu", "swiglu"):
        raise CheckpointError(f"config key 'activation: {c['activation']}' is not supported (silu or swiglu)")
    biases = [n for n in ckpt.all_names() if n.endswith(".bias")]
    if biases:
        raise CheckpointError(f"{ckpt.dir}: bias tensors ({biases[0]}, ...) are not supported (Llama has none)")


def model_keys(ckpt: NeoXCheckpoint, args: argparse.Namespace) -> tuple[dict, str]:
    """Our model keys and the MLP naming style ('w123' or 'linear1'), from the config and shapes."""
    c = ckpt.config
    emb = ckpt.tensor(0, 0, "word_embeddings.weight")
    names = ckpt.all_names()
    layer_ids = {n.split(".")[0] for n in names if n.split(".", 1)[1] == "attention.query_key_value.weight"}
    num_layers = int(c.get("num_layers") or len(layer_ids))
    if len(layer_ids) != num_layers:
        raise CheckpointError(f"{ckpt.dir}: {len(layer_ids)} transformer layers in the files, num_layers {num_layers}")
    if "num_attention_heads" not in c:
        raise CheckpointError(f"{ckpt.dir}: no config with num_attention_heads (GPT-NeoX saves it in "
                              f"configs/; else pass the run's YAML with --config)")
    mlp = ckpt.module(0, fmt.module_index("layer", num_layers))
    style = "w123" if "mlp.w1.weight" in mlp else "linear1" if "mlp.linear1.weight" in mlp else None
    if style is None:
        raise CheckpointError(f"{ckpt.dir}: no mlp.w1/w2/w3 or mlp.linear1/linear2 weights (not a Llama MLP)")
    ffn = mlp["mlp.w1.weight"].shape[0] if style == "w123" else mlp["mlp.linear1.weight"].shape[0] // 2
    refuse_unknown_tensors(ckpt, names, num_layers, style)
    if fmt.module_index("head", num_layers) not in {int(n.split(".")[0]) for n in names}:
        raise CheckpointError(f"{ckpt.dir}: no final_linear (tied input/output embeddings are not supported)")
    heads = int(c["num_attention_heads"])
    keys = {
        "num_layers": num_layers, "hidden_size": emb.shape[1], "num_attention_heads": heads,
        "num_kv_heads": int(c.get("num_kv_heads") or heads), "intermediate_size": ffn * ckpt.tp,
        "max_position_embeddings": int(c.get("max_position_embeddings") or c.get("seq_length") or 0),
        "rotary_emb_base": rope_theta(ckpt, c, args, emb.shape[1] // heads, num_layers),
        "rms_norm_epsilon": float(c.get("rms_norm_epsilon", GPTNEOX_DEFAULT_RMS_EPS)),
        "vocab_size": args.vocab_size or emb.shape[0] * ckpt.tp,
    }
    hd = keys["hidden_size"] // heads
    qkv_rows = ckpt.tensor(0, fmt.module_index("layer", num_layers), "attention.query_key_value.weight").shape[0]
    if qkv_rows * ckpt.tp != (heads + 2 * keys["num_kv_heads"]) * hd:
        raise CheckpointError(f"{ckpt.dir}: query_key_value has {qkv_rows} rows per rank, but num_attention_heads "
                              f"{heads} and num_kv_heads {keys['num_kv_heads']} at TP {ckpt.tp} need "
                              f"{(heads + 2 * keys['num_kv_heads']) * hd // ckpt.tp} (wrong config?)")
    if "rms_norm_epsilon" not in c:
        print(f"warning: config has no rms_norm_epsilon; using GPT-NeoX's default {GPTNEOX_DEFAULT_RMS_EPS:g}",
              file=sys.stderr)
    if not keys["max_position_embeddings"]:
        raise CheckpointError(f"{ckpt.dir}: config has neither max_position_embeddings nor seq_length")
    if keys["vocab_size"] > emb.shape[0] * ckpt.tp:
        raise CheckpointError(f"--vocab-size {keys['vocab_size']} > the checkpoint's {emb.shape[0] * ckpt.tp} rows")
    return keys, style


def refuse_unknown_tensors(ckpt: NeoXCheckpoint, names: Iterable[str], num_layers: int, style: str) -> None:
    """Every tensor must be one our model has (or the rotary buffer): anything else (QK norms,
    adapters, another architecture) would be dropped silently."""
    known: set[str] = set()
    for name in partition.expected_names(num_layers):
        index, neox_names = fmt.neox_keys(name, num_layers, style)
        known.update(f"{index}.{n}" for n in neox_names)
    unknown = [n for n in names if n not in known and not n.endswith("rotary_emb.inv_freq")]
    if unknown:
        raise CheckpointError(f"{ckpt.dir}: unsupported tensors {unknown[:3]} (not a Llama model in "
                              f"GPT-NeoX's {style} names)")


def rope_theta(ckpt: NeoXCheckpoint, c: dict, args: argparse.Namespace, head_dim: int, num_layers: int) -> float:
    """From the config; else from the llemma branch's saved inv_freq buffer; else --rope-theta.
    A saved inv_freq that disagrees with the config is an error."""
    module = ckpt.module(0, fmt.module_index("layer", num_layers))
    from_buffer = None
    if "attention.rotary_emb.inv_freq" in module:
        inv = module["attention.rotary_emb.inv_freq"].double()
        from_buffer = float(inv[1] ** (-head_dim / 2))  # inv_freq[j] = theta^(-2j/head_dim)
    theta = c.get("rotary_emb_base", args.rope_theta)
    if theta is None and from_buffer is not None:
        theta = round(from_buffer)
    if theta is None:
        raise CheckpointError(f"{ckpt.dir}: config has no rotary_emb_base (GPT-NeoX would have used "
                              f"{GPTNEOX_DEFAULT_THETA}); pass --rope-theta")
    if from_buffer is not None and abs(from_buffer / float(theta) - 1) > 1e-3:
        raise CheckpointError(f"{ckpt.dir}: saved rotary_emb.inv_freq means theta {from_buffer:.6g}, "
                              f"config says rotary_emb_base {theta}")
    return float(theta)


def layout_from_checkpoint(ckpt: NeoXCheckpoint, keys: dict, style: str) -> tuple:
    """(layout, why) where the checkpoint says its query_key_value layout, else (None, why not)."""
    recorded = ckpt.rank_state(0).get(fmt.EXPORT_KEY) if not ckpt.pipeline else None
    if recorded:
        return recorded["qkv_layout"], f"recorded by tools/export_neox.py in {ckpt.dir}"
    attention_type = ckpt.config.get("attention_type")
    if attention_type in ("groupedquery", "multiquery"):
        return "llemma-gqa", f"config attention_type: {attention_type} (the llemma branch's grouped-query attention)"
    gqa = keys["num_kv_heads"] != keys["num_attention_heads"]
    if gqa and style == "w123":
        return "llemma-gqa", "grouped-query attention with mlp.w1/w2/w3 names (older than main's per-rank layout)"
    if not gqa and (attention_type == "multihead" or style == "w123" or ckpt.saved_config):
        return "per-head", "multi-head attention in a checkpoint of GPT-NeoX's own training code"
    if gqa:
        return None, ("grouped-query attention with mlp.linear1 names: GPT-NeoX main changed this layout "
                      "in PR #1315 (llemma-gqa before Nov 2024, per-rank after) and the config does not say which")
    return None, ("multi-head attention without a config saved by GPT-NeoX's training: its training code reads "
                  "it per head, its HF->NeoX converter writes it per rank since PR #1345")


def fitting_layouts(keys: dict, tp: int) -> list[str]:
    n, m = keys["num_attention_heads"] // tp, keys["num_kv_heads"] // tp
    hd = keys["hidden_size"] // keys["num_attention_heads"]
    out = []
    for layout in fmt.QKV_LAYOUTS:
        try:
            fmt.qkv_order(layout, n, m, hd)
        except ValueError:
            continue
        if not (layout == "llemma-gqa" and n == m):  # the same rows as per-head
            out.append(layout)
    return out


def choose_layout(ckpt: NeoXCheckpoint, keys: dict, style: str, given: str | None) -> tuple[str, str]:
    if given == "llemma-gqa" and keys["num_kv_heads"] == keys["num_attention_heads"]:
        given = "per-head"  # the same rows for multi-head attention
    layout, why = layout_from_checkpoint(ckpt, keys, style)
    fits = fitting_layouts(keys, ckpt.tp)
    if layout is None:
        if given is None:
            raise CheckpointError(f"{ckpt.dir}: cannot tell the query_key_value layout ({why}); pass --layout "
                                  f"{' or '.join(fits)} (a wrong one is refused when there is a reference to check)")
        layout, why = given, "given with --layout"
    elif given is not None and given != layout:
        raise CheckpointError(f"--layout {given} contradicts the checkpoint: {layout} ({why})")
    if layout not in fits:
        raise CheckpointError(f"layout {layout} does not fit this model ({keys['num_attention_heads']} query, "
                              f"{keys['num_kv_heads']} KV heads at TP {ckpt.tp}); fitting: {', '.join(fits)}")
    return layout, why


def hf_view(ckpt: NeoXCheckpoint, keys: dict, style: str, layout: str) -> ShardedWeights:
    """The checkpoint as full HF tensors: each rank's GPT-NeoX tensors -> our rank weight -> unshard."""

    L = keys["num_layers"]
    dims = {"layout": layout, "heads": keys["num_attention_heads"], "kv_heads": keys["num_kv_heads"],
            "head_dim": keys["hidden_size"] // keys["num_attention_heads"], "tp": ckpt.tp}

    def rank_weight(rank: int, name: str) -> torch.Tensor:
        index, neox_names = fmt.neox_keys(name, L, style)
        return fmt.to_ours(name, [ckpt.tensor(rank, index, n) for n in neox_names], style, **dims)

    sizes = partition.sizes(keys, keys["vocab_size"])
    return ShardedWeights(rank_weight, partition.expected_names(L), ckpt.tp, sizes, keys["vocab_size"],
                          hf_config(keys, {}, "fp32"))


# ----------------------------------------------------------------------------- checks


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """RMS of the difference over the RMS of the reference."""
    ours, ref = ours.double(), ref.double()
    return ((ours - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def recorded_logits(ckpt: NeoXCheckpoint, padded_rows: int) -> torch.Tensor | None:
    """GPT-NeoX's ``checkpoint_validation_logits`` (tokens 0, 1, ..., seq_length-1) as [seq, vocab],
    joining vocab-parallel shards; None if the checkpoint has none."""
    pieces = [ckpt.rank_state(r).get("checkpoint_validation_logits") for r in range(ckpt.tp)]
    if pieces[0] is None:
        return None
    if pieces[0].dim() != 2:
        print(f"warning: checkpoint_validation_logits of shape {tuple(pieces[0].shape)}, not [tokens, vocab]; "
              f"not checked", file=sys.stderr)
        return None
    if pieces[0].shape[-1] == padded_rows:
        return pieces[0].float()
    shards = [p for p in pieces if p is not None]
    if len(shards) < len(pieces) or sum(p.shape[-1] for p in shards) != padded_rows:
        print("warning: checkpoint_validation_logits have an unexpected shape; not checked", file=sys.stderr)
        return None
    return torch.cat([p.float() for p in shards], -1)


def run_checks(ckpt: NeoXCheckpoint, view: ShardedWeights, keys: dict,
               args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """(check, measured, tolerance) for every reference available."""

    results = []
    vocab = keys["vocab_size"]
    logits = recorded_logits(ckpt, ckpt.tensor(0, 0, "word_embeddings.weight").shape[0] * ckpt.tp)
    if logits is not None:
        n = min(args.check_tokens, logits.shape[0], vocab)
        print(f"checking against GPT-NeoX's recorded checkpoint_validation_logits ({n} tokens)")
        ours = streamed_hf_logits(view, list(range(n)))
        results.append(("GPT-NeoX's recorded checkpoint_validation_logits, relative error",
                        relative_error(ours, logits[:n, :vocab]), args.tolerance))
    exported = ckpt.rank_state(0).get(fmt.EXPORT_KEY) if not ckpt.pipeline else None
    if exported and exported.get("reference"):
        ref = exported["reference"]
        print(f"checking against the reference loss recorded by tools/export_neox.py ({len(ref['tokens'])} tokens)")
        results.append(("recorded reference loss, absolute difference",
                        abs(streamed_hf_loss(view, ref["tokens"]) - ref["loss"]), 1e-4))
    if args.verify_hf:

        hf = HFWeights(args.verify_hf)
        tokens = reference_tokens(args.verify_hf, min(args.check_tokens, keys["max_position_embeddings"]), vocab)
        print(f"checking against the Hugging Face model in {args.verify_hf} ({len(tokens)} tokens)")
        results.append((f"logits of {args.verify_hf}, relative error",
                        relative_error(streamed_hf_logits(view, tokens), streamed_hf_logits(hf, tokens)),
                        args.tolerance))
    return results


def check_layout(ckpt: NeoXCheckpoint, view: ShardedWeights, keys: dict, layout: str, why: str,
                 args: argparse.Namespace) -> list:
    results = run_checks(ckpt, view, keys, args)
    for check, value, tol in results:
        print(f"check: {check} = {value:.3e} (tolerance {tol:g})")
    failed = [(c, v, t) for c, v, t in results if not v <= t]
    if failed:
        others = [x for x in fitting_layouts(keys, ckpt.tp) if x != layout]
        c, v, t = failed[0]
        raise CheckpointError(f"layout {layout} ({why}) fails the check: {c} {v:.3e} > {t:g}; the weights "
                              f"do not compute the reference model"
                              + (f" (other layouts that fit: {', '.join(others)})" if others else ""))
    if not results:
        print(f"warning: nothing to check layout {layout} against (no checkpoint_validation_logits, no reference "
              f"recorded by export_neox.py, no --verify-hf)", file=sys.stderr)
    return [{"check": c, "value": v, "tolerance": t} for c, v, t in results]


# ----------------------------------------------------------------------------- main


def convert(args: argparse.Namespace) -> dict:

    limit_heap_growth()
    ckpt = NeoXCheckpoint(args.ckpt, args.step, args.config or ())
    refuse_unsupported(ckpt)
    keys, style = model_keys(ckpt, args)
    for key in ("num_attention_heads", "num_kv_heads", "intermediate_size"):
        if keys[key] % args.tp:
            raise CheckpointError(f"--tp {args.tp} does not divide {key} = {keys[key]}")
    layout, why = choose_layout(ckpt, keys, style, args.layout)
    print(f"{ckpt.dir}: TP={ckpt.tp}, {'pipeline' if ckpt.pipeline else 'sequential'} files, "
          f"mlp {style}, query_key_value layout {layout} ({why})")
    out = os.path.abspath(args.out.rstrip("/"))
    check_out(out, args.force)

    view = hf_view(ckpt, keys, style, layout)
    checks = check_layout(ckpt, view, keys, layout, why, args)
    dtype = args.dtype
    if dtype == "auto":
        dtype = "fp32" if ckpt.tensor(0, 0, "word_embeddings.weight").dtype == torch.float32 else "bf16"
    tok_dir = None
    vocab_file = ckpt.config.get("vocab_file")
    if vocab_file and os.path.basename(vocab_file) == "tokenizer.model" and os.path.isfile(vocab_file):
        tok_dir = os.path.dirname(os.path.abspath(vocab_file))
    reference = None
    if args.reference_tokens > 0:

        tokens = reference_tokens(tok_dir or ckpt.dir, min(args.reference_tokens, keys["max_position_embeddings"]),
                                  keys["vocab_size"])
        reference = {"tokens": tokens, "rope_theta": keys["rotary_emb_base"], "loss": streamed_hf_loss(view, tokens)}
    padded = padded_vocab_size(keys["vocab_size"], 1, args.tp)
    meta = {
        "source": ckpt.dir, "source_format": "gpt-neox", "source_config": ckpt.config,
        "source_tensor_parallel_size": ckpt.tp, "qkv_layout": layout, "qkv_layout_reason": why,
        "mlp_names": style, "checks": checks, "tensor_parallel_size": args.tp, "dtype": dtype,
        "rope_theta_source": keys["rotary_emb_base"], "rope_theta": keys["rotary_emb_base"],
        "vocab_size": keys["vocab_size"], "padded_vocab_size": padded, "make_vocab_size_divisible_by": 1,
        "neox_model_keys": {**keys, "make_vocab_size_divisible_by": 1}, "reference": reference,
    }
    write_checkpoint(out, view, partition.expected_names(keys["num_layers"]), args.tp, keys["vocab_size"],
                     padded, dtype, meta, tokenizer_dir=tok_dir)
    print(f"wrote {out}: TP={args.tp}, {dtype}, vocab {keys['vocab_size']}, layout {layout}, "
          f"rope theta {keys['rotary_emb_base']:g}")
    return meta


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="GPT-NeoX checkpoint: the save dir (with 'latest') or a global_step dir")
    p.add_argument("--step", type=int, default=None, help="global step to read (default: 'latest')")
    p.add_argument("--config", nargs="+", help="the run's YAML file(s), if not saved in global_step<N>/configs/")
    p.add_argument("--out", required=True, help="output trainer checkpoint directory")
    p.add_argument("--tp", type=int, required=True, help="tensor-parallel size to shard for")
    p.add_argument("--layout", choices=fmt.QKV_LAYOUTS, default=None,
                   help="query_key_value layout, where the checkpoint does not say it")
    p.add_argument("--verify-hf", default=None, help="Hugging Face model the checkpoint must compute (fp32 logits)")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="relative RMS logit error allowed against a reference (recorded GPT-NeoX logits are bf16)")
    p.add_argument("--check-tokens", type=int, default=128, help="tokens of each reference batch to check")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="real vocabulary (drops GPT-NeoX's padding rows); default: every embedding row")
    p.add_argument("--rope-theta", type=float, default=None, help="RoPE theta if the config does not say it")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--reference-tokens", type=int, default=128,
                   help="length of the reference batch whose loss is recorded for the guarded start (0: skip)")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tp < 1:
        print("error: --tp must be >= 1", file=sys.stderr)
        return 2
    return run_tool(convert, args)


if __name__ == "__main__":
    sys.exit(main())
