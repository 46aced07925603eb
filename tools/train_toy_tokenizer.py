#!/usr/bin/env python
"""Train a small Llama-style SentencePiece tokenizer on the train split of the toy corpus.

The program is neox.cli.train_toy_tokenizer; installed, the same is `llemma-neox train_toy_tokenizer`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.cli.train_toy_tokenizer")
