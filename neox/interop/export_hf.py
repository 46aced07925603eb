#!/usr/bin/env python
"""Trainer checkpoint (any step, any TP, ZeRO or not) -> Hugging Face Llama / Mistral / Qwen2 directory.

    python tools/export_hf.py --ckpt DIR [--step N] --out DIR [--dtype bf16|fp32|auto]
                              [--max-shard-size-gb 5]

Writes config.json (the model's family as model_type / architectures, rope_theta and any
rope_scaling, num_key_value_heads, head_dim, intermediate_size, rms_norm_eps, vocab_size,
tie_word_embeddings), model-0000X-of-0000Y.safetensors shards with an index,
generation_config.json and the tokenizer: a Hugging Face tokenizer's own files (tokenizer.json,
tokenizer_config.json, special_tokens_map.json) copied byte for byte, or, for a SentencePiece
model, tokenizer.model plus the files built from it (see neox.data.hf_tokenizer); loadable by
AutoModelForCausalLM.from_pretrained and AutoTokenizer. Files get the modes the umask gives.

Weights come from the module weights in mp_rank_<TT>_model_states.pt (what the model computed
with: bf16 after bf16 training). Rank files are memory-mapped and each tensor is unsharded on
its own, so peak memory is about one output shard plus one tensor. Vocabulary padding added for
tensor parallelism is stripped.
"""

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence

import torch
from tqdm import tqdm

from neox.checkpoint.files import (
    CONVERSION_FILE,
    DTYPES,
    TOKENIZER_FILES,
    CheckpointError,
    open_checkpoint,
    run_tool,
    unfused_hint,
)
from neox.data.hf_tokenizer import UnsupportedTokenizer, write_hf_tokenizer
from neox.data.tokenizer import HF, SPM, HFTokenizer, TokenizerError, kind_of_file
from neox.interop.publish import publish_dir
from neox.model import partition
from neox.model.attention_pattern import sliding_layers
from neox.model.hf_compat import FAMILIES


def hf_config(info: dict, source: dict, dtype: str) -> dict:
    """config.json for the model's family (``hf_model_type``: one of neox.model.hf_compat.FAMILIES,
    the class transformers builds); special-token ids come from the source model if known."""
    model_type = info.get("hf_model_type") or "llama"
    head_dim = info.get("head_dim") or info["hidden_size"] // info["num_attention_heads"]
    theta = float(info["rotary_emb_base"])
    scaling = info.get("rope_scaling")
    config = {
        "architectures": [FAMILIES[model_type][0]],
        "model_type": model_type,
        "hidden_act": "silu" if model_type != "gemma3_text" else None,
        "vocab_size": int(info["vocab_size"]),
        "hidden_size": info["hidden_size"],
        "intermediate_size": info["intermediate_size"],
        "num_hidden_layers": info["num_layers"],
        "num_attention_heads": info["num_attention_heads"],
        "num_key_value_heads": info.get("num_kv_heads") or info["num_attention_heads"],
        "head_dim": head_dim,
        "max_position_embeddings": info.get("max_position_embeddings") or info["seq_length"],
        "rms_norm_eps": info["rms_norm_epsilon"],
        # both spellings: older transformers read rope_theta, 5.x reads rope_parameters
        "rope_theta": theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta, **(scaling or {})},
        "rope_scaling": scaling,
        "tie_word_embeddings": bool(info.get("tie_word_embeddings")),
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": source.get("bos_token_id", 1),
        "eos_token_id": source.get("eos_token_id", 2),
        "pad_token_id": source.get("pad_token_id"),
        "initializer_range": source.get("initializer_range", 0.02),
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": {"bf16": "bfloat16", "fp32": "float32"}[dtype],
    }
    if model_type != "llama":  # the other families have no mlp_bias / pretraining_tp keys
        for key in ("mlp_bias", "pretraining_tp") + (("attention_bias",) if model_type == "mistral" else ()):
            del config[key]
        if model_type in ("mistral", "qwen2", "qwen3"):
            config["sliding_window"] = info.get("sliding_window")
        if model_type in ("qwen2", "qwen3"):
            config["use_sliding_window"] = False
    if model_type == "gemma3_text":
        config.update(gemma3_keys(info, theta, scaling))
    return config


