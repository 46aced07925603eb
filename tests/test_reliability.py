"""The reliability fault table (docs/checkpoints.md, faults): each fault reproduced on
CPU and the trainer's answer asserted (error text naming the file or key, exit status, a time
bound for hangs and orphans, complete checkpoints kept). Pure checks run in-process; the few
DeepSpeed launches each carry several faults."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO

from neox.data.check import HEADER_BYTES, DataError, check_index, check_tokenizer

TOY = os.path.join(REPO, "data", "toy")
ARXIV = "arxiv_train_text_document"


def copy_component(toy_data, dest, name=ARXIV, manifest=True):
    os.makedirs(dest, exist_ok=True)
    exts = (".bin", ".idx", ".manifest.json") if manifest else (".bin", ".idx")
    for ext in exts:
        shutil.copy(os.path.join(toy_data, "tokenized", name + ext), os.path.join(dest, name + ext))
    return os.path.join(dest, name)


def deepy(tmp_path, *overrides, env=None, popen=False, run_dir="run"):
    cmd = [sys.executable, "deepy.py", "train.py", "llemma_configs/smoke.yml", "-o", "precision=fp32",
           "-o", "eval_iters=0", "-o", f"data_cache_dir={tmp_path}/cache", "-o", f"log_dir={tmp_path}/{run_dir}/logs",
           "-o", f"save={tmp_path}/{run_dir}/ckpt", "-o", "lr_decay_iters=40", "-o", "warmup_iters=2"]
    for o in overrides:
        cmd += ["-o", o]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, **(env or {})}, start_new_session=True)
    if popen:
        return p
    out, _ = p.communicate(timeout=600)
    return p.returncode, out


def error_lines(out):
    return [line for line in out.splitlines() if line.startswith("error:")]


# ----------------------------------------------------------------------------- data before step 1


@pytest.mark.processes
def test_idx_and_bin_faults_name_the_file(toy_data, tmp_path):
    prefix = copy_component(toy_data, tmp_path / "d")
    info = check_index(prefix)
    assert info["sequences"] == 329 and info["tokens"] == 253907 and info["dtype"] == "uint16"
    idx, binf = prefix + ".idx", prefix + ".bin"
    good_idx, good_bin = open(idx, "rb").read(), open(binf, "rb").read()
    n = info["sequences"]

    def garbled(offset, value, dtype):
        data = bytearray(good_idx)
        data[offset: offset + np.dtype(dtype).itemsize] = np.array([value], dtype=dtype).tobytes()
        open(idx, "wb").write(bytes(data))
        with pytest.raises(DataError) as e:
            check_index(prefix)
        open(idx, "wb").write(good_idx)
        return str(e.value)

    open(binf, "wb").write(good_bin[:-100])  # truncated .bin
    with pytest.raises(DataError, match=rf"{binf}: 507714 bytes, but {idx} indexes 507814 bytes \(truncated .bin\)"):
        check_index(prefix)
    open(binf, "wb").write(good_bin)
    # a garbled length (the one that made megatron write a 3 GB index cache) and a garbled pointer
    assert garbled(HEADER_BYTES + 4 * 7, 1 << 30, np.int32).startswith(f"{idx}: sequence 8 starts at byte")
    assert garbled(HEADER_BYTES + 4 * 7, -5, np.int32) == (
        f"{idx}: sequence 7 has negative length -5: the index is garbled")
    assert "the index pointers are garbled" in garbled(HEADER_BYTES + 4 * n + 8 * 3, 12345, np.int64)
    open(idx, "wb").write(good_idx[:-8])  # truncated .idx
    with pytest.raises(DataError, match=rf"{idx}: {len(good_idx) - 8} bytes, but its header promises 329 sequences"):
        check_index(prefix)
    open(idx, "wb").write(b"garbage")
    with pytest.raises(DataError, match=rf"{idx}: not a megatron .idx file"):
        check_index(prefix)


@pytest.mark.processes
def test_tokenizer_of_the_data_must_be_the_runs(toy_data, tmp_path):
    prefix = copy_component(toy_data, tmp_path / "d")
    tok = os.path.join(toy_data, "tokenizer.model")
    assert check_tokenizer(prefix, tok, 3001, False) is None
    other = tmp_path / "other.model"
    other.write_bytes(open(tok, "rb").read() + b"\0")  # another tokenizer file (another hash)
    with pytest.raises(DataError) as e:
        check_tokenizer(prefix, str(other), 3001, False)
    assert str(e.value).startswith(
        f"{prefix}.bin was tokenized with ../tokenizer.model (vocabulary 3001, sha256 fbc6483b73b4)")
    assert f"but vocab_file is {other} (vocabulary 3001" in str(e.value)
    with pytest.raises(DataError, match="vocabulary 3001, sha256 fbc6483b73b4.*vocabulary 32000"):
        check_tokenizer(prefix, tok, 32000, False)
    os.remove(prefix + ".manifest.json")
    with pytest.raises(DataError, match=rf"{prefix}.manifest.json not found: .* set data_without_manifest: true"):
        check_tokenizer(prefix, tok, 3001, False)
    assert "is not checked against" in check_tokenizer(prefix, tok, 3001, True)


@pytest.mark.processes
def test_deepy_refuses_bad_data_before_spawning(toy_data, tmp_path):
    """Garbled lengths: one error line naming the .idx, exit 1, nothing spawned, no index cache."""
    prefix = copy_component(toy_data, tmp_path / "d")
    data = bytearray(open(prefix + ".idx", "rb").read())
    pointer2, pointer3 = np.frombuffer(data, np.int64, 2, HEADER_BYTES + 4 * 329 + 16).tolist()
    data[HEADER_BYTES + 8: HEADER_BYTES + 12] = np.array([1 << 30], dtype=np.int32).tobytes()
    open(prefix + ".idx", "wb").write(bytes(data))
    t0 = time.time()
    code, out = deepy(tmp_path, f"train_data_paths=[{prefix}]", "train_data_weights=[1]")
    assert code == 1 and error_lines(out) == [
        f"error: {prefix}.idx: sequence 3 starts at byte {pointer3}, expected {pointer2 + 2 ** 31}: the index "
        "pointers are garbled"], out
    assert "deepy: 2 processes" not in out and time.time() - t0 < 120
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "ckpt").exists()


@pytest.mark.processes
def test_token_ids_beyond_the_vocabulary_stop_the_run_naming_samples_and_file(toy_data, tmp_path):
    """No manifest (data_without_manifest: true) and ids >= 3001 in the .bin: the on-device check
    stops step 1 with exit 1, naming the global samples and the data file; nothing is saved."""
    prefix = copy_component(toy_data, tmp_path / "d", manifest=False)
    tokens = np.fromfile(prefix + ".bin", dtype=np.uint16)
    tokens[::100] = 3500  # as if tokenized with a larger vocabulary: in every sample of 129 tokens
    tokens.tofile(prefix + ".bin")
    code, out = deepy(tmp_path, f"train_data_paths=[{prefix}]", "train_data_weights=[1]", "data_without_manifest=true",
                      "train_iters=4", "checkpoint_factor=1")
    assert code == 1, out[-3000:]
    assert f"warning: {prefix}.manifest.json not found" in out
    errors = error_lines(out)
    assert len(errors) == 1 and errors[0].startswith(
        "error: step 1: token ids outside the vocabulary (0..3000) in global samples [0, "), out[-3000:]
    samples = json.loads(errors[0].split("global samples ")[1].split("]")[0] + "]")
    assert samples == list(range(8))  # the whole first global batch
    assert f"from data file {prefix}.bin:" in errors[0]
    assert not list((tmp_path / "run" / "ckpt").glob("global_step*"))


# ----------------------------------------------------------------------------- one job per save directory


@pytest.mark.processes
def test_save_lock_refuses_a_live_holder_and_takes_over_stale_ones(tmp_path):
    import socket

    from neox.checkpoint.files import CheckpointError
    from neox.checkpoint.lock import SaveLock

    save = tmp_path / "ckpt"
    first = SaveLock(str(save), stale_minutes=30)
    assert first.acquire() == []
    held = json.loads((save / ".lock").read_text())
    assert held["host"] == socket.gethostname() and held["pid"] == os.getpid()
    with pytest.raises(CheckpointError, match=rf"save directory {save} is in use by another job \(host "
                                              rf"{socket.gethostname()} pid {os.getpid()}, started "):
        SaveLock(str(save), 30).acquire()
    first.release()
    assert not (save / ".lock").exists()

    dead = subprocess.Popen(["true"])
    dead.wait()
    (save / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "start_time": "t0"}))
    (save / f".tmp-global_step8.{socket.gethostname()}-{dead.pid}-local").mkdir()
    (save / "global_step4").mkdir()
    warnings = SaveLock(str(save), 30).acquire()
    assert warnings == [f"save directory {save}: took over the stale lock of host {socket.gethostname()} pid "
                        f"{dead.pid}, started t0 (pid {dead.pid} is not running)",
                        f"removed 1 unfinished checkpoint directory of earlier jobs: .tmp-global_step8."
                        f"{socket.gethostname()}-{dead.pid}-local"]
    assert sorted(p.name for p in save.iterdir()) == [".lock", "global_step4"]

    # another host: alive while it refreshes the lock, stale once it is older than the limit
    other = {"host": "gpu-node-17", "pid": 1, "slurm_job_id": "4242", "start_time": "t1"}
    (save / ".lock").write_text(json.dumps(other))
    with pytest.raises(CheckpointError, match=r"in use by another job \(host gpu-node-17 pid 1, Slurm job 4242"):
        SaveLock(str(save), 30).acquire()
    old = time.time() - 31 * 60
    os.utime(save / ".lock", (old, old))
    assert SaveLock(str(save), 30).acquire()[0].endswith("(not refreshed for 31 minutes (save_lock_stale_minutes 30))")


def test_a_lock_of_a_slurm_job_that_ended_is_stale_on_its_own_cluster_only(tmp_path, monkeypatch):
    """Rank 0 killed with SIGKILL cannot release the lock: a requeue of the same job, or any job once
    squeue no longer runs the holder's, takes it over; a job id of another cluster proves nothing."""
    from neox.checkpoint import lock as save_lock

    monkeypatch.setattr(save_lock, "slurm_job_running", lambda job: job == "17")
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "ours")
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    holder = {"host": "gpu-node-17", "pid": 1, "slurm_job_id": "4242", "slurm_cluster": "ours"}
    assert save_lock.stale_reason(holder, 0, 30) == "Slurm job 4242 is no longer running"
    assert save_lock.stale_reason({**holder, "slurm_job_id": "17"}, 0, 30) is None
    assert save_lock.stale_reason({**holder, "slurm_cluster": "theirs"}, 0, 30) is None
    assert save_lock.stale_reason({**holder, "slurm_job_id": "99"}, 0, 30).startswith("an earlier run of this Slurm job")


