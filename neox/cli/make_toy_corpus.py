#!/usr/bin/env python
"""Generate a small, deterministic, math-flavoured stand-in for Proof-Pile-2.

Three components mirror the real dataset: ``arxiv`` (LaTeX papers),
``open-web-math`` (web Q&A with inline ``$...$``) and ``algebraic-stack``
(math code). Every document is built from templates whose numbers are actually
computed (gcds, roots, sums, matrix products, ...), so there is real structure
for a tiny model to learn.

Output layout (like Proof-Pile-2)::

    OUT/<component>/<split>/part-000.jsonl.zst   # lines: {"text": ..., "meta": {...}}

The same --seed and --scale always give byte-identical files.
"""

import argparse
from collections.abc import Sequence

from neox.data.toy_corpus import make_corpus


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the size of every split")
    args = p.parse_args(argv)
    make_corpus(args.out, args.seed, args.scale)


if __name__ == "__main__":
    main()
