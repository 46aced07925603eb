#!/usr/bin/env python
"""Evaluate the Llemma way on lm-eval: MATH and GSM8k (greedy and maj@k), held-out perplexity.

The program is llemma_eval.cli; installed, the same is `llemma-neox run_eval`.
"""

from _entry import run

if __name__ == "__main__":
    run("llemma_eval.cli")
