"""Every change this project makes to a dependency's internals, in one place.

Each patch names the upstream functions it replaces or relies on, with the sha256 of their source at
the pinned versions (PINS, the same as pyproject.toml's). Before a patch is applied, that source is
read again: when it differs (another DeepSpeed or megatron-core), the patch is not applied and one
warning line says which function changed and what the run does without it. tests/test_patches.py
fails on a version whose patched functions changed, until each patch has been looked at again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

PINS = {"deepspeed": "0.19.8", "megatron-core": "0.16.1"}


@dataclass(frozen=True)
class Patch:
    name: str
    package: str  # the distribution whose internals it touches (a key of PINS)
    relies_on: tuple[str, ...]  # dotted paths of the upstream functions it replaces or relies on
    fingerprint: str  # sha256 of their sources, joined in order, at the pinned version
    without: str  # what a run does when the patch is not applied

    def current_fingerprint(self) -> str:
        return hashlib.sha256("\n".join(inspect.getsource(resolve(p)) for p in self.relies_on).encode()).hexdigest()

    def applies(self) -> bool:
        """Whether the upstream code is the one the patch was written for; else one warning line."""
        if self.name in _checked:
            return _checked[self.name]
        ok = self.current_fingerprint() == self.fingerprint
        _checked[self.name] = ok
        if not ok:
            _warn(f"warning: not applying the patch '{self.name}' (neox/patches.py): {', '.join(self.relies_on)} "
                  f"changed since {self.package} {PINS[self.package]} (installed: {installed(self.package)}); "
                  f"{self.without}")
        return ok


def resolve(dotted: str) -> Any:
    """The object a dotted path names: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def installed(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


_checked: dict[str, bool] = {}


def _warn(line: str):
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)


BF16 = "deepspeed.runtime.bf16_optimizer.BF16_Optimizer"
PATCHES = {p.name: p for p in (
    Patch("quiet_bf16_memory_report", "deepspeed", (f"{BF16}.__init__", f"{BF16}._setup_for_real_optimizer"),
          "4df49a237f89289bf8a380321a8ccd897ce2a22b63e37333735a2fdb143b36e4",
          "DeepSpeed prints its bf16 optimizer's memory report at start-up"),
    Patch("copy_first_gradient", "deepspeed", (f"{BF16}._update_hp_grad", f"{BF16}.clear_hp_grads", f"{BF16}.step"),
          "00ca38af93c523acf3bcb397fd20cf476eac063719426c873689652a4b6d56eb",
          "DeepSpeed's own gradient accumulation (the same numbers, two passes over the fp32 gradients more)"),
    Patch("checkpoint_write_errors", "deepspeed",
          ("deepspeed.runtime.engine.DeepSpeedEngine.save_checkpoint",
           "deepspeed.runtime.engine.DeepSpeedEngine._save_checkpoint",
           "deepspeed.runtime.engine.DeepSpeedEngine._copy_recovery_script"),
          "0d7b3072d856284d597eb86eacde944aeee6d0f6ec0435da5a8be1be86624208",
          "a checkpoint write that fails on one rank only (a full disk) leaves the other ranks waiting in "
          "DeepSpeed's closing barrier until the step watchdog ends the run (exit 76)"),
    Patch("megatron_warning_said", "megatron-core",
          ("megatron.core.tensor_parallel.layers.linear_with_grad_accumulation_and_async_allreduce",),
          "a7dce2d67feac8f06e5c985dc44629ff4abe36114cac789b8c5d2c28b3c1cfc2",
          "a compiled block may break its graph at megatron-core's once-only warning"),
)}


def quiet_bf16_memory_report() -> None:
    """DeepSpeed's bf16 optimizer forces a memory report (five times two lines on rank 0) that
    would open every Slurm log: its module's see_memory_usage becomes a no-op."""
    if PATCHES["quiet_bf16_memory_report"].applies():
        from deepspeed.runtime import bf16_optimizer

        bf16_optimizer.see_memory_usage = lambda *args, **kwargs: None