def metrics(run_dir):
    path = run_dir / "logs" / "metrics.jsonl"
    return [json.loads(line) for line in open(path) if line.strip()] if path.exists() else []


def wait_for_step(p, run_dir, step, limit=300):
    deadline = time.time() + limit
    while not any(r.get("step", 0) >= step and "loss" in r for r in metrics(run_dir)):
        assert time.time() < deadline and p.poll() is None, p.poll()
        time.sleep(0.2)


def processes_of(session: int) -> list[str]:
    """Processes of a session still alive (zombies waiting for init to reap them do not count)."""
    ps = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-s", str(session)], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if line.split()[1][0] != "Z"]


@pytest.mark.processes
def test_one_job_per_save_directory_and_deepy_owns_its_ranks(toy_data, tmp_path):
    """Job A trains; job B on A's save directory is refused naming A; SIGTERM to deepy.py alone
    checkpoints and exits 75 with no process left; A resumes, deepy.py is killed with -9 and the
    orphaned ranks checkpoint and stop by themselves; every complete checkpoint survives; a
    restart past the end warns about what it skips and trains nothing."""
    run_a, ckpt = tmp_path / "a", tmp_path / "a" / "ckpt"
    args = ("train_iters=40", "checkpoint_factor=4")
    a = deepy(tmp_path, *args, popen=True, run_dir="a")
    wait_for_step(a, run_a, 1)
    holder = json.loads((ckpt / ".lock").read_text())
    ranks = os.getpgid(holder["pid"])  # rank 0 leads the ranks' process group
    os.killpg(ranks, signal.SIGSTOP)  # A holds still (alive) while B starts
    code, out = deepy(tmp_path, *args, f"save={ckpt}", run_dir="b")
    os.killpg(ranks, signal.SIGCONT)
    assert code == 1 and error_lines(out) == [
        f"error: save directory {ckpt} is in use by another job (host {holder['host']} pid {holder['pid']}, "
        f"started {holder['start_time']}; lock {ckpt}/.lock): two jobs would delete each other's "
        "checkpoints; stop that job or give this one another save directory"], out[-3000:]
    assert a.poll() is None

    # SIGTERM to deepy.py only (what many schedulers do): passed on, checkpoint, exit 75, nothing left
    wait_for_step(a, run_a, 5)
    a.send_signal(signal.SIGTERM)
    t0 = time.time()
    out_a, _ = a.communicate(timeout=300)
    assert a.returncode == 75 and "deepy: SIGTERM: passed on to the ranks" in out_a, out_a[-3000:]
    assert time.time() - t0 < 60 and processes_of(a.pid) == []
    stopped = next(r["step"] for r in metrics(run_a) if r.get("stopped_by_signal"))
    saved = sorted(int(p.name[11:]) for p in ckpt.glob("global_step*"))
    assert saved == sorted({*range(4, stopped + 1, 4), stopped}) and not (ckpt / ".lock").exists()
    assert all((ckpt / f"global_step{s}" / "complete").is_file() for s in saved)

    # kill -9 of deepy.py: the kernel tells the ranks (SIGTERM), they checkpoint and stop
    a = deepy(tmp_path, *args, popen=True, run_dir="a")
    wait_for_step(a, run_a, stopped + 2)
    os.kill(a.pid, signal.SIGKILL)
    t0 = time.time()
    while processes_of(a.pid):
        assert time.time() - t0 < 60, processes_of(a.pid)
        time.sleep(0.2)
    orphan_log = (run_a / "logs" / "orphaned-rank0.log").read_text()
    assert f"launcher (deepy.py pid {a.pid}) is gone: stopping at the next safe point with a checkpoint" in orphan_log
    last = max(r["step"] for r in metrics(run_a) if r.get("stopped_by_signal"))
    assert last > stopped and (ckpt / f"global_step{last}" / "complete").is_file()
    assert (ckpt / "latest").read_text() == f"global_step{last}"
    assert all((ckpt / f"global_step{s}" / "complete").is_file() for s in saved)

    # say what it does: `latest` names a missing tag, the newest directory has no `complete`, and
    # train_iters is at the checkpoint's step: three warnings, nothing trained, exit 0
    (ckpt / "latest").write_text("global_step99")
    (ckpt / "global_step98").mkdir()
    code, out = deepy(tmp_path, f"train_iters={last}", "checkpoint_factor=4", run_dir="a")
    assert code == 0, out[-3000:]
    assert [line for line in out.splitlines() if line.startswith("warning:")] == [
        f"warning: {ckpt}/latest names global_step99, which does not exist; resuming from the newest complete "
        f"checkpoint global_step{last} instead",
        f"warning: {ckpt}/global_step98 has no 'complete' marker (a save that did not finish): ignored; resuming "
        f"from global_step{last}",
        f"warning: train_iters {last} is at or below the checkpoint's step {last}: nothing to train; exit status 0 "
        "(raise train_iters to train on)"]
    assert max(r["step"] for r in metrics(run_a)) == last


