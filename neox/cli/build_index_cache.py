#!/usr/bin/env python
"""Build the training and validation sample-index caches ahead of time, on a CPU node.

    python tools/build_index_cache.py CONFIG.yml [MORE.yml ...] [-o KEY=VALUE ...]

Same config as deepy.py. Writes the caches the trainer would build on its first start (into
data_cache_dir, keyed by the data files' fingerprint and, inside, by seed, sequence length,
sample counts and weights), prints the mixture table, and exits. A training job that finds them
just loads them, on every rank and every restart.
"""

import argparse
import sys
import time
from collections.abc import Sequence

from neox.config import ConfigError, load_config


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+")
    p.add_argument("-o", "--override", action="append", default=[])
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.configs, args.override)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch

    from neox.data.dataset import (
        build_eval_datasets,
        build_tokenizer,
        build_train_dataset,
        cache_dir,
        format_mixture,
        mixture_table,
    )
    from neox.launch.ports import free_port

    # megatron's builder expects a process group: a world of one
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    t0 = time.time()
    tokenizer = build_tokenizer(cfg)
    train = build_train_dataset(cfg, tokenizer)
    if cfg.data.valid_data_paths and cfg.logging.eval_iters > 0:
        build_eval_datasets(cfg, tokenizer, cfg.logging.eval_iters * cfg.batch.train_micro_batch_size_per_gpu
                            * cfg.data_parallel_size)
    print(format_mixture(mixture_table(train, cfg)))
    print(f"index caches ready in {cache_dir(cfg, cfg.data.train_data_paths)} ({time.time() - t0:.1f} s)")
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
