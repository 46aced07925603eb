#!/usr/bin/env python
"""Tokenize a downloaded Proof-Pile-2 (plus the general-data samples) into exactly the paths that
llemma_configs/data_mixture.yml names.

The program is neox.cli.prepare_proof_pile_2; installed, the same is `llemma-neox prepare_proof_pile_2`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.cli.prepare_proof_pile_2")
