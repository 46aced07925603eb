#!/usr/bin/env python
"""Launch training the GPT-NeoX way: resolve and validate the config, then start the processes.

    python deepy.py train.py CONFIG.yml [MORE.yml ...] [-o KEY=VALUE ...] [--dry-run]

Nothing is spawned until the whole config has been validated. ``--dry-run`` prints the resolved
config (underscored GPT-NeoX keys) plus a ``derived`` object as one JSON object and exits.
"""

import argparse
import base64
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from neox.config import ConfigError, derived, load_config  # noqa: E402
from neox.ports import free_port  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("script", help="training script, normally train.py")
    p.add_argument("configs", nargs="+", help="YAML files, merged in order")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key; dotted keys reach nested values (optimizer.params.lr=3e-4)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    return p.parse_args(argv)


def encode_config(flat: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(flat).encode()).decode()


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.configs, args.override, dry_run=args.dry_run)
        if not os.path.isfile(args.script):
            raise ConfigError(f"training script not found: {args.script}")
        info = derived(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in cfg.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.dry_run:
        from neox.planner import format_plan

        print(format_plan(cfg, info), file=sys.stderr)
        print(json.dumps({**cfg.to_flat(), "derived": info}))
        return 0

    if cfg.parallel.num_nodes > 1:
        print(f"error: num_nodes={cfg.parallel.num_nodes}: deepy.py starts processes on this node only; "
              "launch multi-node runs with the scripts in slurm/ (or -o num_nodes=1)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    import torch

    if not torch.cuda.is_available():  # CPU: DeepSpeed's CPU accelerator, gloo, 1 thread team per rank
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.parallel.num_gpus)))
    print("deepy: " + json.dumps({"derived": info}), file=sys.stderr)
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner",
           "--num_gpus", str(cfg.parallel.num_gpus),
           "--master_port", str(cfg.parallel.master_port or free_port()),
           args.script, "--neox-config-b64", encode_config(cfg.to_flat())]
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
