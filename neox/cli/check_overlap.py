#!/usr/bin/env python
"""Test-set overlap (Llemma's 30-gram check) of test examples with tokenized .bin/.idx training data.

    python tools/check_overlap.py --test-file F.jsonl [--test-key problem] [--test-key solution]
        --data PREFIX [PREFIX ...] --tokenizer-model M [--n 30] [--mode tokens|words]
        [--workers N] [--shard I/K] --out DIR
    python tools/check_overlap.py merge DIR [DIR ...] [--out DIR]
    python tools/check_overlap.py join --hits DIR --samples SAMPLES.jsonl [--key K] [--test-file F]
    python tools/check_overlap.py filter --test-file F.jsonl [--test-file G.jsonl ...] [--test-key K ...]
        --data PREFIX [PREFIX ...] --tokenizer-model M [--n 13] [--mode tokens|words]
        [--workers N] [--shard I/K] --out DIR [--force]
    python tools/check_overlap.py filter-merge DIR [--force]

The check writes DIR/hits.jsonl (one row per test example, key and document sharing an n-gram)
and DIR/summary.json. With --shard I/K (I from 0) it scans the I-th of K token-balanced, contiguous
document ranges of every prefix into DIR/parts/ and `merge` combines the K parts. A finished part
is never redone. `join` writes Llemma's table: accuracy with and without hits, per MATH level.
`filter` (decontamination before training) writes DIR/<name>.{bin,idx,manifest.json} for every
--data prefix without the documents that share an n-gram (default 13) with a test text or repeat an
earlier document exactly, plus DIR/decontamination.json, DIR/dropped.jsonl and DIR/report.md; with
--shard it scans into DIR/parts/ and `filter-merge DIR` writes the prefixes. The logic is in
neox/data/overlap.py and neox/data/decontaminate.py.
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence

from neox.data import overlap


def _scan(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test-file", required=True, help="jsonl, one test example per line")
    p.add_argument("--test-key", action="append", help="text field(s) to check (default: problem and solution)")
    p.add_argument("--data", nargs="+", required=True, help=".bin/.idx prefixes (without the extension)")
    p.add_argument("--tokenizer-model", required=True,
                   help="the tokenizer the data was tokenized with (SentencePiece .model or tokenizer.json)")
    p.add_argument("--n", type=int, default=30, help="n-gram length (Llemma: 30)")
    p.add_argument("--mode", choices=overlap.MODES, default="tokens",
                   help="tokens: our token ids; words: whitespace words of the decoded text (Llemma's)")
    p.add_argument("--workers", type=int, default=1, help="processes scanning in parallel")
    p.add_argument("--shard", default=None, help="I/K: scan only the I-th (from 0) of K document ranges")
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        shard = overlap.parse_shard(args.shard) if args.shard else (0, 1)
    except overlap.OverlapError as e:
        p.error(str(e))  # a usage error: exit status 2
    if args.workers < 1:
        p.error(f"--workers {args.workers}: must be at least 1")
    keys = args.test_key or ["problem", "solution"]
    res = overlap.run(args.test_file, keys, args.data, args.tokenizer_model, args.out, n=args.n, mode=args.mode,
                      workers=args.workers, shard=shard, progress=not args.no_progress,
                      log=lambda m: print(m, file=sys.stderr))
    if shard[1] == 1:
        hits = res["test_examples_with_hits"]
        print(f"{res['test_examples']} test examples, {hits['any']} with hits "
              f"({', '.join(f'{k}: {hits[k]}' for k in keys)}); {res['tokens_scanned']} tokens in "
              f"{res['seconds']:.1f} s; wrote {args.out}/hits.jsonl and summary.json")
    else:
        print(f"shard {shard[0]}/{shard[1]}: {res['hits']} hit rows; run `merge {args.out}` when all shards are done")


def _filter(argv):
    from neox.data import decontaminate

    p = argparse.ArgumentParser(prog="check_overlap.py filter",
                                description="write the data without documents that overlap test sets or repeat")
    p.add_argument("--test-file", action="append", required=True,
                   help="jsonl test set (repeat for several); F.jsonl=question,answer gives a file its own fields")
    p.add_argument("--test-key", action="append", help="text field(s) to check (default: problem and solution)")
    p.add_argument("--data", nargs="+", required=True, help=".bin/.idx prefixes (without the extension)")
    p.add_argument("--tokenizer-model", required=True, help="the tokenizer the data was tokenized with")
    p.add_argument("--n", type=int, default=decontaminate.DEFAULT_N,
                   help=f"n-gram length (default {decontaminate.DEFAULT_N}, as current math pretraining; "
                        "Llemma's report used 30)")
    p.add_argument("--mode", choices=overlap.MODES, default="tokens")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--shard", default=None, help="I/K: scan only the I-th of K ranges; then filter-merge DIR")
    p.add_argument("--out", required=True, help="directory of the filtered prefixes (same base names)")
    p.add_argument("--force", action="store_true", help="replace filtered prefixes that exist")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        shard = overlap.parse_shard(args.shard) if args.shard else (0, 1)
    except overlap.OverlapError as e:
        p.error(str(e))
    if args.workers < 1:
        p.error(f"--workers {args.workers}: must be at least 1")
    res = decontaminate.run(args.test_file, args.test_key or ["problem", "solution"], args.data,
                            args.tokenizer_model, args.out, n=args.n, mode=args.mode, workers=args.workers,
                            shard=shard, force=args.force, progress=not args.no_progress,
                            log=lambda m: print(m, file=sys.stderr))
    if shard[1] == 1:
        print(f"wrote {len(res['outputs'])} filtered prefixes, {args.out}/decontamination.json, dropped.jsonl "
              "and report.md")
    else:
        print(f"shard {shard[0]}/{shard[1]}: {res['hits']} hits; run `filter-merge {args.out}` when all shards "
              "are done")


def _filter_merge(argv):
    from neox.data import decontaminate

    p = argparse.ArgumentParser(prog="check_overlap.py filter-merge", description="write the filtered prefixes")
    p.add_argument("out", help="the filter's --out directory")
    p.add_argument("--force", action="store_true", help="replace filtered prefixes that exist")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    res = decontaminate.merge(args.out, force=args.force, progress=not args.no_progress,
                              log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {len(res['outputs'])} filtered prefixes to {args.out}")


def _merge(argv):
    p = argparse.ArgumentParser(prog="check_overlap.py merge", description="combine shard parts into one result")
    p.add_argument("dirs", nargs="+", help="--out directories of the shards")
    p.add_argument("--out", default=None, help="where to write hits.jsonl and summary.json (default: first DIR)")
    args = p.parse_args(argv)
    res = overlap.merge(args.dirs, args.out)
    print(f"merged {res['parts']} parts: {res['test_examples_with_hits']['any']} of {res['test_examples']} test "
          f"examples with hits; wrote {args.out or args.dirs[0]}/hits.jsonl and summary.json")


def _join(argv):
    p = argparse.ArgumentParser(prog="check_overlap.py join", description="accuracy with and without overlap")
    p.add_argument("--hits", required=True, help="the check's --out directory")
    p.add_argument("--samples", required=True, help="tools/run_eval.py's samples/<task>.jsonl")
    p.add_argument("--key", action="append", help="count hits of these keys only (default: all checked keys)")
    p.add_argument("--test-file", default=None, help="default: the one the check ran on")
    args = p.parse_args(argv)
    table = overlap.join(args.hits, args.samples, args.test_file, args.key)
    md = overlap.accuracy_markdown(table)
    overlap.write_json_atomic(os.path.join(args.hits, "accuracy_by_overlap.json"), table)
    with open(os.path.join(args.hits, "accuracy_by_overlap.md"), "w") as f:
        f.write(md)
    print(md, end="")


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = {"merge": _merge, "join": _join, "filter": _filter, "filter-merge": _filter_merge}.get(
        argv[0] if argv else None, _scan)  # type: ignore[arg-type]  # typeshed's dict.get takes no None key
    try:
        command(argv[1:] if command is not _scan else argv)
    except overlap.OverlapError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted (finished parts are kept; rerun to resume)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
