#!/usr/bin/env python
"""Build the whole toy dataset in one go: corpus -> tokenizer -> tokenized .bin/.idx.

    python tools/make_toy_data.py [--out data/toy]

Produces OUT/corpus/..., OUT/tokenizer.model and
OUT/tokenized/<component>_<split>_text_document.{bin,idx,manifest.json}.
Idempotent: OUT/.complete holds a hash of the tool sources, library versions and
arguments; when it matches, nothing is rebuilt. Otherwise everything is built in a
temporary sibling directory and swapped into place, so OUT is never half-written.
"""

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import time
from collections.abc import Sequence

from neox.cli import train_toy_tokenizer
from neox.data import toy_corpus as make_toy_corpus
from neox.paths import project_root

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # neox/: the sources below are hashed

SOURCES = ("data/toy_corpus.py", "cli/train_toy_tokenizer.py", "data/preprocess.py", "cli/make_toy_data.py")
LIBRARIES = ("sentencepiece", "zstandard", "megatron-core", "numpy")
STAMP = ".complete"


def build_hash(args: argparse.Namespace) -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        with open(os.path.join(PACKAGE, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    versions = {lib: importlib.metadata.version(lib) for lib in LIBRARIES}
    # --workers does not change the output, so it is not part of the key.
    params = {"seed": args.seed, "scale": args.scale, "vocab_size": args.vocab_size, "versions": versions}
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()


def build(tmp: str, args: argparse.Namespace) -> tuple[dict, dict[str, float]]:
    """Run the three steps into `tmp`; returns (summary dict, timings dict)."""
    timings = {}
    t0 = time.monotonic()
    corpus_stats = make_toy_corpus.make_corpus(os.path.join(tmp, "corpus"), args.seed, args.scale, verbose=False)
    timings["corpus"] = time.monotonic() - t0

    t0 = time.monotonic()
    model = os.path.join(tmp, "tokenizer.model")
    train_toy_tokenizer.train_tokenizer(os.path.join(tmp, "corpus"), model, args.vocab_size)
    timings["tokenizer"] = time.monotonic() - t0

    t0 = time.monotonic()
    from neox.data import preprocess as preprocess_data  # late: importing megatron.core takes several seconds

    datasets = {}
    for component in make_toy_corpus.COMPONENTS:
        for split in make_toy_corpus.SPLITS:
            m = preprocess_data.preprocess(
                [os.path.join(tmp, "corpus", component, split)],
                os.path.join(tmp, "tokenized", f"{component}_{split}"),
                model, append_eod=True, workers=args.workers, progress=False)
            docs, text_bytes = corpus_stats[component][split]
            datasets[f"{component}_{split}"] = {"documents": m["documents"], "tokens": m["tokens"],
                                                "text_bytes": text_bytes}
    timings["preprocess"] = time.monotonic() - t0
    # No timings in the summary: the whole tree stays byte-identical between rebuilds.
    summary = {"seed": args.seed, "scale": args.scale, "vocab_size": args.vocab_size, "datasets": datasets}
    return summary, timings


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(project_root(), "data", "toy"),
                   help="output directory (default: <repo>/data/toy)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--vocab-size", type=int, default=3001)
    p.add_argument("--workers", type=int, default=1, help="tokenization processes (output is identical)")
    p.add_argument("--force", action="store_true", help="rebuild even if the stamp matches")
    args = p.parse_args(argv)

    out = os.path.abspath(args.out)
    key = build_hash(args)
    stamp = os.path.join(out, STAMP)
    if not args.force and os.path.isfile(stamp):
        with open(stamp) as f:
            if f.read().strip() == key:
                print(f"{out} is up to date (stamp {key[:12]}), nothing to do")
                return

    start = time.monotonic()
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    old = os.path.join(parent, f".{name}.old-{os.getpid()}")
    try:
        summary, timings = build(tmp, args)
        with open(os.path.join(tmp, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
        with open(os.path.join(tmp, STAMP), "w") as f:
            f.write(key + "\n")
        # Swap: move the old tree aside first so OUT is always either old-complete or new-complete.
        if os.path.exists(out):
            os.rename(out, old)
        os.rename(tmp, out)
    finally:
        for d in (tmp, old):
            if os.path.exists(d):
                shutil.rmtree(d)

    print(f"built {out} in {time.monotonic() - start:.1f}s ("
          + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()) + ")")
    print(f"{'dataset':<28s} {'docs':>6s} {'tokens':>9s} {'text MB':>8s}")
    for name, d in summary["datasets"].items():
        print(f"{name:<28s} {d['documents']:6d} {d['tokens']:9d} {d['text_bytes'] / 1e6:8.3f}")


if __name__ == "__main__":
    main()
