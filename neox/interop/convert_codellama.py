#!/usr/bin/env python
"""Hugging Face Llama / Code Llama / Llama 3 / Mistral / Qwen2 directory -> trainer checkpoint sharded for
tensor parallel (which families and options: docs/converters.md, "Base models").

    python tools/convert_codellama.py --hf-dir DIR --out DIR --tp N [--rope-theta F]
                                      [--dtype auto|bf16|fp32] [--verify] [--force]

Writes <out>/global_step0/mp_rank_<TT>_model_states.pt for each TP rank, <out>/latest, the
tokenizer files in <out>/tokenizer/, and <out>/neox_conversion.json (source config, RoPE theta
before and after, original and padded vocab, TP, and the source model's loss on a fixed
reference batch). ``finetune: true`` with ``load: <out>`` starts training from it.
``--dtype auto`` (the default) keeps the source's dtype, so HF -> trainer -> HF is bit-identical.

Tensors are streamed: each rank's file is built from slices read straight out of the
memory-mapped safetensors, so peak memory is about one output shard plus one tensor.
"""

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from tqdm import tqdm

from neox.checkpoint.files import CONVERSION_FILE, DTYPES, TOKENIZER_FILES, CheckpointError, HFWeights, model_file
from neox.config import padded_vocab_size
from neox.interop.publish import check_out, publish_dir
from neox.interop.reference import reference_tokens, streamed_hf_loss
from neox.interop.verify_conversion import verify
from neox.model import partition
from neox.model.hf_compat import FAMILIES, neox_model_keys_from_hf, shard_hf_weights

TORCH_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}



def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-dir", required=True, help="Hugging Face model directory")
    p.add_argument("--out", required=True, help="output trainer checkpoint directory")
    p.add_argument("--tp", type=int, required=True, help="tensor-parallel size to shard for")
    p.add_argument("--rope-theta", type=float, default=None,
                   help="RoPE theta to train with (Llemma 7B: 10000); default: the source model's")
    p.add_argument("--dtype", choices=["auto"] + sorted(DTYPES), default="auto",
                   help="auto: the source's own dtype (its tensors; config.json's torch_dtype is checked)")
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=1)
    p.add_argument("--reference-tokens", type=int, default=128,
                   help="length of the reference batch whose loss is recorded (0: skip)")
    p.add_argument("--verify", action="store_true",
                   help="run tools/verify_conversion.py on the result; no output is left on failure")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs logit difference for --verify")
    p.add_argument("--force", action="store_true",
                   help="overwrite a non-empty --out; keep the output even if --verify fails")
    return p.parse_args(argv)


def check_supported(weights: HFWeights, tp: int) -> dict:
    """Model keys of the source, or a one-line error for anything this trainer cannot represent."""
    c = weights.config
    where = f"{weights.dir}/config.json"
    try:
        keys = neox_model_keys_from_hf(c, where)
    except KeyError as e:
        raise CheckpointError(f"{where}: key {e} missing") from None
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    arch = (c.get("architectures") or [FAMILIES[c.get("model_type", "llama")][0]])[0]
    if arch != FAMILIES[c.get("model_type", "llama")][0]:
        raise CheckpointError(f"{where}: architectures {arch} is not supported "
                              f"({', '.join(a for a, *_ in FAMILIES.values())})")
    for key in ("num_attention_heads", "num_kv_heads", "intermediate_size"):
        if keys[key] % tp:
            why = " (KV heads are split across TP ranks, not replicated)" if key == "num_kv_heads" else ""
            raise CheckpointError(f"--tp {tp} does not divide {key} = {keys[key]} of {weights.dir}{why}")
    return keys


def source_dtype(weights: HFWeights, hf_names: Iterable[str]) -> str:
    """``--dtype auto``: the dtype of the source's tensors, so the conversion loses nothing.
    config.json's torch_dtype (``dtype`` in transformers 5) is only checked against them."""
    found = {weights.get_slice(n, 0, 0, 1).dtype for n in hf_names}  # one row each: the header's dtype
    found_names = ", ".join(sorted(TORCH_NAMES.get(d, str(d)) for d in found))
    declared = weights.config.get("torch_dtype") or weights.config.get("dtype")
    if declared and str(declared).removeprefix("torch.") != found_names:
        print(f"warning: {weights.dir}/config.json says torch_dtype {declared} but the tensors are "
              f"{found_names}; following the tensors", file=sys.stderr)
    if found == {torch.bfloat16}:
        return "bf16"
    if found != {torch.float32}:  # fp16 or mixed: fp32 holds every value exactly
        print(f"warning: {weights.dir}: tensors are {found_names}; converting to fp32, which holds them "
              "exactly (--dtype bf16 halves the size)", file=sys.stderr)
    return "fp32"


def rank_state(weights: Any, names: Iterable[str], rank: int, tp: int, vocab: int, padded: int,
               dtype: torch.dtype) -> dict:
    """Weights of one TP rank, read slice by slice (the vocab shard of the last rank is padded)."""
    try:
        return shard_hf_weights(weights, names, vocab, padded, rank, tp, dtype)
    except ValueError as e:
        # a Hugging Face source names its directory; a GPT-NeoX one (ShardedWeights) is named by its caller
        raise CheckpointError(f"{getattr(weights, 'dir', 'source checkpoint')}: {e}") from None


