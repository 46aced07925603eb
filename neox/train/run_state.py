"""A run's state on disk, in one place: which checkpoint to resume from and its checks, resume,
save, rollback to the newest complete checkpoint, and the guarded start from converted weights.
The atomic write protocol itself is neox.checkpoint.atomic."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from neox.checkpoint import reshard
from neox.checkpoint.atomic import (
    COMPLETE,
    complete_tags,
    config_differences,
    find_corrupt_file,
    latest_complete_tag,
    resume_tag,
    save_atomic,
    step_of,
    verify_manifest,
)
from neox.checkpoint.files import CheckpointError
from neox.checkpoint.hooks import after_checkpoint
from neox.checkpoint.lock import SaveLock, check_save_dir
from neox.checkpoint.rng import restore_rng, rng_state
from neox.config import NeoXConfig, ScheduleArgs
from neox.launch import faults
from neox.launch.distributed import is_rank0, on_rank0_for_all
from neox.log import get_logger
from neox.model.llama import LlamaModel
from neox.model.planner import checkpoint_bytes
from neox.train.guard import LossGuard, samples_of_batch
from neox.train.metrics import MetricsLogger

log = get_logger(__name__)


@dataclass(frozen=True)
class RunState:
    """What a checkpoint holds besides the weights and the optimizer state (DeepSpeed's client
    state), declared once: save_checkpoint writes it, load_state reads it back (resume, rollback).
    The LR and the data position are functions of ``step``."""

    step: int
    consumed_samples: int
    neox_config: dict  # the resolved config (also <tag>/config.json)
    rng: dict | None  # Python, NumPy and torch generators of this rank (neox.checkpoint.rng)
    guard: dict | None  # the loss guard's skip-list, loss history and rollback count

    def client_state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, state: dict, where: str) -> RunState:
        missing = [key for key in ("step", "consumed_samples", "neox_config") if key not in state]
        if missing:
            raise CheckpointError(f"{where}: not a checkpoint of this trainer (client state lacks {', '.join(missing)})")
        return cls(step=int(state["step"]), consumed_samples=int(state["consumed_samples"]),
                   neox_config=state["neox_config"], rng=state.get("rng"), guard=state.get("guard"))


def find_resume_dir(cfg: NeoXConfig) -> tuple[str, str] | tuple[None, None]:
    """(directory, tag) to resume everything from, or (None, None) for a fresh start.

    A run's own complete checkpoints (<save>) win: a restarted job continues instead of starting
    over from the base model. Otherwise a non-finetune ``load`` must hold a complete checkpoint."""
    save, load = cfg.checkpoint.save, cfg.checkpoint.load
    if save and os.path.isdir(save):
        tag, warnings = resume_tag(save)
        for w in warnings:
            log.warning(w)
        if tag:
            return save, tag
    if load and not cfg.checkpoint.finetune and os.path.abspath(load) != os.path.abspath(save or ""):
        step = cfg.checkpoint.load_step
        if step is not None:
            return load, complete_step_tag(load, step)
        tag = latest_complete_tag(load) if os.path.isdir(load) else None
        if tag is None:
            raise CheckpointError(f"load: no complete checkpoint in {load} (no global_step*/complete); "
                                  "to start from converted weights set finetune: true")
        return load, tag
    return None, None


def complete_step_tag(load: str, step: int) -> str:
    """The tag of ``load``'s complete checkpoint of ``step``, or an error naming the steps it has."""
    tag = f"global_step{step}"
    if not os.path.isfile(os.path.join(load, tag, COMPLETE)):
        have = complete_tags(load) if os.path.isdir(load) else []
        raise CheckpointError(f"key 'load_step': {load} has no complete checkpoint of step {step} (complete: "
                              f"{', '.join(t.removeprefix('global_step') for t in have) or 'none'})")
    return tag


# what an anneal (a branch of another run) may change besides what any resume may: its schedule,
# its data mixture and what it is evaluated on
ANNEAL_MAY_CHANGE = frozenset(f.name for f in dataclasses.fields(ScheduleArgs)) | {
    "train_data_paths", "train_data_weights", "data_phases", "valid_data_paths", "test_data_paths", "anneal",
    "load_step"}


