#!/usr/bin/env python
"""Test-set overlap (Llemma's 30-gram check) of test examples with tokenized .bin/.idx training data.

The program is neox.cli.check_overlap; installed, the same is `llemma-neox check_overlap`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.cli.check_overlap")