# ----------------------------------------------------------------------------- the launcher owns its children

# deepy.py starts its ranks with SIGTERM / SIGUSR1 blocked (train.py reads them with neox.launch.stop_request);
# the stand-in takes SIGTERM with a handler of its own
STAND_IN_RANK = r'''
import os, signal, sys, time
signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGUSR1))
def on_term(*_):
    time.sleep(1)  # "writing a checkpoint"
    print(f"rank {os.environ['RANK']} saved", flush=True)
    sys.exit(75)
signal.signal(signal.SIGTERM, on_term)
print(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} ready", flush=True)
time.sleep(60)
'''


@pytest.fixture
def stand_in_job(tmp_path):
    """deepy's LocalJob around two stand-in ranks (no torch: they start in a blink)."""
    from neox.launch.local_launch import LocalJob

    script = tmp_path / "rank.py"
    script.write_text(STAND_IN_RANK)
    lines = []

    def pump(stream, _out):
        lines.extend(stream)

    job = LocalJob([sys.executable, str(script)], 2, 12345, dict(os.environ), pump)
    job.start()
    deadline = time.time() + 30
    while sum("ready" in line for line in lines) < 2:
        assert time.time() < deadline
        time.sleep(0.05)
    yield job, lines
    job.signal_job(signal.SIGKILL)