def check_resumable(cfg: NeoXConfig, checkpoint: str, data_files: dict, anneal: bool = False) -> None:
    """Before anything expensive: every file of the checkpoint is there with its size, the config
    differs only in RESUME_MAY_CHANGE keys (and the TP/DP layout, which neox.checkpoint.reshard handles under
    ZeRO; an anneal also in ANNEAL_MAY_CHANGE) and the training data are the ones the run started
    with (an anneal's may be new)."""
    verify_manifest(checkpoint)
    with open(os.path.join(checkpoint, "config.json")) as f:
        saved = json.load(f)
    current = cfg.to_flat()
    if anneal:
        current = {k: v for k, v in current.items() if k not in ANNEAL_MAY_CHANGE}
        saved = {k: v for k, v in saved.items() if k not in ANNEAL_MAY_CHANGE}
    diffs = config_differences(current, saved, layout_may_change=reshard.supported(cfg))
    if diffs:
        hint = ("; changing model_parallel_size at resume needs zero_optimization stage 1 or 2"
                if any(d.startswith("model_parallel_size") for d in diffs) else "")
        raise CheckpointError(f"resume from {checkpoint} refused: the config differs in "
                              f"{', '.join(diffs)}; restore those values or save to a new directory{hint}")
    if anneal:
        return
    with open(os.path.join(checkpoint, "data.json")) as f:
        saved_files = json.load(f)
    for path, now in data_files.items():
        then = saved_files.get(path)
        if then is not None and then != now:
            raise CheckpointError(f"data file {path} changed since the run started (size {then['size']} -> "
                                  f"{now['size']}, content hash differs): restore it, or train on the new "
                                  "data in a new run (a different save directory)")


def resume(engine: Any, cfg: NeoXConfig, directory: str, tag: str) -> RunState:
    """Weights, ZeRO optimizer state, step, RNG and guard state (skip-list); the LR and the data
    position follow the step (load_state)."""
    path, state = load_state(engine, cfg, directory, tag)
    log.info(f"resumed from {path} at step {state.step}")
    return state


def load_state(engine: Any, cfg: NeoXConfig, directory: str, tag: str) -> tuple[str, RunState]:
    """The one way a checkpoint is loaded into a running job, at its start (resume) and in a
    rollback: a checkpoint written at another TP/DP layout is resharded into this one
    (neox.checkpoint.reshard), an unreadable file is named, and the RNG state is restored.
    Returns (the checkpoint's path, its RunState)."""
    faults.pause("resume")  # test-only: a slow load, to stop a job in the middle of it
    try:
        if reshard.needed(cfg, directory, tag):
            (tp, dp), stage = reshard.saved_layout(directory, tag), reshard.saved_stage(directory, tag)
            now = int(cfg.optim.zero_optimization.get("stage", 0))
            log.info(f"resharding {os.path.join(directory, tag)}: saved at TP={tp} x DP={dp}, loading at "
                     f"TP={cfg.parallel.model_parallel_size} x DP={cfg.data_parallel_size} (weights and optimizer "
                     f"state{f'; ZeRO stage {stage} -> {now}' if stage not in (None, now) else ''})")
            path, state = os.path.join(directory, tag), reshard.load_resharded(engine, cfg, directory, tag)
        else:
            path, state = engine.load_checkpoint(directory, tag=tag)
    except CheckpointError:
        raise
    except Exception as e:  # name the unreadable file instead of a deep torch.load traceback
        bad, why = find_corrupt_file(os.path.join(directory, tag))
        if bad:
            raise CheckpointError(f"checkpoint file {bad} is corrupt ({why}); move {tag} aside to resume "
                                  "from the previous complete checkpoint") from e
        raise
    if path is None:
        raise CheckpointError(f"could not load checkpoint {os.path.join(directory, tag)}")
    run_state = RunState.read(state, path)
    restore_rng(run_state.rng)
    return path, run_state


