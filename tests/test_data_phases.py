"""The mixture by phase (data_phases): the smoke run changes its weights after step 10 of 20; the
tokens consumed per component in each phase are that phase's weights (to one sample); stopped at
step 15 and resumed, the run equals the uninterrupted one."""

import pytest
from test_resilience import losses, metrics, run

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)

FIRST, SECOND = [2, 4, 1], [0.1, 0.1, 0.8]  # smoke.yml's train_data_weights, then the second phase's
COMPONENTS = ["arxiv", "open-web-math", "algebraic-stack"]
G, SEQ = 8, 128  # smoke.yml's global batch (sequences) and sequence length
PHASES = ["data_phases=[{after_step: 10, weights: [0.1, 0.1, 0.8]}]", "lr_decay_iters=20", "checkpoint_factor=15"]


def test_a_phase_change_consumes_each_phases_weights_and_resumes_exactly(tmp_path, toy_data):
    run(tmp_path, "full", "train_iters=20", *PHASES)
    rows = {r["step"]: r for r in metrics(tmp_path, "full") if "loss" in r}
    consumed = {s: [rows[s][f"tokens/{c}"] // SEQ for c in COMPONENTS] for s in (10, 20)}
    for before, after, weights, steps in ((None, 10, FIRST, 10), (10, 20, SECOND, 10)):
        samples = [a - (consumed[before][i] if before else 0) for i, a in enumerate(consumed[after])]
        assert sum(samples) == steps * G
        for n, w in zip(samples, weights):
            assert abs(n - steps * G * w / sum(weights)) < 1, (after, samples, weights)

    run(tmp_path, "stopped", "train_iters=15", *PHASES)
    run(tmp_path, "stopped", "train_iters=20", *PHASES)  # resumes from its step-15 checkpoint
    resumed = losses(metrics(tmp_path, "stopped"))
    full = losses(metrics(tmp_path, "full"))
    assert sorted(resumed) == list(range(1, 21))
    assert all(resumed[s] == full[s] for s in range(1, 21))  # bitwise on CPU, across the phase change
