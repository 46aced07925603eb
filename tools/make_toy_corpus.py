#!/usr/bin/env python
"""Generate a small, deterministic, math-flavoured stand-in for Proof-Pile-2.

The program is neox.cli.make_toy_corpus; installed, the same is `llemma-neox make_toy_corpus`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.cli.make_toy_corpus")
