#!/usr/bin/env python
"""A data mixture from today's corpora in one command: dedup, tokenize, decontaminate, mixture config.

    python tools/prepare_mixture.py RECIPE.yml [--workers N]

RECIPE.yml names the sources (paths in any format the readers take: JSON lines, Parquet, save_to_disk
datasets, hub snapshot folders; a text key and a weight each, validation paths optionally), the
tokenizer, the dedup options and the test sets to decontaminate against (neox/runs/mixture.py and
docs/data.md, "A mixture in one command"). Everything is written under the recipe's `out`, ending
with OUT/data_mixture.yml: give it to deepy.py beside a model config. Rerun after a crash: finished
steps are skipped.
"""

import argparse
import os
import sys
from collections.abc import Sequence

from neox.runs import mixture


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    recipe = mixture.load_recipe(args.recipe)  # checked whole before any work
    path = mixture.prepare(recipe, workers=args.workers, log=lambda m: print(m, file=sys.stderr))
    print(f"wrote {path}: python deepy.py train.py MODEL.yml {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
