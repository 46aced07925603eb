#!/usr/bin/env python
"""Tokenize documents (JSON lines, Parquet, Hugging Face datasets) into a megatron-core indexed dataset (.bin/.idx).

The program is neox.cli.preprocess_data; installed, the same is `llemma-neox preprocess_data`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.cli.preprocess_data")
