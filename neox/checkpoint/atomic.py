"""The checkpoint save protocol: atomic checkpoints, their manifest, and which one a resume takes.

Checkpoint protocol (rank 0 finishes what every rank wrote):
  1. every rank writes its files into <save>/.tmp-global_step<N> (DeepSpeed's save, no `latest`)
  2. barrier; rank 0 writes manifest.json (every file and its size), fsyncs everything, renames
     the directory to global_step<N>, writes the marker global_step<N>/complete, then replaces
     <save>/latest atomically (temp file + rename)
A directory without the marker is never loaded, so a crash or `kill -9` at any moment leaves the
newest complete checkpoint in place and loses at most the steps since it.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from typing import Any

import torch

from neox import patches
from neox.checkpoint.files import CheckpointError
from neox.checkpoint.lock import io_cause
from neox.config import LAYOUT_KEYS, RESUME_MAY_CHANGE
from neox.launch import faults
from neox.launch.distributed import device

COMPLETE = "complete"
# Copied into <save> by every DeepSpeed save; they read TP rank 0 only, so at TP > 1 they would
# recover part of the model: tools/export_hf.py is the way out of a checkpoint.
DEEPSPEED_SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")


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


def latest_complete_tag(save: str) -> str | None:
    """The tag to resume from: `latest` if it is complete, else the newest complete one."""
    return resume_tag(save)[0]


def resume_tag(save: str) -> tuple[str | None, list[str]]:
    """latest_complete_tag, with a warning line for each thing passed over: a `latest` naming a
    tag that is missing or incomplete, and newer checkpoint directories without `complete`."""
    tags = complete_tags(save)
    chosen, warnings = (tags[-1] if tags else None), []
    latest = os.path.join(save, "latest")
    if os.path.isfile(latest):
        with open(latest) as f:
            named = f.read().strip()
        if os.path.isfile(os.path.join(save, named, COMPLETE)):
            chosen = named
        else:
            state = "has no 'complete' marker" if os.path.isdir(os.path.join(save, named)) else "does not exist"
            warnings.append(f"{latest} names {named}, which {state}; resuming from the newest complete checkpoint "
                            f"{chosen} instead" if chosen else f"{latest} names {named}, which {state}; no complete "
                            "checkpoint: starting from step 0")
    for path in sorted(glob.glob(os.path.join(save, "global_step*")), key=lambda p: step_of(os.path.basename(p))):
        tag = os.path.basename(path)
        if step_of(tag) > (step_of(chosen) if chosen else -1) and not os.path.isfile(os.path.join(path, COMPLETE)):
            warnings.append(f"{path} has no 'complete' marker (a save that did not finish): ignored; "
                            + (f"resuming from {chosen}" if chosen else "starting from step 0"))
    return chosen, warnings


def save_atomic(engine: Any, save: str, step: int, client_state: dict, keep_last: int | None, rank0: bool,
                extra_files: dict | None = None, job: str = "job") -> None:
    """Write global_step<step> by the protocol above; prune old complete checkpoints. The temp
    directory carries the job's identity (neox.checkpoint.lock), so two writers never share one."""
    tag = f"global_step{step}"
    tmp_tag = f".tmp-{tag}.{job}"
    tmp, final = os.path.join(save, tmp_tag), os.path.join(save, tag)
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
    torch.distributed.barrier()
    _on_every_rank_or_fail(lambda: _deepspeed_save(engine, save, tmp_tag, client_state, step),
                           save, tmp, final, rank0)
    faults.pause("save", step)  # test-only: a slow save, to stop a job in the middle of it
    _on_every_rank_or_fail(lambda: _finish(save, tmp, final, step, keep_last, extra_files) if rank0 else None,
                           save, tmp, final, rank0)


def _deepspeed_save(engine, save: str, tag: str, client_state: dict, step: int):
    """DeepSpeed's save_checkpoint, with every collective in it reached by every rank.

    It ends in a barrier: a rank whose write raised (a full disk) would skip it, and the ranks
    whose writes succeeded would wait there until the watchdog. So a failed write is kept, the
    rest of this rank's writes are skipped, and the error is raised once save_checkpoint returned."""
    with patches.checkpoint_writes_keep_first_error(
            engine, before_write=lambda: faults.write_error(step, torch.distributed.get_rank())) as errors:
        engine.save_checkpoint(save, tag=tag, client_state=client_state, save_latest=False)
    if errors:
        raise errors[0]


