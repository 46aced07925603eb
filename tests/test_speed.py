"""The speed policies of neox.train.speed and neox.train.engine: each decided as documented, none changes a number."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_cfg

from neox.train import speed


@pytest.mark.processes
def test_compile_blocks_auto_is_off_for_short_runs_and_follows_the_backend(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert speed.resolve_compile_blocks(False, 10**6, "cpu") == (False, "set in the config")
    assert speed.resolve_compile_blocks(True, 5, "cpu") == (True, "set in the config")
    short = speed.COMPILE_MIN_TRAIN_ITERS - 1
    assert speed.resolve_compile_blocks("auto", short, "cpu") == (
        False, f"auto: train_iters {short} < {speed.COMPILE_MIN_TRAIN_ITERS}, too short to repay the compilation")
    on, why = speed.resolve_compile_blocks("auto", 42000, "cpu")
    assert on and why.startswith("auto: ") and "builds a test library" in why, why
    probe = json.loads((tmp_path / "llemma-neox" / "cpp_compiler_probe.json").read_text())
    assert list(probe.values()) == [True]
    # the second decision reads the cached probe: the compiler is asked its version, nothing is built
    real_run = subprocess.run
    monkeypatch.setattr(speed.subprocess, "run", lambda cmd, **kw: real_run(cmd, **kw) if "--version" in cmd
                        else pytest.fail(f"probed again: {cmd}"))
    on, why = speed.resolve_compile_blocks("auto", 42000, "cpu")
    assert on and "probed before" in why
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert speed.resolve_compile_blocks("auto", 42000, "cpu") == (
        False, "auto: no C++ compiler (no-such-compiler-here not found); running eager")


@pytest.mark.processes
def test_apply_resolves_the_config_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cfg = tiny_cfg(train_iters=1000)
    cfg, lines = speed.apply(cfg, "cpu")
    assert cfg.model.compile_blocks is True
    assert lines[0].startswith("compile_blocks: on (auto: ") and lines[0].endswith(
        f"compiled kernels cached in {tmp_path}/llemma-neox/torchinductor")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == f"{tmp_path}/llemma-neox/torchinductor"
    assert lines[1].startswith("cpu allocator: freed memory kept for reuse")
    cfg = tiny_cfg(cpu_keep_freed_memory=False)
    cfg, lines = speed.apply(cfg, "cpu")
    assert lines == [f"compile_blocks: off (auto: train_iters 10 < {speed.COMPILE_MIN_TRAIN_ITERS}, "
                                       "too short to repay the compilation)"]
    assert cfg.model.compile_blocks is False


KEEP_FREED = """
import sys, torch; sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
from conftest import tiny_cfg
from neox.launch import distributed
from neox.train import speed
from neox.model.llama import LlamaModel
import os
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
distributed.init_distributed(1)
def loss_and_grads():
    model = LlamaModel(tiny_cfg()).train()
    model.init_weights(7)
    tokens = torch.randint(0, 101, (2, 17), generator=torch.Generator().manual_seed(3))
    loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    return [loss.detach()] + [p.grad for p in model.parameters()]
before = loss_and_grads()
ok, line = speed.keep_freed_memory()
after = loss_and_grads()
print(ok, all(torch.equal(a, b) for a, b in zip(before, after)), len(before))
"""


@pytest.mark.processes
def test_keeping_freed_memory_changes_no_number():
    """In its own process (mallopt is for the whole process): fp32 loss and gradients before and
    after are bit-identical."""
    from conftest import free_port

    code = KEEP_FREED.format(repo=REPO, tests=os.path.join(REPO, "tests"))
    out = subprocess.run([sys.executable, "-c", code, str(free_port())], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["True", "True", "16"], out.stdout


def train_weights(build, steps=3, **overrides):
    """bf16 engine over the tiny model: the weights after `steps` updates, and the grad norms."""
    from neox.model.llama import LlamaModel

    cfg = tiny_cfg(precision="bf16", train_batch_size=2 * overrides["gradient_accumulation_steps"], **overrides)
    torch.manual_seed(0)
    model = LlamaModel(cfg)
    model.init_weights(7)
    engine = build(cfg, model)
    norms = []
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        for _ in range(cfg.batch.gradient_accumulation_steps):
            tokens = torch.randint(0, 101, (2, 17), generator=gen)
            engine.backward(engine(tokens[:, :-1], tokens[:, 1:]))
            engine.step()
        norms.append(engine.get_global_grad_norm())
    weights = [p.detach().clone() for p in model.parameters()]
    masters = [p.detach().clone() for p in engine.optimizer.fp32_groups_flat_partition]
    return weights, masters, norms


@pytest.mark.processes
@pytest.mark.parametrize("accumulation", [1, 2])
def test_copying_the_first_gradient_changes_no_number(single_process_group, accumulation):
    """DeepSpeed's own accumulation (add into zeroed buffers) against neox.train.engine's (copy the first
    micro batch, add the rest, no zeroing): bf16 weights, fp32 master weights and grad norms equal."""
    import deepspeed

    from neox.train.engine import build_engine, build_optimizer, deepspeed_config

    def deepspeed_as_is(cfg, model):
        engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(cfg, model),
                                          config=deepspeed_config(cfg))
        assert "copy_first_gradient" not in engine.optimizer._update_hp_grad.__qualname__
        engine.enable_backward_allreduce = False  # as build_engine at data parallel 1 (tested elsewhere)
        return engine

    def ours(cfg, model):
        engine = build_engine(cfg, model)
        assert "copy_first_gradient" in engine.optimizer._update_hp_grad.__qualname__
        return engine

    ref = train_weights(deepspeed_as_is, gradient_accumulation_steps=accumulation)
    got = train_weights(ours, gradient_accumulation_steps=accumulation)
    assert ref[2] == got[2] and all(n > 0 for n in got[2])
    for a, b in zip(ref[0] + ref[1], got[0] + got[1]):
        assert torch.equal(a, b)
    assert not torch.equal(ref[0][0], train_weights(ours, steps=1, gradient_accumulation_steps=accumulation)[0][0])


def test_benchmark_ratios_are_medians_of_same_round_ratios():
    """bench/train_throughput.py: a slow round slows every implementation in it; the ratio is
    taken within a round, then the median over rounds (not a ratio of medians)."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import train_throughput as tt

    def run(tps, rss):
        return {"summary": {"tokens_per_sec": tps, "step_time_s": 2048 / tps, "step_time_mean_s": 2048 / tps,
                            "mfu": tps / 1000}, "peak_rss_mib": rss, "mfu_logged": [tps / 1000], "loss": [1.0]}

    rounds = {"ours": [run(800, 2000), run(400, 2100), run(900, 2050)],
              "litgpt": [run(640, 2300), run(400, 2400), run(600, 2200)],
              "plain": [run(800, 1900), run(380, 1900), run(950, 1900)]}
    out = tt.aggregate(rounds)
    assert out["ours_vs_litgpt_per_round"] == [1.25, 1.0, 1.5] and out["ours_vs_litgpt"] == 1.25
    assert out["ours_vs_plain_torch_per_round"] == [1.0, 1.053, 0.947] and out["ours_vs_plain_torch"] == 1.0
    assert out["ours_tokens_per_sec"] == 800 and out["litgpt_tokens_per_sec"] == 600
    assert out["ours_peak_rss_vs_litgpt"] == pytest.approx(2050 / 2300)
    assert "ours_vs_hf" not in out
