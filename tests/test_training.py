"""End-to-end training through deepy.py on the bundled toy data (real processes, DeepSpeed)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from neox.train.lr_schedule import learning_rate

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)


def deepy(*overrides, config="llemma_configs/smoke.yml"):
    cmd = [sys.executable, "deepy.py", "train.py", config]
    for o in overrides:
        cmd += ["-o", o]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r


def read_metrics(log_dir):
    with open(os.path.join(log_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, toy_data):
    run = tmp_path_factory.mktemp("smoke")
    deepy(f"log_dir={run}/logs", f"save={run}/ckpt", f"data_cache_dir={run}/cache",
          "eval_after_checkpoint=echo {tag} {step} >> {ckpt}/evaluations.txt")
    return run


def test_smoke_lowers_loss(smoke_run):
    train = [r for r in read_metrics(smoke_run / "logs") if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 41))
    assert train[-1]["loss"] <= 0.9 * train[0]["loss"], (train[0], train[-1])
    for r in train:
        for key in ("lr", "grad_norm", "tokens_per_sec", "mfu", "consumed_samples"):
            assert key in r
        assert r["consumed_samples"] == 8 * r["step"]
        per_component = [r[f"tokens/{c}"] for c in ("arxiv", "open-web-math", "algebraic-stack")]
        assert sum(per_component) == r["consumed_samples"] * 128
    mixture = json.load(open(smoke_run / "logs" / "mixture.json"))
    assert [m["component"] for m in mixture] == ["arxiv", "open-web-math", "algebraic-stack"]
    assert [m["tokens_drawn"] for m in mixture] == [train[-1][f"tokens/{m['component']}"] for m in mixture]


def test_logged_lr_is_the_closed_form_at_every_step(smoke_run):
    train = [r for r in read_metrics(smoke_run / "logs") if "loss" in r]
    peak = 2e-3
    for r in train:
        assert r["lr"] == pytest.approx(learning_rate(r["step"], peak, peak / 30, 4, 40), rel=1e-12)
    assert train[3]["lr"] == pytest.approx(peak)  # step 4 = end of warmup
    assert train[-1]["lr"] == pytest.approx(peak / 30)


def test_validation_per_component_improves(smoke_run):
    evals = [r for r in read_metrics(smoke_run / "logs") if "val/arxiv/loss" in r]
    assert [r["step"] for r in evals] == [0, 20, 40]
    for comp in ("arxiv", "open-web-math", "algebraic-stack"):
        assert evals[-1][f"val/{comp}/loss"] < evals[0][f"val/{comp}/loss"]


def test_checkpoint_layout(smoke_run):
    ckpt = smoke_run / "ckpt"
    assert (ckpt / "latest").read_text().strip() == "global_step40"
    for step in (20, 40):
        d = ckpt / f"global_step{step}"
        assert (d / "mp_rank_00_model_states.pt").is_file() and (d / "mp_rank_01_model_states.pt").is_file()
        assert json.loads((d / "config.json").read_text())["model_parallel_size"] == 2


def test_eval_after_checkpoint_runs_once_per_complete_checkpoint(smoke_run):
    """The trainer starts the command after each checkpoint is complete, without waiting for it."""
    import time

    path = smoke_run / "ckpt" / "evaluations.txt"
    for _ in range(50):  # the commands run detached; give them a moment
        if path.exists() and len(path.read_text().splitlines()) == 2:
            break
        time.sleep(0.1)
    assert sorted(path.read_text().splitlines()) == ["global_step20 20", "global_step40 40"]