@pytest.mark.processes
def test_ctrl_c_once_checkpoints_and_exits_75_twice_stops_at_once(stand_in_job, capsys):
    job, lines = stand_in_job
    assert os.getpgid(job.procs[1].pid) == job.procs[0].pid != os.getpgid(0)  # a terminal's Ctrl-C reaches deepy only
    job.on_signal(signal.SIGINT, None)
    assert job.wait() == 75
    assert sorted(line for line in lines if "saved" in line) == ["rank 0 saved\n", "rank 1 saved\n"]
    assert "deepy: Ctrl-C: the ranks checkpoint after this step and exit 75" in capsys.readouterr().err


@pytest.mark.processes
def test_second_ctrl_c_kills_at_once(stand_in_job, capsys):
    job, lines = stand_in_job
    t0 = time.time()
    job.on_signal(signal.SIGINT, None)
    job.on_signal(signal.SIGINT, None)
    assert job.wait() == 130 and time.time() - t0 < 1  # the ranks' 1 s "checkpoint" was cut short
    assert not any("saved" in line for line in lines)
    assert "deepy: second Ctrl-C: killing the ranks now (no checkpoint)" in capsys.readouterr().err


@pytest.mark.processes
def test_kill_9_of_rank_0_is_blamed_on_rank_0(stand_in_job, capsys):
    job, lines = stand_in_job
    t0 = time.time()
    os.kill(job.procs[0].pid, signal.SIGKILL)
    assert job.wait() == 128 + 9 and time.time() - t0 < 10
    assert capsys.readouterr().err.splitlines()[0] == (
        f"deepy: rank 0 (pid {job.procs[0].pid}) was killed by signal SIGKILL; stopping the other ranks "
        "(SIGTERM, SIGKILL after 30 s)")
    assert "rank 1 saved\n" in lines  # the other rank got SIGTERM: its own stop