def gemma3_keys(info: dict, theta: float, scaling: dict | None) -> dict:
    """Gemma 3's own keys: GeGLU, the attention scale, which layers slide and their RoPE base (in
    both spellings: transformers 5's rope_parameters per layer type, 4.x's rope_local_base_freq)."""
    layers = info["num_layers"]
    sliding = set(sliding_layers(layers, info.get("sliding_window"), info.get("sliding_window_pattern")))
    local = float(info.get("rotary_emb_base_local") or theta)
    head_dim = info.get("head_dim") or info["hidden_size"] // info["num_attention_heads"]
    return {
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": _int_if_whole(info.get("query_pre_attn_scalar") or head_dim),  # transformers: int
        "sliding_window": info.get("sliding_window"),
        "layer_types": ["sliding_attention" if i in sliding else "full_attention" for i in range(layers)],
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": theta, **(scaling or {})},
                            "sliding_attention": {"rope_type": "default", "rope_theta": local}},
        "rope_local_base_freq": local,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
    }


def _int_if_whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def find_tokenizer(ckpt: str, info: dict) -> tuple[str | None, str | None]:
    """(SentencePiece model, directory of Hugging Face tokenizer files). A run whose vocab_file is
    a tokenizer.json (HFTokenizer) exports the files beside it, as they are. Otherwise the
    converter's copy in <ckpt>/tokenizer/ (its SentencePiece model if it has one), else the run's
    vocab_file."""
    d = os.path.join(ckpt, "tokenizer")
    hf_dir = d if any(os.path.isfile(os.path.join(d, f)) for f in TOKENIZER_FILES) else None
    vocab_file = info.get("vocab_file")
    vocab_file = vocab_file if vocab_file and os.path.isfile(vocab_file) else None
    if vocab_file and kind_of_file(vocab_file) == HF:
        return None, os.path.dirname(os.path.abspath(vocab_file))
    models = (os.path.join(d, "tokenizer.model"), vocab_file)
    return next((m for m in models if m and os.path.isfile(m) and kind_of_file(m) == SPM), None), hf_dir


def write_tokenizer(model: str | None, hf_dir: str | None, out: str, config: dict) -> dict:
    """The complete tokenizer, built from the SentencePiece model the data was tokenized with (a
    Hugging Face tokenizer without one is copied as it is, byte for byte); returns its special-token ids."""
    if model:
        try:
            return write_hf_tokenizer(model, out, config["max_position_embeddings"])
        except UnsupportedTokenizer as e:
            print(f"warning: {e}; tokenizer files copied as they are", file=sys.stderr)
    if hf_dir:
        for f in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(hf_dir, f)):
                shutil.copyfile(os.path.join(hf_dir, f), os.path.join(out, f))
        return hf_tokenizer_ids(hf_dir)
    elif model:
        shutil.copyfile(model, os.path.join(out, "tokenizer.model"))
    else:
        print("warning: no tokenizer found (no <ckpt>/tokenizer/, no vocab_file); exported weights only",
              file=sys.stderr)
    return {}


def hf_tokenizer_ids(hf_dir: str) -> dict:
    """bos/eos/pad ids of a copied tokenizer.json + tokenizer_config.json (those it defines), else {}."""
    path = os.path.join(hf_dir, "tokenizer.json")
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(hf_dir, "tokenizer_config.json"))):
        return {}
    try:
        tok = HFTokenizer(path)
    except TokenizerError as e:
        print(f"warning: {e}; config.json keeps the source model's special-token ids", file=sys.stderr)
        return {}
    ids = {"bos_token_id": tok.bos, "eos_token_id": tok.eos, "pad_token_id": tok.pad_token_id}
    return {k: v for k, v in ids.items() if v is not None}


