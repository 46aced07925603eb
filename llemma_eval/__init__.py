"""Llemma-style evaluation on lm-eval: MATH and GSM8k (greedy and maj@k) and held-out perplexity.

answers  - final-answer extraction and normalisation (MATH, GSM8k)
checker  - equivalence with a per-comparison timeout in a child process
voting   - majority voting by equivalence class
scoring  - score / rescore samples files in a pool of checkers
data     - the benchmarks' files from --data-dir (or the HF datasets cache)
models   - lm-eval backends that put BOS exactly once in rolling perplexity
runner   - one model -> results.json, samples/<task>.jsonl, results.md
runs     - every complete checkpoint of a training run
hooks    - the trainer's eval_after_checkpoint command
"""

import os

TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks")