def test_resume_tag_says_what_it_passes_over(tmp_path):
    from neox.checkpoint.atomic import resume_tag

    for step in (4, 8):
        (tmp_path / f"global_step{step}").mkdir()
        (tmp_path / f"global_step{step}" / "complete").write_text(f"{step}\n")
    (tmp_path / "global_step12").mkdir()  # a save that died after the rename, before the marker
    (tmp_path / "latest").write_text("global_step12")
    assert resume_tag(str(tmp_path)) == ("global_step8", [
        f"{tmp_path}/latest names global_step12, which has no 'complete' marker; resuming from the newest complete "
        "checkpoint global_step8 instead",
        f"{tmp_path}/global_step12 has no 'complete' marker (a save that did not finish): ignored; resuming from "
        "global_step8"])
    (tmp_path / "latest").write_text("global_step4")
    assert resume_tag(str(tmp_path))[0] == "global_step4"  # `latest` wins when it is complete


@pytest.mark.processes
def test_kill_9_of_rank_0_in_a_real_job(toy_data, tmp_path):
    """TP=2: rank 0 dies by SIGKILL; deepy names rank 0 and its signal (DeepSpeed's launcher named
    --local_rank=1), rank 1 is stopped, nothing is left running, the checkpoints stay complete."""
    run_dir, ckpt = tmp_path / "run", tmp_path / "run" / "ckpt"
    p = deepy(tmp_path, "train_iters=400", "checkpoint_factor=2", popen=True)
    wait_for_step(p, run_dir, 3)
    rank0 = rank_pid(p.pid, 0)
    os.kill(rank0, signal.SIGKILL)
    t0 = time.time()
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 137 and time.time() - t0 < 30 + 15, out[-3000:]
    assert (f"deepy: rank 0 (pid {rank0}) was killed by signal SIGKILL; stopping the other ranks (SIGTERM, SIGKILL "
            "after 30 s)") in out
    assert processes_of(p.pid) == []
    saved = sorted(int(d.name[11:]) for d in ckpt.glob("global_step*"))
    assert saved and all((ckpt / f"global_step{s}" / "complete").is_file() for s in saved)


