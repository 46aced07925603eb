"""The training loop: megatron-core TP model on the DeepSpeed engine (ZeRO-1, bf16 or fp32)."""

from __future__ import annotations

import json
import math
import os
import random
import time

import numpy as np
import torch
from megatron.core import parallel_state as ps

from neox import distributed, reshard
from neox.checkpoints import CheckpointError, load_finetune_weights
from neox.guard import LossGuard, fault_steps, samples_of_batch
from neox.resilience import (EXIT_REQUEUE, StopSignal, check_reference, config_differences,
                             find_corrupt_file, latest_complete_tag, reference_losses, restore_rng,
                             rng_state, save_atomic, step_of, verify_manifest)
from neox.config import NeoXConfig, derived
from neox.data import (SentencePieceTokenizer, build_eval_datasets, build_train_dataset, component_name,
                       component_of_sample, data_identity, format_mixture, get_micro_batch, mixture_table,
                       Prefetcher)
from neox.flops import mfu
from neox.lr_schedule import lr_for_config
from neox.metrics import MetricsLogger, format_line
from neox.model import LlamaModel


def is_rank0() -> bool:
    return torch.distributed.get_rank() == 0


def print_rank0(*args):
    if is_rank0():
        print(*args, flush=True)


def deepspeed_config(cfg: NeoXConfig) -> dict:
    bf16 = cfg.optim.precision == "bf16"
    ds = {
        "train_batch_size": cfg.batch.train_batch_size,
        "train_micro_batch_size_per_gpu": cfg.batch.train_micro_batch_size_per_gpu,
        "gradient_accumulation_steps": cfg.batch.gradient_accumulation_steps,
        "gradient_clipping": cfg.optim.gradient_clipping,
        "zero_optimization": dict(cfg.optim.zero_optimization),
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    if bf16:  # Llemma: bf16 weights/activations, fp32 gradient accumulation and all-reduce
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    return ds


def build_optimizer(cfg: NeoXConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norm weights (1-D), decay on every matrix."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        (no_decay if p.dim() == 1 else decay).append(p)
    params = cfg.optim.optimizer["params"]
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per step for all tensors (CPU and CUDA); the for-loop default reads and
    # writes every state tensor several times (measured 5x slower on the benchmark model, CPU)
    return torch.optim.AdamW(groups, lr=params["lr"], betas=tuple(params["betas"]), eps=params["eps"], fused=True)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_lr(engine, lr: float):
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def evaluate(engine, eval_sets: dict, cfg: NeoXConfig) -> dict:
    """Mean token loss per validation component over a fixed set of eval_iters micro-batches."""
    engine.eval()
    micro, dp = cfg.batch.train_micro_batch_size_per_gpu, cfg.data_parallel_size
    out = {}
    for name, dataset in eval_sets.items():
        total = torch.zeros(1)
        for i in range(cfg.logging.eval_iters):
            batch = get_micro_batch(dataset, 0, i, ps.get_data_parallel_rank(), micro, dp, micro * dp)
            total += engine(batch["tokens"], batch["labels"], batch["loss_mask"]).float().cpu()
        total = _dp_mean(total) / cfg.logging.eval_iters
        out[f"val/{name}/loss"] = total.item()
        out[f"val/{name}/ppl"] = math.exp(min(total.item(), 50.0))
    engine.train()
    return out


def _dp_mean(t: torch.Tensor) -> torch.Tensor:
    device = "cpu" if distributed.use_cpu() else "cuda"
    t = t.to(device)
    torch.distributed.all_reduce(t, group=ps.get_data_parallel_group())
    return t.cpu() / ps.get_data_parallel_world_size()


def build_engine(cfg: NeoXConfig, model: torch.nn.Module):
    """The DeepSpeed engine around the model: our AdamW, ZeRO-1, bf16, the megatron-core mpu."""
    import deepspeed
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=build_optimizer(cfg, model),
                                           config=deepspeed_config(cfg), mpu=distributed.MegatronCoreMPU())
    if ps.get_data_parallel_world_size() == 1 and isinstance(engine.optimizer, BF16_Optimizer):
        # nothing to average: DeepSpeed would still flatten every gradient into one buffer,
        # all-reduce it over the 1-rank group and copy it back (7% of a benchmark step on CPU).
        # Only for bf16: the fp32 ZeRO optimizer collects its gradients in that reduction.
        engine.enable_backward_allreduce = False
    return engine


def train(cfg: NeoXConfig):
    distributed.init_distributed(cfg.parallel.model_parallel_size)
    seed_everything(cfg.misc.seed)
    print_rank0("resolved config:\n" + json.dumps({**cfg.to_flat(), "derived": derived(cfg)}, indent=1))

    tokenizer = SentencePieceTokenizer(cfg.data.vocab_file)
    model = LlamaModel(cfg)
    model.init_weights(cfg.misc.seed)
    resume_dir, resume_tag = find_resume_dir(cfg)
    data_files = data_identity(cfg.data.train_data_paths)
    if resume_dir:
        check_resumable(cfg, os.path.join(resume_dir, resume_tag), data_files)
    reference_record = None
    if resume_dir is None and cfg.checkpoint.finetune:
        conversion = load_finetune_weights(model, cfg)
        print_rank0(f"finetune: loaded weights from {cfg.checkpoint.load}; step 0, fresh optimizer")
        if conversion and conversion.get("reference"):
            reference_record = guarded_start(model, cfg, conversion)
    stop = StopSignal()
    engine = build_engine(cfg, model)

    start_step, saved_state = resume(engine, cfg, resume_dir, resume_tag) if resume_dir else (0, {})
    guard = LossGuard(cfg.guard, saved_state.get("guard"))

    train_set = build_train_dataset(cfg, tokenizer)
    micro, dp = cfg.batch.train_micro_batch_size_per_gpu, cfg.data_parallel_size
    accum, global_batch = cfg.batch.gradient_accumulation_steps, cfg.batch.train_batch_size
    eval_sets = {}
    if cfg.data.valid_data_paths and cfg.logging.eval_iters > 0:
        eval_sets = build_eval_datasets(cfg, tokenizer, cfg.logging.eval_iters * micro * dp)

    logger = MetricsLogger(cfg) if is_rank0() else None
    if logger:
        rows = mixture_table(train_set, cfg)
        print_rank0("data mixture (tokens):\n" + format_mixture(rows))
        with open(os.path.join(cfg.logging.log_dir, "mixture.json"), "w") as f:
            json.dump(rows, f, indent=1)
    components = [component_name(p) for p in cfg.data.train_data_paths]
    sample_component = component_of_sample(train_set)
    consumed = consumed_counts(sample_component, start_step, guard, global_batch, len(components))
    dp_rank, tp_rank = ps.get_data_parallel_rank(), ps.get_tensor_model_parallel_rank()
    tokens_per_step = global_batch * cfg.model.seq_length
    nan_faults = fault_steps("NEOX_FAULT_NAN_STEP") if torch.distributed.get_rank() == 0 else set()
    spike_faults = fault_steps("NEOX_FAULT_SPIKE_STEP")

    if logger and reference_record:
        logger.log(reference_record)
    if eval_sets and start_step == 0:
        _log_eval(logger, 0, evaluate(engine, eval_sets, cfg))
    device = "cpu" if distributed.use_cpu() else "cuda"
    saved_step = start_step
    prefetch = Prefetcher(train_set, dp_rank, micro, dp, global_batch)

    step = start_step
    while step < cfg.schedule.train_iters:
        update = step + 1  # updates count from 1; update s uses lr(s)
        lr = lr_for_config(cfg, update)
        set_lr(engine, lr)
        batch_index = guard.batch(step)
        t0 = time.perf_counter()
        loss_sum = torch.zeros(1, device=device)
        for j in range(accum):
            following = (batch_index, j + 1) if j + 1 < accum else (
                (guard.batch(update), 0) if update < cfg.schedule.train_iters else None)
            batch = prefetch.get((batch_index, j), following)
            loss = engine(batch["tokens"], batch["labels"], batch["loss_mask"])
            if j == 0 and update in nan_faults:  # test-only fault: this rank's loss becomes NaN
                nan_faults.discard(update)
                loss = loss * float("nan")
            engine.backward(loss)
            engine.step()
            loss_sum += loss.detach().float()
        if update in spike_faults:  # test-only fault: the reported loss jumps, gradients do not
            spike_faults.discard(update)
            loss_sum += 100.0 * accum
        # One all-reduce per step: the loss (counted once per data-parallel replica) and the stop flag.
        reduced = torch.cat([loss_sum * (tp_rank == 0), torch.tensor([float(stop.requested)], device=device)])
        torch.distributed.all_reduce(reduced)
        loss_total, stop_flag = reduced.tolist()  # the step's one host sync (the guard needs the loss)
        loss_mean, stop_agreed = (loss_total / dp) / accum, stop_flag > 0
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        elapsed = time.perf_counter() - t0

        verdict, reason = guard.check(update, loss_mean, grad_norm)
        if verdict == "rollback":
            step = rollback(engine, cfg, guard, update, reason, logger)
            consumed = consumed_counts(sample_component, step, guard, global_batch, len(components))
            saved_step = step
            continue
        if verdict == "skipped":
            record = {"step": update, "skipped": True, "reason": reason, "lr": lr, "batch": batch_index,
                      "samples": samples_of_batch(batch_index, global_batch)}
            print_rank0(f"step {update}: update skipped on every rank: {reason}; samples "
                        f"{record['samples'][0]}..{record['samples'][1] - 1}")
            if logger:
                logger.log(record)
        else:
            consumed += np.bincount(sample_component[batch_index * global_batch: (batch_index + 1) * global_batch],
                                    minlength=len(components))
        if logger and verdict == "ok" and (update % cfg.logging.log_interval == 0
                                           or update == cfg.schedule.train_iters):
            tps = tokens_per_step / elapsed
            record = {"step": update, "loss": loss_mean, "lr": lr, "grad_norm": grad_norm,
                      "tokens_per_sec": tps, "mfu": mfu(cfg, tps, cfg.world_size),
                      "consumed_samples": update * global_batch, "batch": batch_index, "step_time_s": elapsed,
                      **{f"tokens/{c}": int(n) * cfg.model.seq_length for c, n in zip(components, consumed)}}
            logger.log(record)
            print_rank0(format_line(record, cfg.schedule.train_iters))
        if eval_sets and cfg.logging.eval_interval and update % cfg.logging.eval_interval == 0:
            _log_eval(logger, update, evaluate(engine, eval_sets, cfg))
        if cfg.checkpoint.save and (
            (cfg.checkpoint.checkpoint_factor and update % cfg.checkpoint.checkpoint_factor == 0)
            or update == cfg.schedule.train_iters
        ):
            save_checkpoint(engine, cfg, update, guard, data_files)
            saved_step = update
        step = update
        if stop_agreed and update < cfg.schedule.train_iters:
            if cfg.checkpoint.save and saved_step != update:
                save_checkpoint(engine, cfg, update, guard, data_files)
            print_rank0(f"stop requested by signal: stopped after step {update}; exit status {EXIT_REQUEUE} "
                        "(requeue and the run resumes here)")
            prefetch.close()
            if logger:
                logger.log({"step": update, "stopped_by_signal": True})
                logger.close()
            torch.distributed.barrier()
            distributed.destroy()
            raise SystemExit(EXIT_REQUEUE)

    prefetch.close()
    if logger:
        logger.close()
    torch.distributed.barrier()
    distributed.destroy()


def consumed_counts(sample_component, steps: int, guard: LossGuard, global_batch: int, n: int) -> np.ndarray:
    """Samples per component trained in the first ``steps`` steps (skipped batches left out)."""
    if steps == 0:
        return np.zeros(n, dtype=np.int64)
    last = guard.batch(steps - 1)
    counts = np.bincount(sample_component[: (last + 1) * global_batch], minlength=n)
    for b in guard.skip_batches:
        if b < last:
            counts -= np.bincount(sample_component[b * global_batch: (b + 1) * global_batch], minlength=n)
    return counts


def rollback(engine, cfg: NeoXConfig, guard: LossGuard, update: int, reason: str, logger) -> int:
    """Reload the newest complete checkpoint of this run; the offending batches join the skip-list.
    Returns the step to continue from. Raises GuardStop past max_rollbacks or with no checkpoint."""
    save = cfg.checkpoint.save
    tag = latest_complete_tag(save) if save and os.path.isdir(save) else None
    info = guard.plan_rollback(step_of(tag) if tag else None, save, reason)
    info["samples"] = [samples_of_batch(b, cfg.batch.train_batch_size) for b in info["skipped_batches"]]
    print_rank0(f"step {update}: {reason}; rolling back to {tag} and skipping batches {info['skipped_batches']} "
                f"(samples {info['samples']}); rollback {guard.rollbacks} of at most {cfg.guard.max_rollbacks}")
    if logger:
        logger.log({"step": update, "rollback": info})
    path, state = engine.load_checkpoint(save, tag=tag)
    if path is None:
        raise CheckpointError(f"rollback: could not load checkpoint {os.path.join(save, tag)}")
    restore_rng(state.get("rng"))
    return int(state["step"])


def _log_eval(logger, step: int, values: dict):
    if logger:
        logger.log({"step": step, **values})
        print_rank0(f"eval at step {step}: " + " | ".join(f"{k} {v:.4f}" for k, v in values.items()))


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(engine, cfg: NeoXConfig, step: int, guard: LossGuard, data_files: dict):
    """GPT-NeoX/DeepSpeed layout, written atomically (neox.resilience): <save>/global_step<N>/
    mp_rank_XX_model_states.pt + ZeRO shards + config.json + complete, then <save>/latest."""
    state = {"step": step, "consumed_samples": step * cfg.batch.train_batch_size,
             "neox_config": cfg.to_flat(), "rng": rng_state(),
             "guard": guard.state()}
    save_atomic(engine, cfg.checkpoint.save, step, state, cfg.checkpoint.keep_last_n_checkpoints,
                is_rank0(), extra_files={"config.json": json.dumps(cfg.to_flat(), indent=1),
                                                  "data.json": json.dumps(data_files, indent=1)})
    print_rank0(f"saved checkpoint global_step{step} to {cfg.checkpoint.save}")


def find_resume_dir(cfg: NeoXConfig):
    """(directory, tag) to resume everything from, or (None, None) for a fresh start.

    A run's own complete checkpoints (<save>) win: a restarted job continues instead of starting
    over from the base model. Otherwise a non-finetune ``load`` must hold a complete checkpoint."""
    save, load = cfg.checkpoint.save, cfg.checkpoint.load
    if save and os.path.isdir(save):
        tag = latest_complete_tag(save)
        if tag:
            return save, tag
    if load and not cfg.checkpoint.finetune and os.path.abspath(load) != os.path.abspath(save or ""):
        tag = latest_complete_tag(load) if os.path.isdir(load) else None
        if tag is None:
            raise CheckpointError(f"load: no complete checkpoint in {load} (no global_step*/complete); "
                                  "to start from converted weights set finetune: true")
        return load, tag
    return None, None


def check_resumable(cfg: NeoXConfig, checkpoint: str, data_files: dict):
    """Before anything expensive: every file of the checkpoint is there with its size, the config
    differs only in RESUME_MAY_CHANGE keys (and the TP/DP layout, which neox.reshard handles under
    ZeRO) and the training data are the ones the run started with."""
    verify_manifest(checkpoint)
    with open(os.path.join(checkpoint, "config.json")) as f:
        saved = json.load(f)
    diffs = config_differences(cfg.to_flat(), saved, layout_may_change=reshard.supported(cfg))
    if diffs:
        hint = ("; changing model_parallel_size at resume needs zero_optimization stage 1"
                if any(d.startswith("model_parallel_size") for d in diffs) else "")
        raise CheckpointError(f"resume from {checkpoint} refused: the config differs in "
                              f"{', '.join(diffs)}; restore those values or save to a new directory{hint}")
    with open(os.path.join(checkpoint, "data.json")) as f:
        saved_files = json.load(f)
    for path, now in data_files.items():
        then = saved_files.get(path)
        if then is not None and then != now:
            raise CheckpointError(f"data file {path} changed since the run started (size {then['size']} -> "
                                  f"{now['size']}, content hash differs): restore it, or train on the new "
                                  "data in a new run (a different save directory)")


def resume(engine, cfg: NeoXConfig, directory: str, tag: str) -> tuple[int, dict]:
    """Weights, ZeRO-1 optimizer state, step, RNG and guard state (skip-list); the LR and the data
    position follow the step. A checkpoint written at another TP/DP layout is resharded into this
    one (neox.reshard). Returns (step, the checkpoint's client state)."""
    try:
        if reshard.needed(cfg, directory, tag):
            tp, dp = reshard.saved_layout(directory, tag)
            print_rank0(f"resharding {os.path.join(directory, tag)}: saved at TP={tp} x DP={dp}, resuming at "
                        f"TP={cfg.parallel.model_parallel_size} x DP={cfg.data_parallel_size} "
                        "(weights and optimizer state)")
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
    restore_rng(state.get("rng"))
    print_rank0(f"resumed from {path} at step {state['step']}")
    return int(state["step"]), state


def guarded_start(model, cfg: NeoXConfig, conversion: dict) -> dict:
    """Step 0 from converted weights: the converter's reference batch must give the source model's
    loss at the checkpoint's own RoPE theta; the loss at the training theta is logged beside it."""
    model.eval()
    at_source, at_train = reference_losses(model, conversion["reference"], conversion["rope_theta_source"],
                                           cfg.model.rotary_emb_base)
    model.train()
    check_reference(at_source, conversion["reference"], cfg.checkpoint.reference_loss_tolerance,
                    cfg.checkpoint.load)
    print_rank0(f"guarded start: reference loss {at_source:.6f} at theta {conversion['rope_theta_source']:g} "
                f"(converter: {conversion['reference']['loss']:.6f}); {at_train:.6f} at the training theta "
                f"{cfg.model.rotary_emb_base:g}")
    return {"step": 0, "reference_loss": at_source, "reference_loss_recorded": conversion["reference"]["loss"],
            "reference_loss_training_theta": at_train}