def copy_first_gradient(opt: Any) -> None:
    """DeepSpeed's BF16_Optimizer zeroes its fp32 gradient buffers after every step and adds each
    micro batch's bf16 gradients into them through an fp32 temporary. Here the first micro batch
    of a step writes its gradient in (a converting copy: 0 + g is g, bit for bit), later micro
    batches add; the buffers are not zeroed after the step, only the gradient of a weight that got
    none in a step is zeroed before it. Same numbers, two passes over the fp32 gradients fewer
    (measured: bench/README.md, Training throughput)."""
    import torch

    if not PATCHES["copy_first_gradient"].applies():
        return
    assert getattr(opt, "autoep_folding_tp_group", None) is None and not opt.immediate_grad_update
    has_grad = opt.fp32_groups_has_gradients

    @torch.no_grad()
    def update_hp_grad(lp: torch.nn.Parameter, group_idx: int, param_idx: int, clear_lp_grads: bool) -> None:
        if lp.grad is None:
            return
        hp_grad = opt.fp32_groups_gradients[group_idx][param_idx]
        if has_grad[group_idx][param_idx]:
            hp_grad.add_(lp.grad.to(hp_grad.dtype).view(hp_grad.shape))
        else:
            hp_grad.copy_(lp.grad.view(hp_grad.shape))
        lp._hp_grad = hp_grad  # type: ignore[attr-defined]  # DeepSpeed's own attribute, unknown to torch's stubs
        has_grad[group_idx][param_idx] = True
        if clear_lp_grads:
            lp.grad.zero_()

    def clear_hp_grads() -> None:
        for i, group in enumerate(opt.fp32_groups_gradients):
            has_grad[i] = [False] * len(group)

    deepspeed_step = opt.step

    def step(closure: Callable[[], Any] | None = None) -> Any:
        stale = [g for i, group in enumerate(opt.fp32_groups_gradients)
                 for j, g in enumerate(group) if not has_grad[i][j]]
        if stale:
            torch._foreach_zero_(stale)
        return deepspeed_step(closure)

    opt._update_hp_grad, opt.clear_hp_grads, opt.step = update_hp_grad, clear_hp_grads, step


@contextlib.contextmanager
def checkpoint_writes_keep_first_error(engine: Any, before_write: Callable[[], object] | None = None
                                       ) -> Iterator[list[Exception]]:
    """During engine.save_checkpoint: each file write of this rank (the checkpoint engine's save,
    rank 0's copy of DeepSpeed's recovery scripts) that raises is kept instead of raised, and the
    rest of this rank's writes are skipped, so the rank still reaches every collective of the save
    (it ends in a barrier). Yields the list of kept errors; the caller raises the first one after
    the save returned. ``before_write`` runs before each write (the test-only write fault)."""
    errors: list[Exception] = []
    if not PATCHES["checkpoint_write_errors"].applies():
        yield errors
        return

    def keep_first_error(write: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if errors:
                return None
            try:
                if before_write:
                    before_write()
                return write(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - raised by the caller, after the collectives
                errors.append(e)
                return None
        return guarded

    patched = [(engine.checkpoint_engine, "save"), (engine, "_copy_recovery_script")]
    before = [vars(obj).get(name) for obj, name in patched]
    for obj, name in patched:
        setattr(obj, name, keep_first_error(getattr(obj, name)))
    try:
        yield errors
    finally:
        for (obj, name), old in zip(patched, before):
            if old is None:
                delattr(obj, name)  # back to the method of its class
            else:
                setattr(obj, name, old)


def spend_megatron_warning() -> None:
    """megatron-core's linear layers warn once, from inside their forward, when TP > 1 and
    CUDA_DEVICE_MAX_CONNECTIONS is not 1 (a warning neox.launch.quiet filters out: not actionable here);
    in a compiled block that warnings.warn would be a graph break and a recompile, so it is marked
    as said before compiling. (Adding warnings.warn to dynamo's ignore_logging_functions instead
    made torch 2.11 log a traceback at every compile: its compile-metrics logger cannot serialise
    that set.)"""
    if PATCHES["megatron_warning_said"].applies():
        from megatron.core.tensor_parallel import layers

        layers.linear_with_grad_accumulation_and_async_allreduce.warned = True
