"""Exact resume, atomic checkpoints under kill -9, stop on SIGTERM, refusals, guarded start."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)


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


def kill_whole_job(p):
    """kill -9 of every process of the job at once: the ranks (their own process group) and deepy.py."""
    ranks = subprocess.run(["pgrep", "-f", "-s", str(p.pid), "train.py --neox-config"], capture_output=True,
                           text=True).stdout.split()
    for pid in ranks:
        os.kill(int(pid), signal.SIGKILL)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()


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
    # DeepSpeed's zero_to_fp32.py / zero_to_torch.py (TP rank 0 only) are not left in <save>
    assert sorted(p.name for p in (full_tmp / "full" / "ckpt").iterdir()) == kept + ["latest"]


def test_kill_9_at_three_moments(tmp_path, uninterrupted):
    _, full = uninterrupted
    # 1. kill -9 the whole job between checkpoints (after step 6 is logged, before 8 is saved)
    p = launch(tmp_path, "k", *SCHEDULE, "train_iters=20")
    deadline = time.time() + 300
    while not any(r.get("step", 0) >= 6 for r in metrics(tmp_path, "k")):
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.2)
    kill_whole_job(p)
    ckpt = tmp_path / "k" / "ckpt"
    assert (ckpt / "global_step4" / "complete").is_file()
    # 2. restart; this time rank 0 dies by SIGKILL in the middle of writing global_step12
    code, out = run(tmp_path, "k", *SCHEDULE, "train_iters=20", env={"NEOX_FAULT_KILL_DURING_SAVE": "12"}, ok=False)
    assert code != 0
    assert "resumed from" in out and "global_step4" in out
    assert not (ckpt / "global_step12").exists() and len(list(ckpt.glob(".tmp-global_step12.*"))) == 1
    assert (ckpt / "latest").read_text() == "global_step8"
    # 3. restart; rank 0 dies after renaming global_step16 into place but before its marker
    code, out = run(tmp_path, "k", *SCHEDULE, "train_iters=20", env={"NEOX_FAULT_KILL_AFTER_RENAME": "16"}, ok=False)
    assert code != 0 and "global_step8" in out
    assert (ckpt / "global_step16").is_dir() and not (ckpt / "global_step16" / "complete").exists()
    assert (ckpt / "latest").read_text() == "global_step12"
    # 4. restart again: resumes from the newest complete checkpoint (12, not the unmarked 16) and finishes
    code, out = run(tmp_path, "k", *SCHEDULE, "train_iters=20")
    assert "resumed from" in out and "global_step12" in out
    assert (ckpt / "global_step12" / "complete").is_file() and not list(ckpt.glob(".tmp-*"))
    assert (ckpt / "global_step16" / "complete").is_file()
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
    children = subprocess.run(["pgrep", "-f", "-s", str(p.pid), "train.py --neox-config"], capture_output=True,
                              text=True).stdout.split()
    assert len(children) == 2
    for pid in children:
        os.kill(int(pid), signal.SIGTERM)
    out, _ = p.communicate(timeout=300)
    assert "exit status 75" in out
    assert p.returncode == 75  # deepy.py exits with the job's status
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


def _assert_all_finite(obj, where):
    import torch

    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            assert torch.isfinite(obj).all(), where
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _assert_all_finite(v, f"{where}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _assert_all_finite(v, f"{where}[{i}]")


def test_nan_skip_spike_and_nan_rollbacks_then_max_rollbacks(tmp_path, toy_data):
    import torch

    guard = ["loss_spike_min_history=4", "max_bad_steps_in_a_row=2", "max_rollbacks=2"]
    faults = {"NEOX_FAULT_NAN_STEP": "7,13,14", "NEOX_FAULT_SPIKE_STEP": "10"}
    run(tmp_path, "g", *SCHEDULE, *guard, "train_iters=16", env=faults)
    rows = metrics(tmp_path, "g")
    # step 7: NaN on rank 0 only -> the update is skipped on both ranks, its samples are logged
    skipped = [r for r in rows if r.get("skipped")]
    assert [(r["step"], r["samples"]) for r in skipped] == [(7, [48, 56]), (13, [104, 112])]
    # the spike at 10 rolls back to global_step8 and skips batch 9; NaN at 13 and 14 in a row
    # rolls back to global_step12 and skips their batches (13 and 14: batch 9 is already skipped)
    rollbacks = [r["rollback"] for r in rows if "rollback" in r]
    assert [(r["from_step"], r["to_step"], r["skipped_batches"]) for r in rollbacks] == [
        (10, 8, [9]), (14, 12, [13, 14])]
    assert rollbacks[1]["samples"] == [[104, 112], [112, 120]]
    final = {r["step"]: r for r in rows if "loss" in r}
    assert sorted(final) == [s for s in range(1, 17) if s != 7]  # 7 trained nothing
    assert all(math.isfinite(r["loss"]) for r in final.values())
    assert [final[s]["batch"] for s in (8, 9, 10, 13, 16)] == [7, 8, 10, 15, 18]
    # the replayed step 9 (same weights, same batch after the rollback) gives the same loss
    first_9 = next(r["loss"] for r in rows if r.get("step") == 9 and "loss" in r)
    assert final[9]["loss"] == first_9
    ckpt = tmp_path / "g" / "ckpt"
    for f in ckpt.rglob("*.pt"):
        _assert_all_finite(torch.load(f, map_location="cpu", weights_only=False), str(f))
    state = torch.load(ckpt / "global_step16" / "mp_rank_00_model_states.pt", weights_only=False)
    assert state["guard"]["skip_batches"] == [9, 13, 14] and state["guard"]["rollbacks"] == 2

    # a restart keeps the skip-list and the rollback count: step 17 trains on batch 19, and the
    # third rollback (a spike at 18) exceeds max_rollbacks=2 and stops the run with an error
    code, out = run(tmp_path, "g", *SCHEDULE, *guard, "train_iters=20",
                    env={"NEOX_FAULT_SPIKE_STEP": "18"}, ok=False)
    assert code not in (0, 75)
    assert "2 rollbacks already (max_rollbacks 2); stopping" in out
    assert next(r for r in metrics(tmp_path, "g") if r.get("step") == 17 and "loss" in r)["batch"] == 19


def test_corrupt_checkpoint_and_changed_data_are_clear_errors(tmp_path, uninterrupted):
    import shutil

    full_tmp, _ = uninterrupted
    shutil.copytree(full_tmp / "full" / "ckpt", tmp_path / "c" / "ckpt")
    step20 = tmp_path / "c" / "ckpt" / "global_step20"
    args = (*SCHEDULE, "train_iters=24", "keep_last_n_checkpoints=2")

    # the data a run started with changed under it (recorded identity differs from the files now)
    data_json = step20 / "data.json"
    original = data_json.read_text()
    recorded = json.loads(original)
    changed = next(p for p in recorded if p.endswith("algebraic-stack_train_text_document.bin"))
    recorded[changed]["sha256"] = "0" * 64
    data_json.write_text(json.dumps(recorded, indent=1))  # same size: the manifest still matches
    code, out = run(tmp_path, "c", *args, ok=False)
    errors = [line for line in out.splitlines() if "rror" in line]
    assert code != 0 and f"error: data file {changed} changed since the run started" in out, errors
    data_json.write_text(original)

    # a truncated file is caught from the manifest before the model is built
    model_file = step20 / "mp_rank_01_model_states.pt"
    intact = model_file.read_bytes()
    model_file.write_bytes(intact[: len(intact) // 2])
    code, out = run(tmp_path, "c", *args, ok=False)
    assert code != 0 and f"error: checkpoint file {model_file} is corrupt: {len(intact) // 2} bytes" in out
    model_file.write_bytes(intact)

    # same size, garbage inside: the failed load names the file
    optim_file = next(step20.glob("*optim_states.pt"))
    data = bytearray(optim_file.read_bytes())
    data[: len(data) // 2] = b"\xff" * (len(data) // 2)
    optim_file.write_bytes(bytes(data))
    code, out = run(tmp_path, "c", *args, ok=False)
    assert code != 0 and f"error: checkpoint file {optim_file} is corrupt (" in out
