"""Process-level speed policies of a training run, decided once at start-up and said in one line each.

compile_blocks: auto   torch.compile each block when the backend can compile here (Triton on CUDA;
                       on CPU a C++ compiler that builds, probed once per machine and cached) and the
                       run is long enough to repay the compilation (COMPILE_MIN_TRAIN_ITERS).
cpu_keep_freed_memory  on CPU, glibc's malloc keeps freed blocks for reuse instead of handing every
                       large one back to the kernel: otherwise each fresh activation, gradient or
                       dtype-cast buffer of a step is page-faulted in again (the CPU counterpart of
                       the CUDA caching allocator; no number changes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from typing import Any

# Measured on the benchmark model of bench/train_throughput.py (2-core CPU, cold cache): compiling
# costs about 20 s in the first step and saves about 0.5 s per step, so it repays itself after
# about 40 steps; 200 leaves a 5x margin for slower compilers and bigger models (docs/training.md, Model).
COMPILE_MIN_TRAIN_ITERS = 200


def cache_dir() -> str:
    """This machine's cache for the compiler probe and torch's compiled kernels."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "llemma-neox")


def use_compile_cache() -> str:
    """Point torch's inductor cache (compiled kernels and FX graphs, reused by later runs) at
    cache_dir()/torchinductor unless the user chose one (TORCHINDUCTOR_CACHE_DIR). Called first
    thing in train.py: importing megatron-core sets torch's default (/tmp) in the environment."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(cache_dir(), "torchinductor"))
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def _cpp_compiler_works() -> tuple[bool, str]:
    """Whether inductor's C++ compiler (CXX, else g++) builds a shared library here; cached per
    compiler path and version, so the probe (about 0.3 s) runs once per machine."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        return False, f"no C++ compiler ({os.environ.get('CXX', 'g++')} not found)"
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"{cxx} does not run ({e})"
    cache = os.path.join(cache_dir(), "cpp_compiler_probe.json")
    key = f"{cxx} {version}"
    try:
        with open(cache) as f:
            known = json.load(f)
        if key in known:
            return known[key], f"{cxx} ({'builds' if known[key] else 'fails'}; probed before, {cache})"
    except (OSError, ValueError):
        known = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write('extern "C" int probe() { return 1; }\n')
        try:
            ok = subprocess.run([cxx, "-shared", "-fPIC", "-O2", src, "-o", os.path.join(tmp, "probe.so")],
                                capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
    try:  # atomically: the ranks of a node may probe at the same time
        os.makedirs(cache_dir(), exist_ok=True)
        tmp_cache = f"{cache}.{os.getpid()}"
        with open(tmp_cache, "w") as f:
            json.dump({**known, key: ok}, f)
        os.replace(tmp_cache, cache)
    except OSError:
        pass  # a read-only home: probe again next time
    return ok, f"{cxx} ({'builds' if ok else 'fails to build'} a test library)"


def backend_can_compile(device: str) -> tuple[bool, str]:
    if device == "cuda":
        from torch.utils._triton import has_triton

        return (True, "Triton is installed") if has_triton() else (False, "Triton is not installed")
    return _cpp_compiler_works()


def resolve_compile_blocks(setting: bool | str | None, train_iters: int, device: str) -> tuple[bool, str]:
    """(compile or not, why): true/false as set; auto decided by backend and run length."""
    if setting is not None and setting != "auto":
        return bool(setting), "set in the config"
    if train_iters < COMPILE_MIN_TRAIN_ITERS:
        return False, (f"auto: train_iters {train_iters} < {COMPILE_MIN_TRAIN_ITERS}, too short to repay "
                       "the compilation")
    ok, why = backend_can_compile(device)
    return ok, f"auto: {why}" + ("" if ok else "; running eager")


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> tuple[bool, str]:
    """glibc malloc: no mmap for large blocks and no trimming, so freed memory is reused."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False, f"warning: cpu_keep_freed_memory: no glibc mallopt in this C library ({name}); " \
                      "the allocator is left as it is"
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    if not ok:
        return False, "warning: cpu_keep_freed_memory: mallopt refused; the allocator is left as it is"
    return True, "cpu allocator: freed memory kept for reuse (cpu_keep_freed_memory: fewer page faults per step)"


def compile_blocks_of_a_long_run(device: str) -> tuple[bool, str]:
    """What auto decides for a run of COMPILE_MIN_TRAIN_ITERS steps or more (the benchmarks,
    whose own few steps would always run eager)."""
    return resolve_compile_blocks("auto", COMPILE_MIN_TRAIN_ITERS, device)


def apply(cfg: Any, device: str) -> tuple:  # a NeoXConfig; not imported: train.py imports this module first
    """The config with compile_blocks resolved (true or false), the allocator set; and the start-up lines."""
    m = cfg.model
    lines = []
    compile_on, why = resolve_compile_blocks(m.compile_blocks, cfg.schedule.train_iters, device)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, compile_blocks=compile_on))
    if compile_on:
        lines.append(f"compile_blocks: on ({why}); compiled kernels cached in {use_compile_cache()}")
    else:
        lines.append(f"compile_blocks: off ({why})")
    if device == "cpu" and m.cpu_keep_freed_memory:
        lines.append(keep_freed_memory()[1])
    return cfg, lines
