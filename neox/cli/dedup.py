#!/usr/bin/env python
"""Near-duplicate removal before tokenization (MinHash LSH over word n-grams).

    python tools/dedup.py INPUT [INPUT ...] --out DIR [--text-key text] [--ngram 5] [--threshold 0.8]
        [--bands 24] [--rows 5] [--workers N] [--shard I/K]
    python tools/dedup.py merge INPUT [INPUT ...] --out DIR [same options]

INPUT is a file, a folder or a glob of JSON lines (.jsonl, .jsonl.zst, .jsonl.gz), Parquet or a
save_to_disk dataset. The kept documents are written under DIR in their input's own format and
relative names (JSON lines line for line; Parquet with all its columns), with DIR/clusters.jsonl
(each cluster's kept document and the removed ones, as [file, row from 0], with their estimated
Jaccard similarity) and DIR/dedup.json (options, library version, counts per source). With
--shard I/K only the signatures of the I-th of K groups of files are computed (DIR/parts/; a
finished part is never redone; a Slurm array runs one shard per task) and `merge` finds the
clusters and writes. The logic and where each default comes from: neox/data/dedup.py.
"""

import argparse
import sys
from collections.abc import Sequence

from neox.data import dedup
from neox.data.overlap import OverlapError, parse_shard


def parse_args(argv: Sequence[str] | None) -> tuple[bool, argparse.Namespace, argparse.ArgumentParser]:
    args = list(sys.argv[1:] if argv is None else argv)
    merge = bool(args) and args[0] == "merge"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", help="files, folders or globs (JSON lines, Parquet, save_to_disk)")
    p.add_argument("--out", required=True)
    p.add_argument("--text-key", default="text", help="the key or column of the text (default: text)")
    defaults = dedup.Params()
    p.add_argument("--ngram", type=int, default=defaults.ngram, help="words per shingle (datatrove's default 5)")
    p.add_argument("--threshold", type=float, default=defaults.threshold,
                   help="estimated Jaccard similarity at which a document duplicates another (0.8)")
    p.add_argument("--bands", type=int, default=defaults.bands, help="LSH bands (24)")
    p.add_argument("--rows", type=int, default=defaults.rows, help="MinHash values per band (5)")
    p.add_argument("--workers", type=int, default=1, help="processes computing signatures (one file each)")
    p.add_argument("--shard", default=None, help="I/K: signatures of the I-th (from 0) of K groups of files only")
    return merge, p.parse_args(args[1:] if merge else args), p


def main(argv: Sequence[str] | None = None) -> int:
    merge, args, p = parse_args(argv)
    try:
        shard = parse_shard(args.shard) if args.shard else None
    except OverlapError as e:
        p.error(str(e))  # a usage error: exit status 2
    params = dedup.Params(ngram=args.ngram, threshold=args.threshold, bands=args.bands, rows=args.rows,
                          key=args.text_key)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if merge:
        dedup.merge(dedup.prepare(args.inputs, params), params, args.out, log)
    else:
        dedup.run(args.inputs, args.out, params, shard=shard, workers=args.workers, log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