def save_checkpoint(engine: Any, cfg: NeoXConfig, step: int, guard: LossGuard, data_files: dict, job: str) -> None:
    """GPT-NeoX/DeepSpeed layout, written atomically (neox.checkpoint.atomic): <save>/global_step<N>/
    mp_rank_XX_model_states.pt + ZeRO shards + config.json + complete, then <save>/latest."""
    save = cfg.checkpoint.save
    assert save is not None, "called only when the run saves"
    state = RunState(step=step, consumed_samples=step * cfg.batch.train_batch_size, neox_config=cfg.to_flat(),
                     rng=rng_state(), guard=guard.state())
    save_atomic(engine, save, step, state.client_state(), cfg.checkpoint.keep_last_n_checkpoints,
                is_rank0(), extra_files={"config.json": json.dumps(cfg.to_flat(), indent=1),
                                                  "data.json": json.dumps(data_files, indent=1)},
                job=job)
    log.info(f"saved checkpoint global_step{step} to {save}")
    if cfg.checkpoint.eval_after_checkpoint and is_rank0():  # the checkpoint is complete by now

        after_checkpoint(cfg.checkpoint.eval_after_checkpoint, save, step)


def rollback(engine: Any, cfg: NeoXConfig, guard: LossGuard, update: int, reason: str,
             logger: MetricsLogger | None) -> int:
    """Reload the newest complete checkpoint of this run; the offending batches join the skip-list.
    Returns the step to continue from. Raises GuardStop past max_rollbacks or with no checkpoint."""
    save = cfg.checkpoint.save
    tag = latest_complete_tag(save) if save and os.path.isdir(save) else None
    info = guard.plan_rollback(step_of(tag) if tag else None, save, reason)
    info["samples"] = [samples_of_batch(b, cfg.batch.train_batch_size) for b in info["skipped_batches"]]
    log.info(f"step {update}: {reason}; rolling back to {tag} and skipping batches {info['skipped_batches']} "
             f"(samples {info['samples']}); rollback {guard.rollbacks} of at most {cfg.guard.max_rollbacks}")
    if logger:
        logger.log({"step": update, "rollback": info})
    assert save is not None and tag is not None, "plan_rollback raised GuardStop without a checkpoint"
    _, state = load_state(engine, cfg, save, tag)
    return state.step


def lock_save_dir(cfg: NeoXConfig) -> str:
    """Rank 0 takes <save>'s lock (released at exit); every rank gets the job token for temp names."""
    import atexit

    import torch


    save = cfg.checkpoint.save
    assert save is not None, "called only when the run saves"
    lock = SaveLock(save, cfg.checkpoint.save_lock_stale_minutes)

    def take() -> None:
        check_save_dir(save, checkpoint_bytes(cfg))
        for w in lock.acquire():
            log.warning(w)
        atexit.register(lock.release)

    on_rank0_for_all(take)
    token = [lock.token]
    torch.distributed.broadcast_object_list(token, src=0)
    return token[0]


def guarded_start(model: LlamaModel, cfg: NeoXConfig, conversion: dict) -> dict:
    """Step 0 from converted weights: the converter's reference batch must give the source model's
    loss at the checkpoint's own RoPE theta; the loss at the training theta is logged beside it."""
    model.eval()
    at_source, at_train = reference_losses(model, conversion["reference"], conversion["rope_theta_source"],
                                           cfg.model.rotary_emb_base)
    model.train()
    load = cfg.checkpoint.load
    assert load is not None, "finetune: validate() requires load"
    check_reference(at_source, conversion["reference"], cfg.checkpoint.reference_loss_tolerance, load)
    log.info(f"guarded start: reference loss {at_source:.6f} at theta {conversion['rope_theta_source']:g} "
             f"(converter: {conversion['reference']['loss']:.6f}); {at_train:.6f} at the training theta "
             f"{cfg.model.rotary_emb_base:g}")
    return {"step": 0, "reference_loss": at_source, "reference_loss_recorded": conversion["reference"]["loss"],
            "reference_loss_training_theta": at_train}


@torch.no_grad()
def reference_losses(model: LlamaModel, reference: dict, source_theta: float, train_theta: float
                     ) -> tuple[float, float]:
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


def check_reference(loss: float, reference: dict, tolerance: float, load: str) -> None:
    recorded = reference["loss"]
    if not abs(loss - recorded) <= tolerance:
        raise CheckpointError(
            f"guarded start: {load} gives loss {loss:.6f} on the converter's reference batch but the source "
            f"model gave {recorded:.6f} (tolerance {tolerance:g}): wrong checkpoint path, weight layout or "
            "corrupted weights; re-run tools/convert_codellama.py --verify")
