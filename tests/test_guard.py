"""The guard's pure logic: batch numbering with a skip-list, spike threshold, verdicts."""

import math
import statistics

import pytest
from conftest import tiny_cfg

from neox.train.guard import GuardStop, LossGuard, batch_of_step


def test_batch_of_step_leaves_out_skipped_batches():
    skip = [3, 4, 9]
    batches = [batch_of_step(s, skip) for s in range(10)]
    assert batches == [0, 1, 2, 5, 6, 7, 8, 10, 11, 12]
    assert not set(batches) & set(skip)
    assert [batch_of_step(s, []) for s in range(5)] == list(range(5))


def guard(**overrides):
    return LossGuard(tiny_cfg(**overrides).guard)


def test_spike_threshold_is_mean_plus_k_sample_std():
    g = guard(loss_spike_std_factor=3.0, loss_spike_min_history=5, loss_spike_window=5)
    losses = [2.0, 2.1, 1.9, 2.05, 1.95, 2.02, 1.98]
    for i, v in enumerate(losses, start=1):
        assert g.check(i, v, 1.0) == ("ok", "")
    window = losses[-5:]
    expected = statistics.mean(window) + 3.0 * statistics.stdev(window)
    assert g.spike_threshold() == pytest.approx(expected, rel=1e-12)
    assert g.check(8, expected - 1e-6, 1.0)[0] == "ok"
    verdict, reason = g.check(9, g.spike_threshold() + 1e-6, 1.0)
    assert verdict == "rollback" and "loss spike" in reason


def test_no_spike_test_before_min_history_and_when_disabled():
    g = guard(loss_spike_min_history=50)
    for i in range(1, 10):
        g.check(i, 1.0 + 0.001 * i, 1.0)
    assert g.check(10, 1000.0, 1.0)[0] == "ok"
    g = guard(loss_spike_std_factor=0.0, loss_spike_min_history=2)
    for i in range(1, 10):
        g.check(i, 1.0 + 0.001 * i, 1.0)
    assert g.check(10, 1000.0, 1.0)[0] == "ok"


def test_non_finite_steps_skip_then_roll_back_then_stop():
    g = guard(max_bad_steps_in_a_row=2, max_rollbacks=1)
    assert g.check(1, 3.0, 1.0)[0] == "ok"
    assert g.check(2, math.nan, math.inf)[0] == "skipped"
    assert g.check(3, 2.9, 1.0)[0] == "ok"  # a good step resets the count
    assert g.check(4, math.nan, math.inf)[0] == "skipped"
    verdict, _ = g.check(5, math.inf, math.nan)
    assert verdict == "rollback"
    info = g.plan_rollback(2, "/ckpt", "2 non-finite steps in a row")
    assert info["to_step"] == 2 and info["skipped_batches"] == [3, 4] and g.skip_batches == [3, 4]
    assert [s for s, _ in g.history] == [1]  # history after the checkpoint is dropped
    # a non-finite loss with a finite gradient norm means the update went in: roll back at once
    assert g.check(3, math.nan, 1.0)[0] == "rollback"
    with pytest.raises(GuardStop, match=r"1 rollbacks already \(max_rollbacks 1\)"):
        g.plan_rollback(2, "/ckpt", "x")


def test_rollback_without_a_checkpoint_stops_with_a_clear_error():
    g = guard()
    g.check(1, math.nan, 1.0)
    with pytest.raises(GuardStop, match="no complete checkpoint in /runs/x to roll back to"):
        g.plan_rollback(None, "/runs/x", "non-finite loss")


def test_guard_state_round_trips():
    g = guard(max_bad_steps_in_a_row=1)
    g.check(1, 2.0, 1.0)
    g.check(2, math.nan, math.inf)
    g.plan_rollback(1, "/c", "r")
    h = LossGuard(g.cfg, g.state())
    assert h.state() == g.state() and h.batch(1) == 2
