#!/usr/bin/env python
"""Near-duplicate removal before tokenization (MinHash LSH over word n-grams).

The program is neox.cli.dedup; installed, the same is `llemma-neox dedup`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.cli.dedup")
