#!/usr/bin/env python
"""Build the whole toy dataset in one go: corpus -> tokenizer -> tokenized .bin/.idx.

The program is neox.cli.make_toy_data; installed, the same is `llemma-neox make_toy_data`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.cli.make_toy_data")
