#!/usr/bin/env python
"""Training entry point: one process per GPU.

Started by deepy.py (through the DeepSpeed launcher, with the resolved config), or directly by
a launcher that sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT (slurm/launch.sh
under srun, or torchrun):

    python train.py CONFIG.yml [MORE.yml ...] [-o KEY=VALUE ...]

In the direct form the allocated GPU count decides the cluster size: data parallelism, micro
batch and gradient accumulation are re-derived so the global batch stays exactly as configured.
"""

import argparse
import atexit
import base64
import faulthandler
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from neox import exit_status
from neox.launch import stop_request

stop_request.listen()  # a SIGTERM / SIGUSR1 during the imports below is a stop request too
from neox.train.speed import use_compile_cache  # noqa: E402 - each import below waits for the call above it

use_compile_cache()  # before megatron-core is imported: it sets torch's default cache directory
from neox.launch.quiet import quiet_library_messages  # noqa: E402

quiet_library_messages()

from neox.config import ConfigError, NeoXConfig, config_from_flat, fit_to_cluster, load_config  # noqa: E402
from neox.launch.local_launch import RANK_CONFIG_FLAG  # noqa: E402


def config_from_args(argv: Sequence[str] | None) -> NeoXConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*")
    p.add_argument("-o", "--override", action="append", default=[])
    p.add_argument(RANK_CONFIG_FLAG, dest="neox_config_b64", help="resolved config, written by deepy.py")
    p.add_argument("--local_rank", type=int, default=None)  # passed by the DeepSpeed launcher
    args = p.parse_args(argv)
    if args.neox_config_b64:
        return config_from_flat(json.loads(base64.urlsafe_b64decode(args.neox_config_b64.encode())))
    if not args.configs:
        p.error("give config files (or start through deepy.py)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    nodes = int(os.environ.get("NEOX_NUM_NODES") or os.environ.get("SLURM_NNODES") or
                world // int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    if world % nodes:
        raise ConfigError(f"WORLD_SIZE {world} is not a multiple of the node count {nodes}")
    # A config that names no cluster (GPT-NeoX's do not) takes the one it was started on.
    cluster = {"num_nodes": nodes, "num_gpus": world // nodes}
    cfg = load_config(args.configs, args.override, unset_defaults=cluster)
    if "WORLD_SIZE" not in os.environ and cfg.world_size > 1:
        raise ConfigError(f"train.py runs one process per GPU and was started as a single process, but the config "
                          f"needs {cfg.world_size}: start it with python deepy.py train.py {' '.join(args.configs)} "
                          "(or torchrun --nproc_per_node=N train.py ..., or slurm/)")
    if (nodes, world // nodes) != (cfg.parallel.num_nodes, cfg.parallel.num_gpus):
        before = (f"{cfg.parallel.num_nodes} x {cfg.parallel.num_gpus}", cfg.batch.train_micro_batch_size_per_gpu,
                  cfg.batch.gradient_accumulation_steps)
        cfg = fit_to_cluster(cfg, nodes, world // nodes)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"cluster: {world} GPUs ({nodes} nodes x {world // nodes}) instead of {before[0]}: "
                  f"micro batch {before[1]} -> {cfg.batch.train_micro_batch_size_per_gpu}, accumulation {before[2]} -> "
                  f"{cfg.batch.gradient_accumulation_steps}, global batch {cfg.batch.train_batch_size} kept",
                  flush=True)
    return cfg


def main(argv: Sequence[str] | None = None) -> None:
    from neox.errors import NeoxError
    from neox.launch.stop_request import follow_launcher

    follow_launcher()
    faulthandler.register(signal.SIGUSR2, all_threads=True)  # kill -USR2 <rank>: its Python stacks to stderr

    try:
        cfg = config_from_args(argv)
        from neox.train.trainer import train

        train(cfg)
    except NeoxError as e:  # one line naming the key or file, not a traceback; a config error 2, as in deepy.py
        print(f"error: {e}", file=sys.stderr, flush=True)
        exit_now(e.exit_status)
    except SystemExit as e:  # a rank that stops with rank 0 (which names the reason), or the requeue exit
        exit_now(e.code if isinstance(e.code, int) else exit_status.FAILED)
    except RuntimeError as e:
        if not peer_lost(e):
            raise
        # another rank died (killed, crashed): the launcher names it; here one line, not gloo's stack
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: rank {os.environ.get('RANK', '0')}: a collective failed because another rank is gone "
              f"({first[:200]})", file=sys.stderr, flush=True)
        exit_now(exit_status.FAILED)


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` without the interpreter's teardown. After a stop on one rank its peers
    may be gone; destroying gloo's process group then can abort the process (SIGABRT, "terminate
    called without an active exception"), which turned a clean exit 1 into 134. Everything that
    must reach disk was written (the metrics file is appended and closed per record); the
    interpreter's exit functions (the save directory's lock release among them) still run."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def peer_lost(e: RuntimeError) -> bool:
    """A collective's error because a peer process went away (gloo's closed or reset connection,
    NCCL's remote error). Other distributed errors (a port already in use) keep their traceback."""
    text = str(e)
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                   "remote process exited", "NCCL communicator was aborted", "ncclRemoteError"))


if __name__ == "__main__":
    main()
