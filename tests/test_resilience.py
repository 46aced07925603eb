"""Exact resume, atomic checkpoints under kill -9, stop on SIGTERM, refusals, guarded start."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO


def launch(tmp_path, name, *overrides, env=None):
    run = tmp_path / name
    cmd = [sys.executable, "deepy.py", "train.py", "llemma_configs/smoke.yml", "-o", "precision=fp32",
           "-o", "eval_iters=0", "-o", f"data_cache_dir={tmp_path}/cache", "-o", f"log_dir={run}/logs",
           "-o", f"save={run}/ckpt"]
    for o in overrides:
        cmd += ["-o", o]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def run(tmp_path, name, *overrides, env=None, ok=True):
    p = launch(tmp_path, name, *overrides, env=env)
    out, _ = p.communicate(timeout=900)
    if ok:
        assert p.returncode == 0, out[-4000:]
    return p.returncode, out


def metrics(tmp_path, name):
    path = tmp_path / name / "logs" / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in open(path) if line.strip()]


def losses(rows):
    """Last logged loss per step (a restarted run logs the replayed steps again)."""
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


SCHEDULE = ["lr_decay_iters=20", "warmup_iters=4", "checkpoint_factor=4"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, toy_data):
    tmp = tmp_path_factory.mktemp("full")
    run(tmp, "full", *SCHEDULE, "train_iters=20", "keep_last_n_checkpoints=2")
    return tmp, losses(metrics(tmp, "full"))


def test_resume_is_exact(tmp_path, uninterrupted):
    full_tmp, full = uninterrupted
    run(tmp_path, "part", *SCHEDULE, "train_iters=10")
    assert (tmp_path / "part" / "ckpt" / "latest").read_text() == "global_step10"
    run(tmp_path, "part", *SCHEDULE, "train_iters=20")
    resumed = losses(metrics(tmp_path, "part"))
    assert sorted(resumed) == list(range(1, 21))
    for step in range(11, 21):  # bitwise equal on CPU
        assert resumed[step] == full[step], (step, resumed[step], full[step])
    # keep_last_n_checkpoints=2 kept the two newest complete checkpoints only
    kept = sorted(p.name for p in (full_tmp / "full" / "ckpt").glob("global_step*"))
    assert kept == ["global_step16", "global_step20"]


def test_kill_9_mid_run_and_during_a_checkpoint_write(tmp_path, uninterrupted):
    _, full = uninterrupted
    # 1. kill -9 the whole job between checkpoints (after step 6 is logged, before 8 is saved)
    p = launch(tmp_path, "k", *SCHEDULE, "train_iters=20")
    deadline = time.time() + 300
    while not any(r.get("step", 0) >= 6 for r in metrics(tmp_path, "k")):
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    ckpt = tmp_path / "k" / "ckpt"
    assert (ckpt / "global_step4" / "complete").is_file()
    # 2. restart; this time rank 0 dies by SIGKILL in the middle of writing global_step12
    code, out = run(tmp_path, "k", *SCHEDULE, "train_iters=20", env={"NEOX_FAULT_KILL_DURING_SAVE": "12"}, ok=False)
    assert code != 0
    assert "resumed from" in out and "global_step4" in out
    assert not (ckpt / "global_step12").exists() and (ckpt / ".tmp-global_step12").is_dir()
    assert (ckpt / "latest").read_text() == "global_step8"
    # 3. restart again: resumes from the newest complete checkpoint (8) and finishes
    code, out = run(tmp_path, "k", *SCHEDULE, "train_iters=20")
    assert "global_step8" in out
    assert (ckpt / "global_step12" / "complete").is_file() and not (ckpt / ".tmp-global_step12").exists()
    final = losses(metrics(tmp_path, "k"))
    assert sorted(final) == list(range(1, 21))
    assert all(final[s] == full[s] for s in range(1, 21))


def test_sigterm_checkpoints_and_exits_75_then_resumes(tmp_path, uninterrupted):
    _, full = uninterrupted
    p = launch(tmp_path, "t", *SCHEDULE, "train_iters=20", "checkpoint_factor=100")
    deadline = time.time() + 300
    while not any(r.get("step", 0) >= 3 for r in metrics(tmp_path, "t")):
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.2)
    # Slurm's srun signals the training tasks themselves (the children of the launcher)
    children = subprocess.run(["pgrep", "-f", "-s", str(p.pid), "train.py --local_rank"], capture_output=True,
                              text=True).stdout.split()
    assert len(children) == 2
    for pid in children:
        os.kill(int(pid), signal.SIGTERM)
    out, _ = p.communicate(timeout=300)
    assert "exit status 75" in out
    assert "exits with return code = 75" in out
    stopped = [r for r in metrics(tmp_path, "t") if r.get("stopped_by_signal")]
    assert len(stopped) == 1
    step = stopped[0]["step"]
    assert (tmp_path / "t" / "ckpt" / f"global_step{step}" / "complete").is_file()
    run(tmp_path, "t", *SCHEDULE, "train_iters=20", "checkpoint_factor=100")
    resumed = losses(metrics(tmp_path, "t"))
    assert sorted(resumed) == list(range(1, 21))
    assert all(resumed[s] == full[s] for s in range(1, 21))


def test_resume_with_a_changed_config_is_refused(tmp_path, uninterrupted):
    full_tmp, _ = uninterrupted
    code, out = run(full_tmp, "full", *SCHEDULE, "train_iters=24", "keep_last_n_checkpoints=2",
                    "optimizer.params.lr=3e-3", "seed=7", ok=False)
    assert code != 0
    assert "refused: the config differs in" in out
    assert "optimizer (" in out and "seed (1234 -> 7)" in out


def test_load_without_a_complete_checkpoint_is_a_clear_error(tmp_path, toy_data):
    empty = tmp_path / "nothing"
    empty.mkdir()
    code, out = run(tmp_path, "x", "train_iters=2", "lr_decay_iters=2", "warmup_iters=1", f"load={empty}", ok=False)
    assert code != 0 and f"load: no complete checkpoint in {empty}" in out