# ----------------------------------------------------------------------------- save failures: clear and early


@pytest.fixture
def small_filesystem(tmp_path):
    """mount(size_mib, read_only=False) -> a fresh tmpfs of that size (unmounted afterwards)."""
    mounts = []

    def mount(size_mib, read_only=False):
        where = tmp_path / f"fs{len(mounts)}"
        where.mkdir()
        opts = f"size={size_mib}m" + (",ro" if read_only else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"a small filesystem needs mount (root): {r.stderr.strip()}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", str(where)])


def test_save_directory_checked_at_start(tmp_path):
    """Not writable, or too small for one checkpoint: one line naming save, before any step."""
    from neox.checkpoint.files import CheckpointError
    from neox.checkpoint.lock import check_save_dir, io_cause

    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(CheckpointError, match=rf"key 'save': {tmp_path}/ckpt has [\d,.]+ MiB free but one "
                                              r"checkpoint needs [\d,.]+ MiB \(planner\)"):
        check_save_dir(str(tmp_path / "ckpt"), free + 2**30)
    check_save_dir(str(tmp_path / "ckpt"), 2**20)
    with pytest.raises(CheckpointError, match=r"key 'save': cannot write to /proc/version/ckpt: Not a directory"):
        check_save_dir("/proc/version/ckpt", 1)
    assert io_cause(OSError(28, "No space left on device"), str(tmp_path)) == "No space left on device"
    assert io_cause(RuntimeError("unexpected pos 3328 vs 3220"), str(tmp_path)) == (
        "RuntimeError: unexpected pos 3328 vs 3220")  # the probe write succeeded: torch's own words


@pytest.mark.processes
def test_planner_checkpoint_size_is_what_a_save_writes(toy_data):
    from neox.config import load_config
    from neox.model.planner import checkpoint_bytes

    cfg = load_config([os.path.join(REPO, "llemma_configs", "smoke.yml")], ["precision=fp32"], dry_run=True)
    assert checkpoint_bytes(cfg) == pytest.approx(18_180_402, rel=0.01)  # du -sb of a smoke checkpoint


