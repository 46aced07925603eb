#!/usr/bin/env python
"""Step time with and without document masking on the benchmark model.

    python bench/document_masking.py [--steps 8] [--rounds 3] [--mean-doc 128] [--quick]

The benchmark model of bench/train_throughput.py (Llama, 8 layers, hidden 512, 8 heads,
intermediate 1376, vocab 32016, sequence 512, micro batch 4), bf16 weights, in one process (TP 1):
a forward and backward of packed sequences whose documents have random lengths (geometric, mean
--mean-doc tokens, each ending with the EOD token), timed three ways in interleaved rounds:
  off         one causal sequence (reset_attention_mask and reset_position_ids false): SDPA's
              causal kernel, no mask
  positions   reset_position_ids only (RoPE tables gathered per position, still no mask)
  masked      both: the block-causal mask [b, 1, s, s] built from the EODs, SDPA with that mask
The step time is the median over the measured steps; ratios are per round, then the median.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_throughput as tt  # noqa: E402  (bench/: the benchmark model's shape)

from neox.data.dataset import Packing, document_fields  # noqa: E402

EOD = 2
VARIANTS = {"off": None, "positions": Packing(EOD, attention=False, positions=True),
            "masked": Packing(EOD, attention=True, positions=True)}


def packed_batch(shape: dict, mean_doc: int, seed: int) -> torch.Tensor:
    """[micro, seq] token ids with an EOD ending each document (geometric lengths, mean mean_doc)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, shape["vocab_size"], (shape["micro_batch"], shape["seq_length"] + 1), generator=gen)
    ends = torch.rand(tokens.shape, generator=gen) < 1.0 / mean_doc
    return tokens.masked_fill(ends, EOD)


def build(shape: dict, packing_keys: dict):
    from neox.config import NeoXConfig, _coerce_all, validate
    from neox.model.llama import LlamaModel

    flat = {**tt.neox_flat(shape, 10, "/unused", "/tmp", tag="masking"), **packing_keys, "compile_blocks": False}
    cfg = validate(NeoXConfig.from_flat(_coerce_all(flat)), dry_run=True)  # no data is read
    model = LlamaModel(cfg, dtype=torch.bfloat16).train()
    model.init_weights(1)
    return model


def time_variant(model, batch: torch.Tensor, packing, steps: int) -> float:
    tokens, labels = batch[:, :-1], batch[:, 1:]
    fields = document_fields(tokens, packing) if packing is not None else {}
    times = []
    for _ in range(steps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        model(tokens, labels, None, fields.get("segment_ids"), fields.get("position_ids")).backward()
        times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mean-doc", type=int, default=128, help="mean document length in tokens")
    p.add_argument("--quick", action="store_true", help="tiny model (smoke test, numbers meaningless)")
    args = p.parse_args(argv)
    tt.init_single_process_group()
    shape = tt.SHAPES["quick" if args.quick else "bench"]
    model = build(shape, {})  # the same weights for every variant: the masks are inputs, not weights
    batch = packed_batch(shape, args.mean_doc, seed=0)
    docs = int((batch[:, :-1] == EOD).sum()) + shape["micro_batch"]
    rounds = []
    for r in range(args.rounds):
        times = {name: time_variant(model, batch, packing, args.steps) for name, packing in VARIANTS.items()}
        rounds.append(times)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in times.items()), file=sys.stderr)
    tokens = shape["micro_batch"] * shape["seq_length"]
    out = {"benchmark": "document_masking", "shape": shape, "documents_in_batch": docs, "tokens_per_step": tokens,
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    for name in VARIANTS:
        out[f"{name}_step_s"] = statistics.median(r[name] for r in rounds)
        out[f"{name}_tokens_per_s"] = tokens / out[f"{name}_step_s"]
    for name in ("positions", "masked"):
        out[f"{name}_vs_off"] = statistics.median(r[name] / r["off"] for r in rounds)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