def limit_heap_growth() -> None:
    """Make glibc return freed tensor memory to the OS: with its default dynamic mmap threshold,
    freed multi-MB buffers stay on the heap and a streamed conversion's RSS creeps up by the
    size of the largest tensors. No-op where mallopt is unavailable."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB, fixed
    except (OSError, AttributeError):
        pass


def write_checkpoint(out: str, source: Any, names: Sequence[str], tp: int, vocab: int, padded: int, dtype: str,
                     meta: dict, tokenizer_dir: str | None = None,
                     before_publish: Callable[[str], object] | None = None) -> None:
    """Write a weights-only trainer checkpoint (``global_step0``, ``latest``, tokenizer files,
    ``neox_conversion.json`` = ``meta``) to ``out``, one TP rank at a time from ``source`` (full HF
    tensors: an HFWeights or anything with its reading interface). Built in a temporary directory
    and renamed into place when complete, so a failure leaves ``out`` as it was.
    ``before_publish(tmp)`` may check the written files (and raise) before the rename."""
    with publish_dir(out, force=True) as tmp:  # convert() refused a non-empty out before the work
        os.makedirs(os.path.join(tmp, "global_step0"))
        bar = tqdm(total=tp * len(names), unit="tensor", desc="convert")
        for rank in range(tp):
            state = {}
            for name, t in rank_state(source, names, rank, tp, vocab, padded, DTYPES[dtype]).items():
                state[name] = t
                bar.update(1)
            torch.save({"module": state, "neox_conversion": meta, "mp_world_size": tp,
                        "dp_world_size": 1, "iteration": 0, "global_steps": 0, "global_samples": 0},
                       model_file(tmp, "global_step0", rank))
            del state
        bar.close()
        os.makedirs(os.path.join(tmp, "tokenizer"))
        for name in TOKENIZER_FILES if tokenizer_dir else []:
            assert tokenizer_dir is not None, "the loop runs only with a tokenizer_dir"
            if os.path.isfile(os.path.join(tokenizer_dir, name)):
                shutil.copy2(os.path.join(tokenizer_dir, name), os.path.join(tmp, "tokenizer", name))
        with open(os.path.join(tmp, "latest"), "w") as f:
            f.write("global_step0")
        if before_publish is not None:
            before_publish(tmp)
        with open(os.path.join(tmp, CONVERSION_FILE), "w") as f:  # after the check: records its result
            json.dump(meta, f, indent=1)


def convert(args: argparse.Namespace) -> dict:
    limit_heap_growth()
    weights = HFWeights(args.hf_dir)
    keys = check_supported(weights, args.tp)
    expected = set(partition.expected_hf_names(keys["num_layers"], keys))
    missing = sorted(expected - set(weights.names()))
    if missing:
        raise CheckpointError(f"{args.hf_dir}: missing tensors {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    ignored = {"lm_head.weight"} if keys.get("tie_word_embeddings") else set()  # a saved copy of the tied head
    if ignored & set(weights.names()):
        print(f"warning: {args.hf_dir}: lm_head.weight is ignored: tie_word_embeddings is true, so the head is the "
              "embedding matrix (as transformers loads it)", file=sys.stderr)
    unexpected = sorted(n for n in set(weights.names()) - expected - ignored if "rotary_emb" not in n)
    if unexpected:
        raise CheckpointError(f"{args.hf_dir}: unsupported tensors {unexpected[:3]} (biases? a fused layout?)")

    out = os.path.abspath(args.out.rstrip("/"))
    check_out(out, args.force)
    vocab = keys["vocab_size"]
    padded = padded_vocab_size(vocab, args.make_vocab_size_divisible_by, args.tp)
    source_theta = keys["rotary_emb_base"]
    train_theta = args.rope_theta if args.rope_theta is not None else source_theta
    names = partition.expected_names(keys["num_layers"], keys)
    dtype = source_dtype(weights, sorted(expected)) if args.dtype == "auto" else args.dtype

    reference = None
    if args.reference_tokens > 0:

        length = min(args.reference_tokens, keys["max_position_embeddings"])
        tokens = reference_tokens(args.hf_dir, length, keys["vocab_size"])
        print(f"computing the source model's reference loss on {length} tokens (streamed, fp32)")
        reference = {"tokens": tokens, "rope_theta": source_theta,
                     "loss": streamed_hf_loss(weights, tokens)}
        print(f"reference loss at theta {source_theta:g}: {reference['loss']:.6f}")

    meta = {
        "source": os.path.abspath(args.hf_dir),
        "source_config": weights.config,
        "tensor_parallel_size": args.tp,
        "dtype": dtype,
        "rope_theta_source": source_theta,
        "rope_theta": train_theta,
        "vocab_size": vocab,
        "padded_vocab_size": padded,
        "make_vocab_size_divisible_by": args.make_vocab_size_divisible_by,
        "neox_model_keys": {**keys, "rotary_emb_base": train_theta,
                            "make_vocab_size_divisible_by": args.make_vocab_size_divisible_by},
        "reference": reference,
    }

    def verify_before_publish(tmp: str) -> None:
        if args.verify:

            diff = verify(args.hf_dir, tmp, tolerance=args.tolerance)
            meta["verify_max_abs_logit_diff"] = diff
            if not diff <= args.tolerance:
                if not args.force:
                    raise CheckpointError(f"verification failed: max abs logit diff {diff:.3e} > "
                                          f"{args.tolerance:g}; nothing written to {out}")
                meta["verify_failed"] = True

    write_checkpoint(out, weights, names, args.tp, vocab, padded, dtype, meta, tokenizer_dir=args.hf_dir,
                     before_publish=verify_before_publish)
    print(f"wrote {out}: TP={args.tp}, {dtype}, vocab {vocab} (padded {padded}), "
          f"rope theta {source_theta:g} -> {train_theta:g}")
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tp < 1:
        print("error: --tp must be >= 1", file=sys.stderr)
        return 2
    try:
        meta = convert(args)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if meta.get("verify_failed"):
        print("error: verification failed; output kept because of --force", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
