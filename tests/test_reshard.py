"""Resume at another parallel layout (neox.checkpoint.reshard): TP=2 x DP=1 -> TP=1 x DP=2, -> TP=1 x DP=1,
and TP=1 x DP=2 -> TP=2 x DP=1, with the optimizer state; the losses continue the uninterrupted run."""

import shutil

import pytest
from test_resilience import losses, metrics, run

SCHEDULE = ["train_iters=4", "lr_decay_iters=20", "warmup_iters=4"]
TP2 = ["model_parallel_size=2", "num_gpus=2", "gradient_accumulation_steps=2"]
TP1_DP2 = ["model_parallel_size=1", "num_gpus=2", "gradient_accumulation_steps=1"]
TP1_DP1 = ["model_parallel_size=1", "num_gpus=1", "gradient_accumulation_steps=2"]


def only_step(tmp_path, name, src_run, step):
    """A checkpoint directory holding just global_step<step> of src_run (to resume from it)."""
    out = tmp_path / name
    if out.exists():
        return out
    shutil.copytree(src_run / "ckpt" / f"global_step{step}", out / f"global_step{step}")
    (out / "latest").write_text(f"global_step{step}")
    return out


def assert_continues(full, resumed, steps):
    assert sorted(resumed) == list(steps)
    print("loss differences to the uninterrupted run:", {s: resumed[s] - full[s] for s in steps})
    for s in steps:
        assert abs(resumed[s] - full[s]) < 1e-5, (s, resumed[s], full[s])


@pytest.fixture(scope="module")
def full_tp2(tmp_path_factory, toy_data):
    """Uninterrupted fp32 TP=2 run of 4 steps with 8 sequences per step; checkpoints at 2 and 4."""
    tmp = tmp_path_factory.mktemp("reshard")
    run(tmp, "full", *SCHEDULE, *TP2, "checkpoint_factor=2")
    return tmp, losses(metrics(tmp, "full"))


def resume_elsewhere(tmp, full, name, src_run, step, layout, change, checkpoint_factor=100):
    """Resume src_run's step-`step` checkpoint at `layout`; later steps must continue `full`."""
    src = only_step(tmp, f"{src_run}_step{step}", tmp / src_run, step)
    _, out = run(tmp, name, *SCHEDULE, *layout, f"checkpoint_factor={checkpoint_factor}", f"load={src}")
    saved, now = change.split(" -> ")
    assert f"saved at {saved}, loading at {now}" in out
    assert_continues(full, losses(metrics(tmp, name)), range(step + 1, 5))


@pytest.mark.processes
def test_tp2_to_tp1_dp2_and_back_to_tp2(full_tp2):
    tmp, full = full_tp2
    resume_elsewhere(tmp, full, "tp1dp2", "full", 2, TP1_DP2, "TP=2 x DP=1 -> TP=1 x DP=2", checkpoint_factor=3)
    # the reverse: the TP=1 x DP=2 checkpoint of step 3 continues at TP=2 x DP=1
    resume_elsewhere(tmp, full, "back", "tp1dp2", 3, TP2, "TP=1 x DP=2 -> TP=2 x DP=1")


@pytest.mark.processes
def test_tp2_to_tp1_dp1(full_tp2):
    tmp, full = full_tp2
    resume_elsewhere(tmp, full, "tp1dp1", "full", 2, TP1_DP1, "TP=2 x DP=1 -> TP=1 x DP=1")


def test_layout_change_needs_zero():
    from neox.checkpoint.atomic import config_differences

    saved = {"model_parallel_size": 2, "num_gpus": 2, "seed": 1}
    current = {"model_parallel_size": 1, "num_gpus": 1, "seed": 1}
    assert config_differences(current, saved, layout_may_change=True) == []
    assert config_differences(current, saved) == ["model_parallel_size (2 -> 1)"]


@pytest.mark.processes
@pytest.mark.parametrize("saved, now, change", [(TP2, TP1_DP1, "TP=2 x DP=1 -> TP=1 x DP=1"),
                                                (TP1_DP2, TP1_DP1, "TP=1 x DP=2 -> TP=1 x DP=1")],
                         ids=["tp2-to-tp1", "dp2-to-dp1"])
def test_a_rollback_right_after_a_resharded_resume(tmp_path, toy_data, saved, now, change):
    """A run resumed at another layout, then a loss spike: the rollback loads the newest checkpoint
    (written at the old layout) through the resume's path, resharding it again, skips the batch
    and continues as the run that never changed layout and skipped the same batch."""
    schedule = ["train_iters=5", "lr_decay_iters=20", "warmup_iters=4", "checkpoint_factor=2",
                "loss_spike_min_history=2"]
    spike = {"NEOX_FAULT_SPIKE_STEP": "3"}
    run(tmp_path, "same", *schedule, *saved, env=spike)  # the same skip, no reshard
    only_step(tmp_path, "moved/ckpt", tmp_path / "same", 2)  # its step-2 checkpoint, in a save directory
    _, out = run(tmp_path, "moved", *schedule, *now, env=spike)
    saved_at, loading_at = change.split(" -> ")
    assert out.count(f"saved at {saved_at}, loading at {loading_at}") == 2, out[-3000:]  # the resume, the rollback
    assert "rolling back to global_step2 and skipping batches [2]" in out
    rollbacks = [[r["rollback"][k] for k in ("from_step", "to_step", "skipped_batches")]
                 for name in ("same", "moved") for r in metrics(tmp_path, name) if "rollback" in r]
    assert rollbacks == [[3, 2, [2]], [3, 2, [2]]]
    assert_continues(losses(metrics(tmp_path, "same")), losses(metrics(tmp_path, "moved")), range(3, 6))
