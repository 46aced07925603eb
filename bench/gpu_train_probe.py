#!/usr/bin/env python
"""train.py, plus the CUDA memory peak of this process written when it exits (also on exit 75).

Launched by bench/gpu_check.py as `deepy.py bench/gpu_train_probe.py CONFIG.yml`: the trainer
runs unchanged; with GPU_CHECK_MEMORY_FILE set, rank R writes `<file>.rank<R>` with
torch.cuda.max_memory_allocated / max_memory_reserved in bytes."""

import atexit
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def write_memory_peak():
    import torch

    path = os.environ.get("GPU_CHECK_MEMORY_FILE")
    if not path or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    with open(f"{path}.rank{os.environ.get('RANK', '0')}", "w") as f:
        json.dump({"max_memory_allocated": torch.cuda.max_memory_allocated(),
                   "max_memory_reserved": torch.cuda.max_memory_reserved()}, f)


if __name__ == "__main__":
    atexit.register(write_memory_peak)
    from neox.cli.train import main

    main()
