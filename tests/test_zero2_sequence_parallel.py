"""Past 34B: ZeRO stage 2 against stage 1 at TP 2 x DP 2 (four processes), resume across stages
and data-parallel sizes; sequence parallelism against none at TP 2 and TP 4, with activation
checkpointing (and compiled blocks) on and off. The smoke model, fp32, the same seed and data."""

import subprocess
import sys

import pytest
import torch
from conftest import REPO, free_port
from test_reshard import only_step
from test_resilience import losses, metrics
from test_resilience import run as run_deepy

from neox.checkpoint.files import load_rank, weights_of
from neox.model import partition

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)

# Llemma's peak LR: at smoke.yml's 2e-3, Adam's per-element normalisation lifts fp32 rounding differences of
# near-zero gradients (sums in another order) to 2e-6 in a weight within 20 steps
STEPS = ["train_iters=20", "lr_decay_iters=20", "warmup_iters=4", "optimizer.params.lr=1e-4", "min_lr=1e-5"]
TP2_DP2 = ["model_parallel_size=2", "num_gpus=4", "gradient_accumulation_steps=1"]  # 4 x 1 x 2 = 8 sequences
TP2_DP1 = ["model_parallel_size=2", "num_gpus=2", "gradient_accumulation_steps=2"]  # 4 x 2 x 1 = 8
TP4 = ["model_parallel_size=4", "num_gpus=4", "gradient_accumulation_steps=2", "num_kv_heads=4"]


def run(tmp, name, *overrides):
    """smoke.yml (fp32) as test_resilience runs it; four processes are started by torchrun, as on a
    cluster (deepy.py refuses more processes than this machine's 2 cores)."""
    gpus = next(int(o.split("=")[1]) for o in overrides if o.startswith("num_gpus="))
    if gpus <= 2:
        return run_deepy(tmp, name, *overrides)
    opts = ["precision=fp32", "eval_iters=0", f"data_cache_dir={tmp}/cache", f"log_dir={tmp / name}/logs",
            f"save={tmp / name}/ckpt", *overrides]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", f"--master_port={free_port()}",
           "train.py", "llemma_configs/smoke.yml", *[a for o in opts for a in ("-o", o)]]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.returncode, r.stdout + r.stderr


def assert_same_losses(a, b, steps):
    assert sorted(b) == list(steps)
    for s in steps:
        assert b[s] == pytest.approx(a[s], rel=1e-6, abs=0), (s, a[s], b[s])


def rank_weights(tmp, name, step, tp):
    return [weights_of(load_rank(str(tmp / name / "ckpt"), f"global_step{step}", r)) for r in range(tp)]


def assert_same_weights(a, b):
    """Every rank's every weight within 1e-6; replicated ones bit-identical on all TP ranks of b."""
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for name in ra:
            assert (ra[name] - rb[name]).abs().max().item() <= 1e-6, name
    for name in b[0]:
        if partition.split_dim(name) is None:
            assert all(torch.equal(b[0][name], r[name]) for r in b[1:]), name


@pytest.fixture(scope="module")
def stages(tmp_path_factory, toy_data):
    """20 steps at TP 2 x DP 2 with ZeRO stage 1 and with stage 2; checkpoints at 10 and 20."""
    tmp = tmp_path_factory.mktemp("zero")
    for stage in (1, 2):
        run(tmp, f"stage{stage}", *STEPS, *TP2_DP2, "checkpoint_factor=10", f"zero_optimization={{stage: {stage}}}")
    return tmp, {s: losses(metrics(tmp, f"stage{s}")) for s in (1, 2)}


def test_stage2_equals_stage1(stages):
    tmp, full = stages
    assert_same_losses(full[1], full[2], range(1, 21))
    assert full[1][20] < full[1][1]  # it trained
    assert_same_weights(rank_weights(tmp, "stage1", 20, 2), rank_weights(tmp, "stage2", 20, 2))


def test_resume_across_stages_and_data_parallel_sizes(stages):
    """Stage 1's step 10 continued under stage 2 equals the uninterrupted stage-1 run; stage 2's
    step 10 continued under stage 1 at DP 1 (the global batch kept by accumulation) equals stage 2's."""
    tmp, full = stages
    src = only_step(tmp, "stage1_step10", tmp / "stage1", 10)
    _, out = run(tmp, "to_stage2", *STEPS, *TP2_DP2, "checkpoint_factor=100", "zero_optimization={stage: 2}",
                 f"load={src}")
    assert "saved at TP=2 x DP=2, loading at TP=2 x DP=2 (weights and optimizer state; ZeRO stage 1 -> 2)" in out
    assert_same_losses(full[1], losses(metrics(tmp, "to_stage2")), range(11, 21))

    src = only_step(tmp, "stage2_step10", tmp / "stage2", 10)
    _, out = run(tmp, "to_stage1_dp1", *STEPS, *TP2_DP1, "checkpoint_factor=100", "zero_optimization={stage: 1}",
                 f"load={src}")
    assert "saved at TP=2 x DP=2, loading at TP=2 x DP=1 (weights and optimizer state; ZeRO stage 2 -> 1)" in out
    assert_same_losses(full[2], losses(metrics(tmp, "to_stage1_dp1")), range(11, 21))


@pytest.mark.parametrize("layout, sp_runs", [
    (TP2_DP1, {"sp": [], "sp_ckpt_compiled": ["checkpoint_activations=true", "compile_blocks=true"]}),
    (TP4, {"sp_ckpt": ["checkpoint_activations=true"]}),
], ids=["tp2", "tp4"])
def test_sequence_parallel_equals_none(tmp_path, toy_data, layout, sp_runs):
    """Same weights and data, 20 steps: losses within 1e-6 relative, every weight within 1e-6,
    norm weights bit-identical on all TP ranks."""
    tp = int(layout[0].split("=")[1])
    run(tmp_path, "none", *STEPS, *layout, "checkpoint_factor=20")
    base = losses(metrics(tmp_path, "none"))
    for name, extra in sp_runs.items():
        run(tmp_path, name, *STEPS, *layout, "checkpoint_factor=20", "sequence_parallel=true", *extra)
        assert_same_losses(base, losses(metrics(tmp_path, name)), range(1, 21))
        assert_same_weights(rank_weights(tmp_path, "none", 20, tp), rank_weights(tmp_path, name, 20, tp))
