"""Warmup-stable-decay and anneals: a 30-step WSD smoke run logs the closed-form LR; an anneal (a
branch of that stable run from its step 10, with its own 10-step decay and save directory) equals
step for step one uninterrupted WSD run whose decay starts at step 10, and never writes the source."""

import hashlib
import os

import pytest
from test_lr_schedule import wsd_closed_form
from test_resilience import metrics, run

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)

PEAK, WARMUP = 2e-3, 4  # smoke.yml's


def wsd(train_iters, decay_iters, decay_steps):
    return [f"train_iters={train_iters}", f"lr_decay_iters={decay_iters}", f"warmup_iters={WARMUP}",
            "lr_decay_style=wsd", f"lr_wsd_decay_iters={decay_steps}", "min_lr=2e-5"]


def hashes(directory):
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_an_anneal_from_a_stable_run_equals_the_run_planned_that_way(tmp_path, toy_data):
    # the stable run: WSD whose decay (steps 51-60) it never reaches in its 30 steps
    run(tmp_path, "stable", *wsd(30, 60, 10), "checkpoint_factor=10")
    rows = [r for r in metrics(tmp_path, "stable") if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 31))
    for r in rows:  # the logged LR is the closed form at every step
        assert r["lr"] == pytest.approx(wsd_closed_form(r["step"], WARMUP, 60, 10, PEAK, 2e-5, "linear"),
                                        rel=1e-12)
    source = tmp_path / "stable" / "ckpt"
    before = hashes(source)

    run(tmp_path, "planned", *wsd(20, 20, 10), "checkpoint_factor=100")  # decays over steps 11-20
    _, out = run(tmp_path, "anneal", *wsd(20, 20, 10), "checkpoint_factor=100", f"load={source}", "load_step=10",
                 "anneal=true")
    assert f"anneal: a branch of {source} at its global_step10" in out
    planned = {r["step"]: r for r in metrics(tmp_path, "planned") if "loss" in r}
    annealed = {r["step"]: r for r in metrics(tmp_path, "anneal") if "loss" in r}
    assert sorted(annealed) == list(range(11, 21))
    for step, r in annealed.items():
        assert r["loss"] == planned[step]["loss"], step  # bitwise, on CPU
        assert r["lr"] == planned[step]["lr"] == pytest.approx(
            wsd_closed_form(step, WARMUP, 20, 10, PEAK, 2e-5, "linear"), rel=1e-12)
    assert hashes(source) == before  # the source run's directory is only read
    assert (tmp_path / "anneal" / "ckpt" / "global_step20" / "complete").exists()

    # a step the source has no checkpoint of is refused before anything starts
    code, out = run(tmp_path, "bad", *wsd(20, 20, 10), f"load={source}", "load_step=15", "anneal=true", ok=False)
    assert code == 1 and (f"key 'load_step': {source} has no complete checkpoint of step 15 (complete: 10, 20, 30)"
                          in out)
