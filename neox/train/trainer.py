"""The training loop: a Trainer built once (setup) and then run; each decision of the loop (the
guard's verdict, logging, evaluation, checkpoint and stop cadence) is a named method."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

import numpy as np
import torch
from megatron.core import parallel_state as ps

from neox.checkpoint.files import load_finetune_weights
from neox.config import NeoXConfig, derived
from neox.data.check import DATA_CHECKED_ENV, DataError, check_data, out_of_vocab_samples
from neox.data.dataset import (
    Prefetcher,
    build_eval_datasets,
    build_tokenizer,
    build_train_dataset,
    component_of_sample,
    data_identity,
    format_mixture,
    mixture_table,
    packing_of,
)
from neox.data.names import component_name
from neox.errors import NeoxError
from neox.exit_status import STOPPED as EXIT_REQUEUE
from neox.launch import distributed, faults, stop_request
from neox.launch.distributed import is_rank0
from neox.launch.watchdog import Watchdog
from neox.log import get_logger
from neox.model.flops import mfu
from neox.model.llama import LlamaModel, replicated_mismatch
from neox.train import speed, validation
from neox.train.engine import build_engine, seed_everything, set_lr
from neox.train.guard import LossGuard, samples_of_batch
from neox.train.lr_schedule import lr_for_config
from neox.train.metrics import MetricsLogger, format_line
from neox.train.run_state import (
    check_resumable,
    find_resume_dir,
    guarded_start,
    lock_save_dir,
    resume,
    rollback,
    save_checkpoint,
)
from neox.train.step import StepResult, train_step

log = get_logger(__name__)


def train(cfg: NeoXConfig) -> None:
    trainer = Trainer(cfg)
    try:
        trainer.run()
    except BaseException:
        trainer.abandon()
        raise


class ReplicaDrift(NeoxError, RuntimeError):
    """A weight every tensor-parallel rank holds whole differs between the ranks at a save."""


class Trainer:
    """One training run: the constructor sets it up, ``run()`` trains it."""

    def __init__(self, cfg: NeoXConfig):
        """Setup: process groups, model, engine, resume or finetune, data, logger; nothing trains."""
        distributed.init_distributed(cfg.parallel.model_parallel_size, cfg.parallel.distributed_timeout_minutes)
        self.watchdog = Watchdog(cfg.logging.log_dir, torch.distributed.get_rank(), cfg.guard.watchdog_min_seconds,
                                 cfg.guard.watchdog_first_step_seconds)
        self.watchdog.expect_slow("setup (model, data indexes)")
        seed_everything(cfg.misc.seed)
        self.cfg = cfg
        self.job = lock_save_dir(cfg) if cfg.checkpoint.save else None  # before anything is written there
        self._write_resolved_config()
        if os.environ.get(DATA_CHECKED_ENV) != "1":  # deepy.py checked before spawning; srun/torchrun did not
            def warn_about_data() -> None:
                for w in check_data(cfg):
                    log.warning(w)

            distributed.on_rank0_for_all(warn_about_data)
        tokenizer = build_tokenizer(cfg)
        self.cfg = cfg = self._with_process_policies(cfg)
        model = LlamaModel(cfg)
        model.init_weights(cfg.misc.seed)
        resume_from = find_resume_dir(cfg)  # (directory, tag) or (None, None)
        self.data_files = data_identity(cfg.data.train_data_paths)
        self.reference_record = self._check_or_finetune(model, *resume_from)
        self.stop = stop_request.StopSignal(cfg.logging.log_dir)
        self.engine = build_engine(cfg, model)
        saved = resume(self.engine, cfg, *resume_from) if resume_from[0] else None
        self.step = saved.step if saved else 0
        self.saved_step = self.step  # the newest step with a checkpoint of this run
        # an anneal's guard starts fresh: the source's skip-list names batches of the source's data order
        self.guard = LossGuard(cfg.guard, saved.guard if saved and not self.annealing(resume_from[0]) else None)
        self.train_set = build_train_dataset(cfg, tokenizer)
        self.eval_sets = self._eval_sets(tokenizer)
        self.logger = self._logger()
        self.consumed = ConsumedSamples(self.train_set, cfg)
        self.consumed.recount(self.step, self.guard)
        faults.arm_loss_faults(rank0=is_rank0())  # test-only switches; no-ops in a real run
        self.last_step_seconds: float | None = None  # the watchdog's measure of a step
        self.packing = packing_of(cfg, tokenizer)  # packed documents told apart (reset_attention_mask ...)
        self.prefetch = Prefetcher(self.train_set, ps.get_data_parallel_rank(),
                                   cfg.batch.train_micro_batch_size_per_gpu, cfg.data_parallel_size,
                                   cfg.batch.train_batch_size, self.packing)

    @staticmethod
    def _with_process_policies(cfg: NeoXConfig) -> NeoXConfig:
        """compile_blocks: auto resolved for this device and run length; the CPU allocator set."""
        cfg, lines = speed.apply(cfg, distributed.device())
        for line in lines:
            log.info(line)
        return cfg

    def _write_resolved_config(self):
        """The resolved config and its plan go to a file (they are in every checkpoint too); one line says where."""
        if not is_rank0():
            return
        log_dir = self.cfg.logging.log_dir
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, "config.json"), "w") as f:
            json.dump({**self.cfg.to_flat(), "derived": derived(self.cfg)}, f, indent=1)
        log.info(f"run: resolved config in {log_dir}/config.json; metrics in {log_dir}/metrics.jsonl "
                 f"(picture: python tools/plot_run.py {log_dir} --out run.png)")

    def _check_or_finetune(self, model, resume_dir: str | None, resume_tag: str | None) -> dict | None:
        """Before anything expensive: the checkpoint to resume from is checked; or else (finetune)
        the converted weights are loaded and, with a reference batch, give the guarded-start record."""
        cfg = self.cfg
        if resume_dir:
            assert resume_tag is not None, "find_resume_dir gives a directory with its tag"
            check_resumable(cfg, os.path.join(resume_dir, resume_tag), self.data_files, anneal=self.annealing(resume_dir))
            if self.annealing(resume_dir):
                log.info(f"anneal: a branch of {resume_dir} at its {resume_tag}: weights, optimizer state, step and "
                         f"RNG from there; this run's own schedule and data mixture; {resume_dir} is only read")
            return None
        if not cfg.checkpoint.finetune:
            return None
        conversion = load_finetune_weights(model, cfg)
        log.info(f"finetune: loaded weights from {cfg.checkpoint.load}; step 0, fresh optimizer")
        if conversion and conversion.get("reference"):
            return guarded_start(model, cfg, conversion)
        return None

    def annealing(self, resume_dir: str | None) -> bool:
        """Whether this start branches off another run (anneal: true, starting from `load`, not from
        this run's own checkpoints)."""
        c = self.cfg.checkpoint
        return bool(c.anneal and resume_dir and c.load and os.path.abspath(resume_dir) == os.path.abspath(c.load))

    def _eval_sets(self, tokenizer) -> dict:
        cfg = self.cfg
        if not (cfg.data.valid_data_paths and cfg.logging.eval_iters > 0):
            return {}
        samples = cfg.logging.eval_iters * cfg.batch.train_micro_batch_size_per_gpu * cfg.data_parallel_size
        return build_eval_datasets(cfg, tokenizer, samples)

    def _logger(self):
        """Rank 0's metrics logger (None elsewhere); it starts with the data mixture table."""
        if not is_rank0():
            return None
        logger = MetricsLogger(self.cfg)
        rows = mixture_table(self.train_set, self.cfg)
        log.info("data mixture (tokens):\n" + format_mixture(rows))
        with open(os.path.join(self.cfg.logging.log_dir, "mixture.json"), "w") as f:
            json.dump(rows, f, indent=1)
        return logger

    # ------------------------------------------------------------------------- the loop

    def run(self) -> None:
        """Update after update until train_iters; a stop request exits for requeue at the next safe
        point, the guard's give-up raises GuardStop."""
        cfg = self.cfg
        if self.logger and self.reference_record:
            self.logger.log(self.reference_record)
        if self.eval_sets and self.step == 0:
            self.evaluate(0)
        if self.agree_on_stop():  # a request during start-up (index build, resume, first evaluation)
            self.stop_before_training()
        if self.step and self.step >= cfg.schedule.train_iters:
            log.warning(f"train_iters {cfg.schedule.train_iters} is at or below the checkpoint's step "
                        f"{self.step}: nothing to train; exit status 0 (raise train_iters to train on)")
        while self.step < cfg.schedule.train_iters:
            update = self.step + 1  # updates count from 1; update s uses lr(s)
            lr = lr_for_config(cfg, update)
            set_lr(self.engine, lr)
            batch_index = self.guard.batch(self.step)
            self.watchdog.expect_step(update, self.last_step_seconds)
            faults.pause("step", update)  # test-only: a slow step, to stop a job in the middle of one
            result = train_step(self.engine, self.micro_batches(batch_index, update), update, self.stop,
                                cfg.model.vocab_size)  # type: ignore[arg-type]  # validate() set it (tokenizer)
            self.last_step_seconds = result.seconds
            if result.out_of_vocab:
                self.stop_for_bad_tokens(update, batch_index)

            verdict, reason = self.guard.check(update, result.loss, result.grad_norm)
            if verdict == "rollback":
                self.roll_back(update, reason)
                continue
            if verdict == "skipped":
                self.log_skipped(update, reason, lr, batch_index)
            else:
                self.consumed.add(batch_index)
                if self.should_log(update):
                    self.log_step(update, result, lr, batch_index)
            slow_work = False  # an evaluation or a checkpoint: time for a request to arrive
            if self.should_evaluate(update):
                self.evaluate(update)
                slow_work = True
            if self.should_checkpoint(update):
                self.save(update)
                slow_work = True
            self.step = update
            if self.should_stop(result, update, slow_work):
                self.stop_for_requeue(update)
        self.close()

    def micro_batches(self, batch_index: int, update: int) -> Iterator[dict]:
        """This update's micro-batches; fetching one starts the background fetch of the next
        (the next update's first, unless this is the last update)."""
        accum = self.cfg.batch.gradient_accumulation_steps
        for j in range(accum):
            following = (batch_index, j + 1) if j + 1 < accum else (
                (self.guard.batch(update), 0) if update < self.cfg.schedule.train_iters else None)
            yield self.prefetch.get((batch_index, j), following)

    # ------------------------------------------------------------------------- the guard's verdicts

    def roll_back(self, update: int, reason: str) -> None:
        """Back to the newest complete checkpoint; the offending batches are on the skip-list now."""
        self.watchdog.expect_slow(f"the rollback at step {update}")
        self.step = rollback(self.engine, self.cfg, self.guard, update, reason, self.logger)
        self.consumed.recount(self.step, self.guard)
        self.saved_step = self.step

    def log_skipped(self, update: int, reason: str, lr: float, batch_index: int) -> None:
        """DeepSpeed already dropped the update on every rank; say which samples it held."""
        record: dict[str, Any] = {"step": update, "skipped": True, "reason": reason, "lr": lr, "batch": batch_index,
                                  "samples": samples_of_batch(batch_index, self.cfg.batch.train_batch_size)}
        log.info(f"step {update}: update skipped on every rank: {reason}; samples "
                 f"{record['samples'][0]}..{record['samples'][1] - 1}")
        if self.logger:
            self.logger.log(record)

    # ------------------------------------------------------------------------- cadences

    def should_log(self, update: int) -> bool:
        return bool(self.logger) and (update % self.cfg.logging.log_interval == 0
                                      or update == self.cfg.schedule.train_iters)

    def should_evaluate(self, update: int) -> bool:
        interval = self.cfg.logging.eval_interval
        return bool(self.eval_sets) and bool(interval and update % interval == 0)

    def should_checkpoint(self, update: int) -> bool:
        factor = self.cfg.checkpoint.checkpoint_factor
        return bool(self.cfg.checkpoint.save) and (
            bool(factor and update % factor == 0) or update == self.cfg.schedule.train_iters)

    def should_stop(self, result: StepResult, update: int, slow_work: bool) -> bool:
        """A request on any rank stops every rank after the same update: seen in the step's
        all-reduce, or agreed after this update's evaluation or checkpoint. The last update ends
        the run anyway (exit 0: nothing is left to requeue for)."""
        if update >= self.cfg.schedule.train_iters:
            return False
        return result.stop or (slow_work and self.agree_on_stop())

    def agree_on_stop(self) -> bool:
        """Whether a stop was requested on any rank (one all-reduce; at safe points only)."""
        flag = torch.tensor([float(self.stop.requested)], device=distributed.device())
        torch.distributed.all_reduce(flag)
        return flag.item() > 0

    # ------------------------------------------------------------------------- actions

    def log_step(self, update: int, result: StepResult, lr: float, batch_index: int) -> None:
        cfg = self.cfg
        tps = cfg.batch.train_batch_size * cfg.model.seq_length / result.seconds
        record = {"step": update, "loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
                  "tokens_per_sec": tps, "mfu": mfu(cfg, tps, cfg.world_size),
                  "consumed_samples": update * cfg.batch.train_batch_size, "batch": batch_index,
                  "step_time_s": result.seconds, **self.consumed.tokens()}
        self.logger.log(record)
        log.info(format_line(record, cfg.schedule.train_iters, show_mfu=distributed.device() == "cuda"))

    def evaluate(self, step: int) -> None:
        self.watchdog.expect_slow(f"the evaluation at step {step}")
        faults.pause("eval", step)  # test-only: a slow evaluation, to stop a job in the middle of one
        values = validation.evaluate(self.engine, self.eval_sets, self.cfg, self.packing)
        if self.logger:
            self.logger.log({"step": step, **values})
            log.info(f"eval at step {step}: " + " | ".join(f"{k} {v:.4f}" for k, v in values.items()))

    def save(self, update: int) -> None:
        self.watchdog.expect_slow(f"the checkpoint of step {update}")
        assert self.job is not None, "save() is called only when the run saves (lock_save_dir gave the job)"
        drifted = replicated_mismatch(self.engine.module)
        if drifted:  # every rank has the same list: all stop here, nothing of this step is written
            if not is_rank0():  # rank 0 names the weights; the others stop with it
                raise SystemExit(1)
            raise ReplicaDrift(f"step {update}: replicated weight {', '.join(repr(n) for n in drifted[:3])}"
                               f"{' ...' if len(drifted) > 3 else ''} differs between the tensor-parallel ranks "
                               f"(each rank must hold the same copy; a gradient was not summed over the TP group); "
                               f"no checkpoint of this step was written (the newest is step {self.saved_step})")
        save_checkpoint(self.engine, self.cfg, update, self.guard, self.data_files, self.job)
        self.saved_step = update

    def stop_for_bad_tokens(self, update: int, batch_index: int) -> NoReturn:
        """A batch held token ids outside the vocabulary: stop before this update is saved,
        naming the samples and their data files (found on the host: the slow path, once)."""
        if not is_rank0():  # rank 0 names them; the others stop with it
            raise SystemExit(1)
        g, vocab = self.cfg.batch.train_batch_size, self.cfg.model.vocab_size
        assert vocab is not None, "a training run's vocab_size is set (validate() read it from the tokenizer)"
        bad = out_of_vocab_samples(self.train_set, batch_index * g, (batch_index + 1) * g, vocab)
        files = sorted({f for _, f in bad})
        raise DataError(f"step {update}: token ids outside the vocabulary (0..{vocab - 1}) in global samples "
                        f"{[i for i, _ in bad]} from data file {', '.join(files)}: the data was tokenized with "
                        f"another tokenizer than vocab_file {self.cfg.data.vocab_file}; no checkpoint of this "
                        f"step was written (the newest is step {self.saved_step})")

    def stop_for_requeue(self, update: int) -> NoReturn:
        """Checkpoint this update (unless it has one), then exit with the status that requeues."""
        stop_request.ignore_from_now()  # every rank decided: later signals must not turn 75 into 143
        if self.cfg.checkpoint.save and self.saved_step != update:
            self.save(update)
        log.info(f"stop requested by signal: stopped after step {update}; exit status {EXIT_REQUEUE} "
                 "(requeue and the run resumes here)")
        self.close(last_record={"step": update, "stopped_by_signal": True})
        raise SystemExit(EXIT_REQUEUE)

    def stop_before_training(self) -> NoReturn:
        """A request before this start's first update: nothing new to save, the same exit status."""
        stop_request.ignore_from_now()
        kept = f"the checkpoint of step {self.step} stays" if self.step else "no step was trained yet"
        log.info(f"stop requested by signal before the first step of this start: nothing new to save ({kept}); "
                 f"exit status {EXIT_REQUEUE} (requeue and the run resumes here)")
        self.close(last_record={"step": self.step, "stopped_by_signal": True})
        raise SystemExit(EXIT_REQUEUE)

    def close(self, last_record: dict | None = None) -> None:
        self.watchdog.expect_slow("the end of the run")
        self.prefetch.close()
        if self.logger:
            if last_record:
                self.logger.log(last_record)
            self.logger.close()
        torch.distributed.barrier()
        stop_request.clear()
        self.watchdog.close()
        distributed.destroy()

    def abandon(self) -> None:
        """The run stops with an error: stop the prefetch thread and the watchdog and flush the
        logger, with no collective (the other ranks may be gone already). A failure here is one
        warning line: the error that stopped the run is the one to report."""
        self.watchdog.close()
        for part, close in (("prefetch", self.prefetch.close), ("logger", self.logger and self.logger.close)):
            try:
                if close:
                    close()
            except Exception as e:  # noqa: BLE001 - reported, then the original error goes on
                print(f"warning: closing the {part} after the error failed: {e}", file=sys.stderr, flush=True)


class ConsumedSamples:
    """Samples trained per data component (skipped batches left out), logged as tokens/<component>."""

    def __init__(self, train_set: Any, cfg: NeoXConfig):
        self.components = [component_name(p) for p in cfg.data.train_data_paths]
        self.of_sample = component_of_sample(train_set)
        self.global_batch, self.seq_length = cfg.batch.train_batch_size, cfg.model.seq_length
        self.counts = np.zeros(len(self.components), dtype=np.int64)

    def _of_batch(self, batch: int) -> np.ndarray:
        g = self.global_batch
        return np.bincount(self.of_sample[batch * g: (batch + 1) * g], minlength=len(self.components))

    def add(self, batch_index: int) -> None:
        self.counts += self._of_batch(batch_index)

    def recount(self, steps: int, guard: LossGuard) -> None:
        """The counts after the first ``steps`` steps (at a resume or a rollback)."""
        n = len(self.components)
        if steps == 0:
            self.counts = np.zeros(n, dtype=np.int64)
            return
        last = guard.batch(steps - 1)
        self.counts = np.bincount(self.of_sample[: (last + 1) * self.global_batch], minlength=n)
        for b in guard.skip_batches:
            if b < last:
                self.counts -= self._of_batch(b)

    def tokens(self) -> dict:
        return {f"tokens/{c}": int(n) * self.seq_length for c, n in zip(self.components, self.counts)}