@pytest.mark.processes
def test_save_not_writable_too_small_and_disk_full_during_a_save(toy_data, tmp_path, small_filesystem):
    read_only, tiny, small = small_filesystem(4, read_only=True), small_filesystem(8), small_filesystem(30)
    code, out = deepy(tmp_path, f"save={read_only}/ckpt")
    assert code == 1 and error_lines(out) == [
        f"error: key 'save': cannot write to {read_only}/ckpt: Read-only file system"]
    code, out = deepy(tmp_path, f"save={tiny}/ckpt")
    assert code == 1 and error_lines(out) == [
        f"error: key 'save': {tiny}/ckpt has 8.0 MiB free but one checkpoint needs 17.3 MiB (planner): free space or "
        "save elsewhere"], out
    assert "deepy: 2 processes" not in out  # nothing was spawned

    # 30 MiB: the checkpoint of step 4 fits (18.2 MB), the one of step 8 does not
    ckpt = small / "ckpt"
    code, out = deepy(tmp_path, f"save={ckpt}", "train_iters=12", "checkpoint_factor=4",
                      "watchdog_first_step_seconds=120")
    errors = error_lines(out)
    assert code == 1 and errors, out[-3000:]
    assert errors[0].startswith(f"error: saving checkpoint global_step8 to {ckpt}/.tmp-global_step8."), errors
    assert errors[0].endswith(f"failed: No space left on device; the unfinished directory was removed; the newest "
                              f"complete checkpoint is {ckpt}/global_step4")
    checkpoints = sorted(p.name for p in ckpt.iterdir() if p.name.startswith((".tmp", "global_step")))
    assert checkpoints == ["global_step4"] and (ckpt / "latest").read_text() == "global_step4"
    from neox.checkpoint.atomic import verify_manifest

    verify_manifest(str(ckpt / "global_step4"))
    assert (ckpt / "global_step4" / "complete").is_file()


@pytest.mark.processes
def test_a_write_failing_on_one_rank_only_ends_the_save_on_every_rank(toy_data, tmp_path):
    """Rank 1's write fails, rank 0's succeeds: rank 0 must not wait in DeepSpeed's closing barrier
    (it did, until the watchdog ended the run with 76); every rank stops at once with exit 1."""
    ckpt = tmp_path / "run" / "ckpt"
    code, out = deepy(tmp_path, "train_iters=12", "checkpoint_factor=4", "watchdog_first_step_seconds=120",
                      env={"NEOX_FAULT_WRITE_ERROR": "1:8"})
    assert code == 1 and "watchdog" not in out, out[-3000:]
    errors = error_lines(out)  # rank 1's line; rank 0 stops without one
    assert len(errors) == 1 and errors[0].startswith(f"error: saving checkpoint global_step8 to {ckpt}/.tmp-global_step8."
                                                     ), out[-3000:]
    assert errors[0].endswith("failed: No space left on device; the unfinished directory was removed; the newest "
                              f"complete checkpoint is {ckpt}/global_step4")
    assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith((".tmp", "global_step"))) == ["global_step4"]
    assert (ckpt / "latest").read_text() == "global_step4" and (ckpt / "global_step4" / "complete").is_file()


# ----------------------------------------------------------------------------- config values


def numeric_keys():
    import dataclasses

    from neox.config import SECTIONS

    return [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)
            if str(f.type) in ("int", "float", "Optional[int]", "Optional[float]")]


# keys documented to accept a non-finite value (none so far)
ACCEPTS_NON_FINITE = set()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_every_numeric_key_rejects_non_finite_values(value):
    from conftest import tiny_cfg

    from neox.config import ConfigError

    keys = numeric_keys()
    assert len(keys) >= 40 and {"seed", "eval_iters", "rotary_emb_base", "min_lr", "planner_mfu"} <= set(keys)
    accepted = []
    for key in keys:
        try:
            tiny_cfg(**{key: value})
        except ConfigError as e:
            assert f"'{key}'" in str(e), (key, str(e))
        else:
            accepted.append(key)
    assert sorted(accepted) == sorted(ACCEPTS_NON_FINITE)
    for dotted in ("lr", "eps"):  # inside optimizer.params
        with pytest.raises(ConfigError, match=rf"key 'optimizer.params(.{dotted})?'"):
            tiny_cfg(optimizer={"type": "AdamW", "params": {"lr": 1e-4, dotted: value}})
    with pytest.raises(ConfigError, match="key 'optimizer.params'"):
        tiny_cfg(optimizer={"type": "AdamW", "params": {"lr": 1e-4, "betas": [0.9, value]}})
    with pytest.raises(ConfigError, match="key 'train_data_weights'"):
        tiny_cfg(train_data_weights=[value])


