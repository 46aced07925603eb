#!/usr/bin/env python
"""A data mixture from today's corpora in one command: dedup, tokenize, decontaminate, mixture config.

The program is neox.cli.prepare_mixture; installed, the same is `llemma-neox prepare_mixture`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.cli.prepare_mixture")
