#!/usr/bin/env python
"""Tokenize a downloaded Proof-Pile-2 (plus the general-data samples) into exactly the paths that
llemma_configs/data_mixture.yml names.

    python tools/prepare_proof_pile_2.py --proof-pile-2 DIR --tokenizer-model FILE [--out data/llemma]
        [--pile-sample DIR] [--redpajama-github DIR] [--workers N] [--allow-empty]

Input layout (as published): DIR/{arxiv,open-web-math,algebraic-stack}/{train,validation,test}/*.jsonl.zst.
The Pile sample and RedPajama GitHub sample are directories of *.jsonl(.zst) used for training only.
Output: <out>/<component>_<split>_text_document.{bin,idx,manifest.json}. Each component is
resumable (tools/preprocess_data.py keeps finished per-file shards), so rerun after a crash.
Some published AlgebraicStack files are empty (13 bytes): they are skipped with --allow-empty.
"""

import argparse
import os
import sys

PROOF_PILE_2 = ["arxiv", "open-web-math", "algebraic-stack"]
SPLITS = ["train", "validation", "test"]


def plan(args) -> list[tuple[str, str]]:
    """(input directory, output prefix) for every component and split that will be written."""
    jobs = []
    for comp in PROOF_PILE_2:
        for split in SPLITS:
            src = os.path.join(args.proof_pile_2, comp, split)
            if not os.path.isdir(src):
                raise SystemExit(f"error: missing Proof-Pile-2 directory: {src}")
            jobs.append((src, os.path.join(args.out, f"{comp}_{split}")))
    for comp, src in (("pile-sample", args.pile_sample), ("redpajama-github", args.redpajama_github)):
        if src:
            if not os.path.isdir(src):
                raise SystemExit(f"error: missing directory for {comp}: {src}")
            jobs.append((src, os.path.join(args.out, f"{comp}_train")))
        else:
            print(f"warning: no {comp} directory given; data_mixture.yml names "
                  f"{os.path.join(args.out, comp + '_train_text_document')}", file=sys.stderr)
    return jobs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--proof-pile-2", required=True)
    p.add_argument("--tokenizer-model", required=True)
    p.add_argument("--out", default="data/llemma")
    p.add_argument("--pile-sample", default=None)
    p.add_argument("--redpajama-github", default=None)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--allow-empty", action="store_true", default=True,
                   help="skip empty input files (default on: AlgebraicStack has some)")
    args = p.parse_args(argv)
    if not os.path.isfile(args.tokenizer_model):
        print(f"error: tokenizer model not found: {args.tokenizer_model}", file=sys.stderr)
        return 1
    from neox.cli import preprocess_data

    for src, prefix in plan(args):
        if os.path.isfile(prefix + "_text_document.manifest.json"):
            print(f"{prefix}_text_document: done already")
            continue
        print(f"{src} -> {prefix}_text_document")
        try:
            preprocess_data.preprocess([src], prefix, args.tokenizer_model, append_eod=True,
                                       workers=args.workers, allow_empty=args.allow_empty)
        except preprocess_data.PreprocessError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
