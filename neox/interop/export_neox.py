#!/usr/bin/env python
"""Trainer checkpoint -> GPT-NeoX main's checkpoint layout (weights only).

    python tools/export_neox.py --ckpt DIR [--step N] --out DIR [--tp N]
                                [--layout per-rank|per-head|llemma-gqa] [--dtype auto|bf16|fp32]
                                [--make-vocab-size-divisible-by N] [--force]

Writes <out>/latest and <out>/global_step<N>/mp_rank_<TT>_model_states.pt with
``sequential.<i>.*`` keys (pipe_parallel_size 0), ``mlp.linear1`` = [up; gate] per rank, RMSNorm
``scale`` weights and, by default, the per-rank query_key_value layout of GPT-NeoX main (see
neox/interop/gptneox_format.py), at TP ``--tp`` (default: the checkpoint's). Beside it:

  <out>/global_step<N>/configs/model.yml   the model in GPT-NeoX main's config keys, for training
                                           there (its ``intermediate_size`` is 3x the MLP width:
                                           main's gated MLP takes 2/3 of it and halves that)
  <out>/convert_neox_to_hf.yml             the same for GPT-NeoX's tools/ckpts/convert_neox_to_hf.py
                                           (which copies ``intermediate_size`` into the HF config
                                           unchanged, so here it is the MLP width itself):
      python tools/ckpts/convert_neox_to_hf.py --input_dir <out>/global_step<N> \\
          --config_file <out>/convert_neox_to_hf.yml --output_dir HF_DIR --architecture llama
  <out>/tokenizer/                         the checkpoint's tokenizer, named by both configs

Each rank file also records the layout and a reference loss (``neox_export``), which
tools/convert_neox.py checks when it reads the export back.
"""

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from neox.checkpoint.files import (
    DTYPES,
    CheckpointError,
    open_checkpoint,
    unfused_hint,
)
from neox.config import padded_vocab_size
from neox.interop import gptneox_format as fmt
from neox.interop.export_hf import find_tokenizer, hf_config
from neox.interop.publish import check_out, publish_dir
from neox.interop.reference import reference_tokens as tokens_for
from neox.interop.reference import streamed_hf_loss
from neox.model import partition
from neox.model.hf_compat import ShardedWeights, shard_hf_weights


def gptneox_config(info: dict, tp: int, divisible_by: int, vocab_file: str | None, dtype: str,
                   tokenizer_type: str = "SPMTokenizer") -> dict:
    """GPT-NeoX main config keys for the model (main's meaning of intermediate_size: 3x the width)."""
    config = {
        "pipe_parallel_size": 0, "model_parallel_size": tp, "make_vocab_size_divisible_by": divisible_by,
        "num_layers": info["num_layers"], "hidden_size": info["hidden_size"],
        "num_attention_heads": info["num_attention_heads"],
        "num_kv_heads": info.get("num_kv_heads") or info["num_attention_heads"],
        "intermediate_size": 3 * info["intermediate_size"], "mlp_multiple_of": 1, "activation": "swiglu",
        "seq_length": info.get("seq_length") or info["max_position_embeddings"],
        "max_position_embeddings": info.get("max_position_embeddings") or info["seq_length"],
        "pos_emb": "rotary", "rotary_pct": 1, "rotary_emb_base": float(info["rotary_emb_base"]),
        "no_weight_tying": True, "gpt_j_residual": False, "output_layer_parallelism": "column",
        "norm": "rmsnorm", "rms_norm_epsilon": info["rms_norm_epsilon"], "use_bias_in_norms": False,
        "use_bias_in_attn_linear": False, "use_bias_in_mlp": False,
        "precision": "bfloat16" if dtype == "bf16" else "float32",
        "tokenizer_type": tokenizer_type,
    }
    if vocab_file:
        config["vocab_file"] = vocab_file
    return config


def write_yaml(path: str, config: dict, header: str) -> None:
    import yaml

    with open(path, "w") as f:
        f.write("".join(f"# {line}\n" for line in header.splitlines()))
        yaml.safe_dump(config, f, sort_keys=False)


def ours_as_hf(tp: int, info: dict, ranks: list[dict]) -> ShardedWeights:

    dims = partition.sizes(info)
    vocab = int(info["vocab_size"])
    return ShardedWeights(lambda r, name: ranks[r]["module"][name], partition.expected_names(int(info["num_layers"])),
                          tp, dims, vocab, hf_config(info, {}, "fp32"))


