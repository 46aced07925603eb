"""Surviving week-long jobs: atomic checkpoints, exact resume, stop-on-signal, guarded start.

Checkpoint protocol (rank 0 finishes what every rank wrote):
  1. every rank writes its files into <save>/.tmp-global_step<N> (DeepSpeed's save, no `latest`)
  2. barrier; rank 0 fsyncs them, renames the directory to global_step<N>, writes the marker
     global_step<N>/complete, then replaces <save>/latest atomically (temp file + rename)
A directory without the marker is never loaded, so a crash or `kill -9` at any moment leaves the
newest complete checkpoint in place and loses at most the steps since it.
"""

from __future__ import annotations

import glob
import os
import random
import re
import shutil
import signal

import numpy as np
import torch

from neox.checkpoints import CheckpointError

COMPLETE = "complete"
# A stopped run exits with this status after its checkpoint; slurm/common.sh requeues on it.
EXIT_REQUEUE = 75
# Keys a resume may change; anything else differing from the checkpoint's config is refused.
RESUME_MAY_CHANGE = {
    "train_iters", "log_interval", "eval_interval", "eval_iters", "checkpoint_factor",
    "keep_last_n_checkpoints", "log_dir", "use_wandb", "wandb_project", "use_tensorboard", "save",
    "load", "finetune", "master_port", "num_nodes", "num_gpus", "launcher",
    "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "data_cache_dir",
    "peak_flops_per_gpu", "gpu_memory_gib", "planner_mfu", "attention_impl",
    "checkpoint_activations", "checkpoint_layers", "compile_blocks", "reference_loss_tolerance",
}


def _fsync_tree(path: str):
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: str, text: str):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def step_of(tag: str) -> int:
    m = re.fullmatch(r"global_step(\d+)", tag)
    return int(m.group(1)) if m else -1


def complete_tags(save: str) -> list[str]:
    tags = [os.path.basename(p) for p in glob.glob(os.path.join(save, "global_step*"))
            if os.path.isfile(os.path.join(p, COMPLETE))]
    return sorted(tags, key=step_of)


def latest_complete_tag(save: str):
    """The tag to resume from: `latest` if it is complete, else the newest complete one."""
    latest = os.path.join(save, "latest")
    if os.path.isfile(latest):
        with open(latest) as f:
            tag = f.read().strip()
        if os.path.isfile(os.path.join(save, tag, COMPLETE)):
            return tag
    tags = complete_tags(save)
    return tags[-1] if tags else None


def save_atomic(engine, save: str, step: int, client_state: dict, keep_last: int | None, rank0: bool,
                extra_files: dict | None = None):
    """Write global_step<step> by the protocol above; prune old complete checkpoints."""
    tag = f"global_step{step}"
    tmp_tag = f".tmp-{tag}"
    if rank0:
        shutil.rmtree(os.path.join(save, tmp_tag), ignore_errors=True)
    torch.distributed.barrier()
    engine.save_checkpoint(save, tag=tmp_tag, client_state=client_state, save_latest=False)
    torch.distributed.barrier()
    if rank0:
        tmp, final = os.path.join(save, tmp_tag), os.path.join(save, tag)
        for name, text in (extra_files or {}).items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        _fsync_tree(tmp)
        if int(os.environ.get("NEOX_FAULT_KILL_DURING_SAVE", "-1")) == step:
            os.kill(os.getpid(), signal.SIGKILL)  # test-only fault: die with a half-done save
        if os.path.isdir(final):  # the same step saved again (e.g. after a restart)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _write_atomic(os.path.join(final, COMPLETE), f"{step}\n")
        _write_atomic(os.path.join(save, "latest"), tag)
        if keep_last:
            for old in complete_tags(save)[:-keep_last]:
                if old != tag:
                    shutil.rmtree(os.path.join(save, old), ignore_errors=True)
    torch.distributed.barrier()


def config_differences(current: dict, saved: dict) -> list[str]:
    diffs = []
    for key in sorted(set(current) | set(saved)):
        if key in RESUME_MAY_CHANGE or key not in saved:
            continue
        if current.get(key) != saved.get(key):
            diffs.append(f"{key} ({saved.get(key)!r} -> {current.get(key)!r})")
    return diffs


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict):
    if not state:
        return
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopSignal:
    """SIGTERM / SIGUSR1 (Slurm's pre-timeout or preemption signal) request a clean stop; every
    rank agrees through an all-reduce at the next step boundary, so they stop at the same step."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self, device) -> bool:
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


@torch.no_grad()
def reference_losses(model, reference: dict, source_theta: float, train_theta: float) -> tuple[float, float]:
    """Loss of the loaded model on the converter's reference batch at the checkpoint's own RoPE
    theta (comparable to the recorded loss) and at the training theta."""
    tokens = torch.tensor([reference["tokens"]])
    out = []
    for theta in (source_theta, train_theta):
        saved = model.rotary.base, model.rotary._cache
        model.rotary.base, model.rotary._cache = float(theta), {}
        try:
            out.append(model(tokens[:, :-1], tokens[:, 1:]).item())
        finally:
            model.rotary.base, model.rotary._cache = saved
    return out[0], out[1]


def check_reference(loss: float, reference: dict, tolerance: float, load: str):
    recorded = reference["loss"]
    if not abs(loss - recorded) <= tolerance:
        raise CheckpointError(
            f"guarded start: {load} gives loss {loss:.6f} on the converter's reference batch but the source "
            f"model gave {recorded:.6f} (tolerance {tolerance:g}): wrong checkpoint path, weight layout or "
            "corrupted weights; re-run tools/convert_codellama.py --verify")
