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
import re
import signal
import sys
import threading
from collections.abc import Sequence
from typing import IO, TextIO

from neox import exit_status
from neox.config import ConfigError, NeoXConfig, derived, load_config
from neox.launch.local_launch import RANK_CONFIG_FLAG
from neox.launch.ports import free_port
from neox.launch.stop_request import SIGNALS as STOP_SIGNALS


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("script", help="training script, normally train.py")
    p.add_argument("configs", nargs="*", help="YAML files, merged in order")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key; dotted keys reach nested values (optimizer.params.lr=3e-4)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    args = p.parse_args(argv)
    if args.script.endswith((".yml", ".yaml")):
        p.error(f"the first argument must be the training script, then the configs: "
                f"python deepy.py train.py {' '.join([args.script, *args.configs])}")
    if not args.configs:
        p.error("give at least one config file after the training script: python deepy.py train.py CONFIG.yml")
    return args


def check_process_count(num_gpus: int) -> None:
    """One process per GPU: never more processes than GPUs (or CPU cores on a CPU machine)."""
    import torch

    if torch.cuda.is_available():
        found, what = torch.cuda.device_count(), "GPUs"
    else:
        found, what = os.cpu_count() or 1, "CPU cores and no GPU"
    if num_gpus > found:
        raise ConfigError(f"key 'num_gpus' ({num_gpus}) asks for {num_gpus} processes on this node, but it has "
                          f"{found} {what}; lower num_gpus (and model_parallel_size) or use slurm/ for more nodes")


def first_build_notice() -> str:
    """A line to print before DeepSpeed compiles its CPU communication op for the first time."""
    from torch.utils.cpp_extension import _get_build_directory

    try:
        built = os.path.isdir(_get_build_directory("deepspeed_shm_comm", verbose=False))
    except Exception:  # a private helper; if it moves, say nothing rather than fail
        return ""
    if built:
        return ""
    return ("deepy: first run on this machine: DeepSpeed compiles its CPU communication op (deepspeed_shm_comm) "
            "with the C++ compiler before training starts (about 3 minutes on 2 cores; later runs reuse it)")


def rank_command(script: str) -> list:
    """How each rank is started: a script file as given; ``train.py`` where there is no such file
    (an installed wheel, any working directory) is the packaged trainer, the same code."""
    if os.path.isfile(script):
        return [sys.executable, "-u", script]
    if os.path.basename(script) == "train.py":
        return [sys.executable, "-u", "-m", "neox.cli.train"]
    raise ConfigError(f"training script not found: {script}")


def encode_config(flat: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(flat).encode()).decode()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.configs, args.override, dry_run=args.dry_run)
        rank_cmd = rank_command(args.script)
        info = derived(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_status.BAD_INPUT
    for w in cfg.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.dry_run:
        from neox.model.planner import format_plan

        print(format_plan(cfg, info), file=sys.stderr)
        print(json.dumps({**cfg.to_flat(), "derived": info, "gpt_neox": cfg.gpt_neox}))
        return 0

    stop_before_spawn = note_stop_requests()
    if cfg.parallel.num_nodes > 1:
        print(f"error: num_nodes={cfg.parallel.num_nodes}: deepy.py starts processes on this node only; "
              "launch multi-node runs with the scripts in slurm/ (or -o num_nodes=1)", file=sys.stderr)
        return exit_status.BAD_INPUT
    try:
        check_process_count(cfg.parallel.num_gpus)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_status.BAD_INPUT
    from neox.errors import NeoxError

    try:  # seconds, before anything is spawned (train.py checks on rank 0 when started without deepy)
        check_before_spawn(cfg)
    except NeoxError as e:  # data, tokenizer or save directory: the data tools' status
        print(f"error: {e}", file=sys.stderr)
        return e.exit_status
    from neox.data.check import DATA_CHECKED_ENV

    env = {**os.environ, DATA_CHECKED_ENV: "1"}
    import torch

    if not torch.cuda.is_available():  # CPU: DeepSpeed's CPU accelerator, gloo, 1 thread team per rank
        notice = first_build_notice()
        if notice:
            print(notice, file=sys.stderr, flush=True)
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.parallel.num_gpus)))
    log_path = os.path.join(cfg.logging.log_dir, "launcher.log")
    print(startup_line(cfg, info, torch.cuda.is_available(), log_path), file=sys.stderr, flush=True)
    cmd = [*rank_cmd, RANK_CONFIG_FLAG, encode_config(cfg.to_flat())]
    return run_quietly(cmd, cfg.parallel.num_gpus, cfg.parallel.master_port or free_port(), env, log_path,
                       stop_before_spawn)


def note_stop_requests() -> list:
    """SIGTERM / SIGUSR1 before the ranks are started (the data checks, torch's import): noted, and
    the job then ends with the stop status without starting them (nothing to save)."""
    noted = []
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: noted.append(signum))
    return noted


def check_before_spawn(cfg: NeoXConfig) -> None:
    """The data (neox.data.check) and the save directory: writable, room for a checkpoint."""
    from neox.checkpoint.lock import check_save_dir
    from neox.data.check import check_data
    from neox.model.planner import checkpoint_bytes

    for w in check_data(cfg):
        print(f"warning: {w}", file=sys.stderr)
    if cfg.checkpoint.save:
        check_save_dir(cfg.checkpoint.save, checkpoint_bytes(cfg))


def startup_line(cfg: NeoXConfig, info: dict, cuda: bool, log_path: str) -> str:
    device = "GPUs, nccl" if cuda else "CPU, gloo"
    params = f"{info['num_parameters']:,} parameters, " if "num_parameters" in info else ""
    return (f"deepy: {cfg.parallel.num_gpus} processes ({device}; TP {cfg.parallel.model_parallel_size} x DP "
            f"{cfg.data_parallel_size}), {params}{info['tokens_per_step']:,} tokens per step, "
            f"{cfg.schedule.train_iters} steps; launcher and library messages: {log_path}")


# Lines of library start-up chatter that tell a user nothing new: they go
# to <log_dir>/launcher.log only. Errors, tracebacks and everything of ours still reach the terminal.
NOISE = re.compile(r"^DeepSpeed deepspeed\.ops\.\S+ built successfully")


def run_quietly(cmd: list, num_ranks: int, port: int, env: dict, log_path: str, stop_before_spawn: list) -> int:
    """Run the ranks (neox.launch.local_launch) unless a stop was requested already; every line goes to
    log_path, all but the NOISE lines also to the terminal. Returns the job's exit status."""
    from neox.launch.local_launch import run_job

    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    with open(log_path, "a") as log:
        lock = threading.Lock()

        def pump(stream: IO[str], out: TextIO) -> None:
            for line in stream:
                with lock:
                    log.write(line)
                    log.flush()
                if not NOISE.match(line):
                    out.write(line)
                    out.flush()

        return run_job(cmd, num_ranks, port, env, pump, stop_before_spawn)


if __name__ == "__main__":
    sys.exit(main())
