#!/usr/bin/env python
"""Tokenize a downloaded Proof-Pile-2 (plus the general-data samples) into exactly the paths that
llemma_configs/data_mixture.yml names.

    python tools/prepare_proof_pile_2.py --proof-pile-2 DIR --tokenizer-model FILE [--out data/llemma]
        [--pile-sample DIR] [--redpajama-github DIR] [--workers N] [--allow-empty]
        [--decontaminate-against TEST.jsonl [...] [--decontaminate-key problem ...] [--decontaminate-n 13]]

Input layout (as published): DIR/{arxiv,open-web-math,algebraic-stack}/{train,validation,test}/*.jsonl.zst.
The Pile sample and RedPajama GitHub sample are directories of *.jsonl(.zst) used for training only.
Output: <out>/<component>_<split>_text_document.{bin,idx,manifest.json}. Each component is
resumable (tools/preprocess_data.py keeps finished per-file shards), so rerun after a crash.
Some published AlgebraicStack files are empty (13 bytes): they are skipped with --allow-empty.

With --decontaminate-against, the training prefixes are then filtered (tools/check_overlap.py
filter: documents sharing a 13-gram with a test text, and exact duplicates, dropped) into
<out>/decontaminated/, which llemma_configs/data_mixture_decontaminated.yml names; the originals stay
(data_mixture.yml, what the paper trained on). Validation and test splits are not filtered.
"""

import argparse
import os
import sys
from collections.abc import Sequence

PROOF_PILE_2 = ["arxiv", "open-web-math", "algebraic-stack"]
SPLITS = ["train", "validation", "test"]


def plan(args: argparse.Namespace) -> list[tuple[str, str]]:
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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--proof-pile-2", required=True)
    p.add_argument("--tokenizer-model", required=True)
    p.add_argument("--out", default="data/llemma")
    p.add_argument("--pile-sample", default=None)
    p.add_argument("--redpajama-github", default=None)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--allow-empty", action="store_true", default=True,
                   help="skip empty input files (default on: AlgebraicStack has some)")
    p.add_argument("--decontaminate-against", nargs="+", default=None, metavar="TEST.jsonl[=FIELD,...]",
                   help="test sets (jsonl; =question,answer names a file's own text fields) to filter the "
                        "training prefixes against, into <out>/decontaminated")
    p.add_argument("--decontaminate-key", action="append", default=None,
                   help="text field(s) of the test sets (default: problem and solution)")
    p.add_argument("--decontaminate-n", type=int, default=None, help="n-gram length (default 13)")
    args = p.parse_args(argv)
    if not os.path.isfile(args.tokenizer_model):
        print(f"error: tokenizer model not found: {args.tokenizer_model}", file=sys.stderr)
        return 1
    if args.decontaminate_against:  # the test sets are read now, not after hours of tokenizing
        from neox.data import decontaminate, overlap

        try:
            keys = args.decontaminate_key or ["problem", "solution"]
            decontaminate.read_test_files(decontaminate.parse_test_files(args.decontaminate_against, keys))
        except overlap.OverlapError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    from neox.data import preprocess as preprocess_data

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
    if args.decontaminate_against:
        return decontaminate_train(args, [prefix + "_text_document" for _, prefix in plan(args)
                                          if prefix.endswith("_train")])
    return 0


def decontaminate_train(args: argparse.Namespace, prefixes: list[str]) -> int:
    from neox.data import decontaminate, overlap

    out = os.path.join(args.out, "decontaminated")
    if os.path.isfile(os.path.join(out, decontaminate.RUN_FILE)):
        print(f"{out}: decontaminated already (remove it to redo)")
        return 0
    try:
        decontaminate.run(args.decontaminate_against, args.decontaminate_key or ["problem", "solution"], prefixes,
                          args.tokenizer_model, out, n=args.decontaminate_n or decontaminate.DEFAULT_N,
                          workers=args.workers, force=True, log=lambda m: print(m, file=sys.stderr))
    except overlap.OverlapError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"decontaminated training data in {out} (llemma_configs/data_mixture_decontaminated.yml); "
          f"report: {out}/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