def test_every_numeric_key_rejects_minus_one():
    """Negative seeds, eval_iters and the like: no numeric key takes -1 (none is documented to)."""
    from conftest import tiny_cfg

    from neox.config import ConfigError

    for key in numeric_keys():
        with pytest.raises(ConfigError, match=f"'{key}'"):
            tiny_cfg(**{key: -1})


# ----------------------------------------------------------------------------- no silent hangs


def rank_pid(session: int, rank: int) -> int:
    for line in processes_of(session):
        pid = line.split()[0]
        if int(pid) == session or "deepy.py" in line:  # deepy.py itself (it may inherit a RANK from the tests)
            continue
        if "train.py" in line and f"RANK={rank}" in open(f"/proc/{pid}/environ").read().split("\0"):
            return int(pid)
    raise AssertionError(f"no rank {rank} in session {session}")


@pytest.mark.processes
def test_a_stopped_rank_is_a_watchdog_exit_with_every_stack(toy_data, tmp_path):
    """SIGSTOP of rank 1 (a stuck NCCL call looks the same): rank 0 waits in the step's all-reduce
    until the watchdog (10 s here) writes its stacks and exits 76; deepy.py stops the rest."""
    run_dir, ckpt = tmp_path / "run", tmp_path / "run" / "ckpt"
    # The stop may land in a step (10 s allowance) or in a checkpoint every 2 steps (the slow-work
    # allowance, 40 s here): both must end as a watchdog exit before the 1-minute process-group timeout.
    p = deepy(tmp_path, "train_iters=400", "checkpoint_factor=2", "watchdog_min_seconds=10",
              "watchdog_first_step_seconds=40", "distributed_timeout_minutes=1", popen=True)
    wait_for_step(p, run_dir, 3)
    os.kill(rank_pid(p.pid, 1), signal.SIGSTOP)
    t0 = time.time()
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 76 and time.time() - t0 < 40 + 30, out[-3000:]
    in_step = "watchdog: rank 0 waited too long for step" in out and "watchdog_min_seconds 10)" in out
    in_save = "waited too long for the checkpoint of step" in out and "(40 s allowed: watchdog_first_step_seconds)" in out
    assert in_step or in_save, out[-3000:]
    assert "deepy: rank 0 (pid " in out
    assert "exited with status 76; stopping the other ranks (SIGTERM, SIGKILL after 5 s)" in out
    stacks = (run_dir / "logs" / "watchdog-rank0.txt").read_text()
    # The stacks show where rank 0 waited: the step's all-reduce, or the checkpoint save.
    waited_in = ("neox/train/step.py", "train_step") if in_step else ("neox/train/trainer.py", "in save")
    assert all(w in stacks for w in waited_in) and 'Thread 0x' in stacks, stacks[-3000:]
    assert processes_of(p.pid) == []
    saved = sorted(int(d.name[11:]) for d in ckpt.glob("global_step*"))
    assert saved and all((ckpt / f"global_step{s}" / "complete").is_file() for s in saved)


@pytest.mark.processes
def test_distributed_timeout_minutes_reaches_every_process_group(toy_data):
    """One process of its own (process groups are per process): the default group and
    megatron-core's TP and DP groups all time out after the configured minutes."""
    code = ("import sys, torch; sys.path.insert(0, '.'); from neox.launch import distributed; "
            "from megatron.core import parallel_state as ps; distributed.init_distributed(1, 3); "
            "groups = [torch.distributed.distributed_c10d._get_default_group(), ps.get_tensor_model_parallel_group(), "
            "ps.get_data_parallel_group()]; "
            "print([str(g._get_backend(torch.device('cpu')).options._timeout) for g in groups])")
    from conftest import free_port

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "DS_ACCELERATOR": "cpu"}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert r.stdout.strip().splitlines()[-1] == "['0:03:00', '0:03:00', '0:03:00']", r.stderr[-2000:]
