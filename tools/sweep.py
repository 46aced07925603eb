#!/usr/bin/env python
"""Data-mixture sweeps: one short training run per mixture, then pick the mixture with the lowest
held-out loss (how Llemma chose 2:4:1 arXiv : web : code).

The program is neox.cli.sweep; installed, the same is `llemma-neox sweep`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.cli.sweep")
