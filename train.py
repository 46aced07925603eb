#!/usr/bin/env python
"""Training entry point, started once per GPU by deepy.py (through the DeepSpeed launcher)."""

import argparse
import base64
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from neox.config import config_from_flat  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--neox-config-b64", required=True, help="resolved config, written by deepy.py")
    p.add_argument("--local_rank", type=int, default=None)  # passed by the DeepSpeed launcher
    args = p.parse_args()
    flat = json.loads(base64.urlsafe_b64decode(args.neox_config_b64.encode()))
    from neox.checkpoints import CheckpointError
    from neox.training import train

    try:
        train(config_from_flat(flat))
    except CheckpointError as e:  # a named file problem: one line, not a traceback per rank
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