def export(ckpt: str, out: str, step: int | None = None, tp_out: int | None = None, layout: str = "per-rank",
           dtype: str = "auto", divisible_by: int | None = None, force: bool = False,
           reference_tokens: int = 128) -> dict:
    tag, tp, ranks, info = open_checkpoint(ckpt, step)
    llama = {"sublayer_norms": "pre", "mlp_activation": "silu"}  # the options' values GPT-NeoX's Llama has
    lacking = [k for k in ("head_dim", "qkv_bias", "tie_word_embeddings", "rope_scaling", "qk_norm", "sublayer_norms",
                           "apply_layernorm_1p", "scale_embeddings", "mlp_activation", "query_pre_attn_scalar",
                           "sliding_window", "rotary_emb_base_local")
               if info.get(k) not in (None, False, llama.get(k))
               and not (k == "head_dim" and info[k] * info["num_attention_heads"] == info["hidden_size"])]
    if lacking:  # GPT-NeoX's Llama layout has none of these (no_weight_tying, use_bias_in_attn_linear ...)
        raise CheckpointError(f"{ckpt}/{tag}: {', '.join(lacking)} cannot be written in GPT-NeoX's Llama format; "
                              "export to Hugging Face instead (tools/export_hf.py)")
    L = int(info["num_layers"])
    names = partition.expected_names(L)
    missing = [n for n in names if n not in ranks[0]["module"]]
    if missing:
        raise CheckpointError(f"{ckpt}/{tag}: weights missing from mp_rank_00: {missing[:3]}"
                              f"{unfused_hint(ranks[0]['module'])}")
    tp_out = tp_out or tp
    heads, kv = info["num_attention_heads"], info.get("num_kv_heads") or info["num_attention_heads"]
    for key, value in (("num_attention_heads", heads), ("num_kv_heads", kv),
                       ("intermediate_size", info["intermediate_size"])):
        if value % tp_out:
            raise CheckpointError(f"--tp {tp_out} does not divide {key} = {value}")
    dims = {"layout": layout, "heads": heads, "kv_heads": kv, "head_dim": info["hidden_size"] // heads, "tp": tp_out}
    fmt.qkv_order(layout, heads // tp_out, kv // tp_out, dims["head_dim"])  # ValueError if it cannot fit
    if heads == kv and layout == "per-rank":
        print("warning: multi-head attention written per rank, as GPT-NeoX main's convert_neox_to_hf.py reads "
              "every Llama; GPT-NeoX's training code reads multi-head query_key_value per head "
              "(--layout per-head to train it there)", file=sys.stderr)
    if dtype == "auto":
        dtype = "fp32" if ranks[0]["module"][names[0]].dtype == torch.float32 else "bf16"
    vocab = int(info["vocab_size"])
    divisible_by = divisible_by or int(info.get("make_vocab_size_divisible_by") or 1)
    padded = padded_vocab_size(vocab, divisible_by, tp_out)
    step_n = int(tag.replace("global_step", "")) if tag.startswith("global_step") else 0

    out = os.path.abspath(out.rstrip("/"))
    check_out(out, force)
    view = ours_as_hf(tp, info, ranks)
    record: dict[str, Any] = {"qkv_layout": layout, "source": os.path.abspath(ckpt), "source_tag": tag,
                              "reference": None}
    if reference_tokens > 0:

        n = min(reference_tokens, int(info.get("max_position_embeddings") or reference_tokens))
        tokens = tokens_for(os.path.join(ckpt, "tokenizer"), n, vocab)
        record["reference"] = {"tokens": tokens, "loss": streamed_hf_loss(view, tokens)}

    tag_out = f"global_step{step_n}"
    with publish_dir(out, force) as tmp:
        os.makedirs(os.path.join(tmp, tag_out, "configs"))
        tokenizer_type, vocab_file = copy_tokenizer(ckpt, info, tmp, out)
        bar = tqdm(total=tp_out * len(names), unit="tensor", desc="export")
        for rank in range(tp_out):
            state = rank_module(view, L, rank, tp_out, vocab, padded, DTYPES[dtype], dims)
            bar.update(len(names))
            torch.save({"module": state, "dp_world_size": 1, "mp_world_size": tp_out, "optimizer": {},
                        "global_steps": step_n, "skipped_steps": 0, "iteration": step_n,
                        "args": {"num_layers": L, "hidden_size": info["hidden_size"], "num_attention_heads": heads,
                                 "max_position_embeddings": info.get("max_position_embeddings"),
                                 "make_vocab_size_divisible_by": divisible_by, "padded_vocab_size": padded,
                                 "tokenizer_type": tokenizer_type, "model_parallel_size": tp_out},
                        fmt.EXPORT_KEY: record},
                       os.path.join(tmp, tag_out, f"mp_rank_{rank:02d}_model_states.pt"))
            del state
        bar.close()
        config = gptneox_config(info, tp_out, divisible_by, vocab_file, dtype, tokenizer_type)
        write_yaml(os.path.join(tmp, tag_out, "configs", "model.yml"), config,
                   "Model of this checkpoint in GPT-NeoX main's keys (written by llemma-neox tools/export_neox.py).\n"
                   "intermediate_size is main's: its gated MLP is int(intermediate_size * 2/3) / 2 wide.")
        write_yaml(os.path.join(tmp, "convert_neox_to_hf.yml"), {**config, "intermediate_size": info["intermediate_size"]},
                   "For GPT-NeoX's tools/ckpts/convert_neox_to_hf.py --architecture llama, which copies\n"
                   "intermediate_size into the HF config as the MLP width; train with global_step*/configs/model.yml.")
        with open(os.path.join(tmp, "latest"), "w") as f:
            f.write(tag_out)
    print(f"exported {ckpt}/{tag} (TP={tp}) to {out}/{tag_out}: GPT-NeoX main layout, TP={tp_out}, {dtype}, "
          f"query_key_value {layout}, vocab {vocab} (padded {padded})")
    return config


def rank_module(view: ShardedWeights, L: int, rank: int, tp: int, vocab: int, padded: int, dtype: torch.dtype,
                dims: dict[str, str | int]) -> dict:
    """GPT-NeoX ``sequential.<i>.*`` tensors of one rank: our rank weight via partition, then the
    in-rank GPT-NeoX order."""

    state = {}
    for name, t in shard_hf_weights(view, partition.expected_names(L), vocab, padded, rank, tp, dtype).items():
        index, neox_names = fmt.neox_keys(name, L, "linear1")
        for neox_name, piece in zip(neox_names, fmt.to_neox(name, t, "linear1", **dims)):
            state[f"sequential.{index}.{neox_name}"] = piece.contiguous().clone()
    return state


def copy_tokenizer(ckpt: str, info: dict, tmp: str, out: str) -> tuple[str, str | None]:
    """The checkpoint's tokenizer into <out>/tokenizer/; (tokenizer_type, vocab_file) for both
    configs. A SentencePiece model (the converter's copy in <ckpt>/tokenizer/, else the run's
    vocab_file) is GPT-NeoX's SPMTokenizer; a Hugging Face tokenizer.json alone its HFTokenizer."""

    model, hf_dir = find_tokenizer(ckpt, info)
    hf_json = os.path.join(hf_dir, "tokenizer.json") if hf_dir else None
    if model:
        src, name, kind = model, "tokenizer.model", "SPMTokenizer"
    elif hf_json and os.path.isfile(hf_json):
        src, name, kind = hf_json, "tokenizer.json", "HFTokenizer"
    else:
        print("warning: no tokenizer found (<ckpt>/tokenizer/, vocab_file); set vocab_file in the written "
              "configs before using them with GPT-NeoX", file=sys.stderr)
        return "SPMTokenizer", None
    os.makedirs(os.path.join(tmp, "tokenizer"), exist_ok=True)
    shutil.copy2(src, os.path.join(tmp, "tokenizer", name))
    config = os.path.join(os.path.dirname(src), "tokenizer_config.json")
    if kind == "HFTokenizer" and os.path.isfile(config):  # its BOS/EOS conventions (neox.data.tokenizer)
        shutil.copy2(config, os.path.join(tmp, "tokenizer", "tokenizer_config.json"))
    return kind, os.path.join(os.path.abspath(out), "tokenizer", name)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="trainer checkpoint directory (holds 'latest')")
    p.add_argument("--step", type=int, default=None, help="global step to export (default: latest)")
    p.add_argument("--out", required=True)
    p.add_argument("--tp", type=int, default=None, help="GPT-NeoX model_parallel_size (default: the checkpoint's)")
    p.add_argument("--layout", choices=fmt.QKV_LAYOUTS, default="per-rank",
                   help="query_key_value layout (default: GPT-NeoX main's per-rank)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=None,
                   help="GPT-NeoX's vocabulary padding (default: the checkpoint's)")
    p.add_argument("--reference-tokens", type=int, default=128, help="reference batch recorded for the import check")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    args = p.parse_args(argv)
    if args.tp is not None and args.tp < 1:
        print("error: --tp must be >= 1", file=sys.stderr)
        return 2
    try:
        export(args.ckpt, args.out, args.step, args.tp, args.layout, args.dtype, args.make_vocab_size_divisible_by,
               args.force, args.reference_tokens)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