def use_tokenizer_ids(config: dict, ids: dict) -> None:
    """Special-token ids in config.json are the tokenizer's; a source config that disagrees is named."""
    for key, value in ids.items():
        if config.get(key) != value:
            if config.get(key) is not None:
                print(f"warning: the source model's {key} {config[key]} differs from the tokenizer's "
                      f"{value}; config.json gets the tokenizer's", file=sys.stderr)
            config[key] = value


def export(ckpt: str, out: str, step: int | None = None, dtype: str = "auto", max_shard_bytes: int = 5 * 2**30,
           force: bool = False) -> dict:
    from safetensors.torch import save_file

    tag, tp, ranks, info = open_checkpoint(ckpt, step)
    source = {}
    if os.path.isfile(os.path.join(ckpt, CONVERSION_FILE)):
        with open(os.path.join(ckpt, CONVERSION_FILE)) as f:
            source = json.load(f).get("source_config", {})
    names = partition.expected_names(int(info["num_layers"]), info)
    missing = [n for n in names if n not in ranks[0]["module"]]
    if missing:
        raise CheckpointError(f"{ckpt}/{tag}: weights missing from mp_rank_00: {missing[:3]}"
                              f"{unfused_hint(ranks[0]['module'])}")
    if dtype == "auto":
        dtype = "fp32" if ranks[0]["module"][names[0]].dtype == torch.float32 else "bf16"
    vocab = int(info["vocab_size"])

    out = os.path.abspath(out.rstrip("/"))
    with publish_dir(out, force) as tmp:
        shards: list[tuple[list[str], int]] = []  # [(names, bytes)]; tensors are not kept
        current: dict[str, torch.Tensor] = {}
        size = 0

        def flush() -> None:
            shards.append(([k for k in current], sum(v.numel() * v.element_size() for v in current.values())))
            save_file(current, os.path.join(tmp, f"part-{len(shards)}.safetensors"), metadata={"format": "pt"})

        dims = partition.sizes(info)
        for name in tqdm(names, unit="tensor", desc="export"):
            parts = partition.unshard([r["module"][name] for r in ranks], name, dims)
            for hf_name, full in zip(partition.hf_names(name), parts):
                full = partition.strip_vocab(full, name, vocab).to(DTYPES[dtype]).contiguous()
                nbytes = full.numel() * full.element_size()
                if current and size + nbytes > max_shard_bytes:
                    flush()
                    current, size = {}, 0
                current[hf_name] = full
                size += nbytes
        flush()
        current = {}
        weight_map = {}
        for i, (keys, _) in enumerate(shards, 1):
            final = f"model-{i:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1 else "model.safetensors"
            os.rename(os.path.join(tmp, f"part-{i}.safetensors"), os.path.join(tmp, final))
            weight_map.update({k: final for k in keys})
        if len(shards) > 1:
            total = sum(b for _, b in shards)
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)

        config = hf_config(info, source, dtype)
        use_tokenizer_ids(config, write_tokenizer(*find_tokenizer(ckpt, info), tmp, config))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
        generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config[k] is not None}
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump(generation, f)
    print(f"exported {ckpt}/{tag} (TP={tp}) to {out}: {dtype}, vocab {vocab}, rope_theta {config['rope_theta']:g}")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="trainer checkpoint directory (holds 'latest')")
    p.add_argument("--step", type=int, default=None, help="global step to export (default: latest)")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: the checkpoint's own dtype")
    p.add_argument("--max-shard-size-gb", type=float, default=5.0)
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    args = p.parse_args(argv)
    return run_tool(export, args.ckpt, args.out, args.step, args.dtype, int(args.max_shard_size_gb * 2**30),
                       args.force)


if __name__ == "__main__":
    sys.exit(main())