def _finish(save: str, tmp: str, final: str, step: int, keep_last: int | None, extra_files: dict | None):
    """Rank 0, after every rank wrote its files: manifest, fsync, rename, marker, latest, pruning."""
    tag = os.path.basename(final)
    for script in DEEPSPEED_SCRIPTS:  # DeepSpeed's save copies them with no option not to
        if os.path.isfile(os.path.join(save, script)):
            os.remove(os.path.join(save, script))
    for name, text in (extra_files or {}).items():
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)
    _write_manifest(tmp)
    _fsync_tree(tmp)
    faults.kill_at("NEOX_FAULT_KILL_DURING_SAVE", step)  # test-only: die before the rename
    if os.path.isdir(final):  # the same step saved again (e.g. after a restart)
        shutil.rmtree(final)
    os.rename(tmp, final)
    faults.kill_at("NEOX_FAULT_KILL_AFTER_RENAME", step)  # test-only: die before the marker
    _write_atomic(os.path.join(final, COMPLETE), f"{step}\n")
    _write_atomic(os.path.join(save, "latest"), tag)
    if keep_last:
        for old in complete_tags(save)[:-keep_last]:
            if old != tag:
                shutil.rmtree(os.path.join(save, old), ignore_errors=True)


def _on_every_rank_or_fail(write, save: str, tmp: str, final: str, rank0: bool):
    """Run this rank's part of a save; if any rank failed, every rank stops (after one
    all-reduce: a rank raising alone would leave the others waiting in a barrier), rank 0
    removes the unfinished directory, and the failing ranks name the path and the cause."""

    error = cause = None
    try:
        write()
    except Exception as e:  # noqa: BLE001 - every failure of a save ends the run the same way
        error = e
        cause = io_cause(error, tmp if os.path.isdir(tmp) else save)  # now, while the disk is still full
    failed = torch.tensor([float(error is not None)], device=device())
    torch.distributed.all_reduce(failed)
    if not failed.item():
        return
    if rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        if os.path.isdir(final) and not os.path.isfile(os.path.join(final, COMPLETE)):
            shutil.rmtree(final, ignore_errors=True)
    if error is None:
        raise SystemExit(1)  # another rank failed and says why
    newest = latest_complete_tag(save) if os.path.isdir(save) else None
    raise CheckpointError(f"saving checkpoint {os.path.basename(final)} to {tmp} failed: {cause}; the unfinished "
                          f"directory was removed; the newest complete checkpoint is "
                          f"{os.path.join(save, newest) if newest else 'none'}") from error


MANIFEST = "manifest.json"


def _write_manifest(directory: str):
    sizes = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            sizes[os.path.relpath(path, directory)] = os.path.getsize(path)
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(sizes, f, indent=1, sort_keys=True)


def verify_manifest(directory: str) -> None:
    """Every file the checkpoint was written with is there with its size (cheap: no reads)."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {directory} has no {MANIFEST}; it was not written by this trainer")
    with open(path) as f:
        sizes = json.load(f)
    for name, size in sorted(sizes.items()):
        file = os.path.join(directory, name)
        if not os.path.isfile(file):
            raise CheckpointError(f"checkpoint file {file} is missing")
        actual = os.path.getsize(file)
        if actual != size:
            raise CheckpointError(f"checkpoint file {file} is corrupt: {actual} bytes, written with {size}")


def find_corrupt_file(directory: str) -> tuple[str, str] | tuple[None, None]:
    """After a failed load: the first .pt file of the checkpoint that torch cannot read, with why."""
    for root, _, files in os.walk(directory):
        for name in sorted(files):
            if name.endswith(".pt"):
                path = os.path.join(root, name)
                try:
                    torch.load(path, map_location="cpu", weights_only=False, mmap=True)
                except Exception as e:  # noqa: BLE001 - any failure to read names this file
                    return path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None, None


def config_differences(current: dict, saved: dict, layout_may_change: bool = False) -> list[str]:
    diffs = []
    may_change = RESUME_MAY_CHANGE | (LAYOUT_KEYS if layout_may_change else frozenset())
    for key in sorted(set(current) | set(saved)):
        if key in may_change or key not in saved:
            continue
        if current.get(key) != saved.get(key):
            diffs.append(f"{key} ({saved.get(key)!r} -> {current.get(key)!r})")
    return diffs
