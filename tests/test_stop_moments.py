"""A stop request at every moment of a run under deepy.py, sent as Slurm sends it: SIGTERM to every
process of the job (deepy's process group and the ranks', which holds their compilers). One run,
started five times, each start stopped at another moment: the sample-index build, compilation
(compile_blocks on, a cold compile cache), a checkpoint save, the resume; each ends with exit 75
and the run's losses equal an uninterrupted compiled run's. The Slurm counterparts are in
tests/test_slurm.py; the moments and what happens at each: docs/checkpoints.md."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, kernel_compiler_running, logged_losses, smoke_run_args


class Job:
    """deepy.py in a session of its own, its output collected line by line as it comes."""

    def __init__(self, run_dir, *overrides, env=None):
        cmd = [sys.executable, "deepy.py", "train.py", *smoke_run_args(run_dir), "-o", "compile_blocks=true",
               "-o", "checkpoint_factor=4"]
        for o in overrides:
            cmd += ["-o", o]
        self.p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1",
                                       "TORCHINDUCTOR_CACHE_DIR": str(run_dir / "inductor"), **(env or {})})
        self.lines = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.p.stdout), daemon=True)
        self.reader.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_until(self, ready, limit=300):
        deadline = time.time() + limit
        while not ready():
            assert self.p.poll() is None, f"ended (status {self.p.returncode}) before its moment:\n{self.text[-3000:]}"
            assert time.time() < deadline, f"its moment did not come in {limit} s:\n{self.text[-3000:]}"
            time.sleep(0.05)

    def stop_every_process(self):
        """SIGTERM to each process group of the session (deepy's; the ranks' with their children)."""
        groups = set()
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.getsid(int(entry)) == self.p.pid:
                    groups.add(os.getpgid(int(entry)))
            except OSError:
                continue
        for g in groups:
            try:
                os.killpg(g, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def finish(self, limit=600) -> tuple[int, str]:
        self.p.wait(timeout=limit)
        self.reader.join(timeout=10)
        return self.p.returncode, self.text


def stopped_at(run_dir, what: str, env=None, *overrides) -> str:
    """Start the run, stop every process at the moment `what` names, expect exit 75; the output."""
    job = Job(run_dir, *overrides, env=env)
    if what == "compiling":
        job.wait_until(lambda: kernel_compiler_running(session=job.p.pid))
    else:
        job.wait_until(lambda: f"fault: pausing the {what}" in job.text)
    job.stop_every_process()
    code, out = job.finish()
    assert code == 75, out[-4000:]
    for noise in ("Traceback", "CppCompileError", "InductorError", "cc1plus", "error:", "exited with status 1"):
        assert noise not in out, out[-4000:]
    return out


@pytest.mark.processes
def test_a_stop_at_each_moment_ends_in_exit_75_and_the_run_continues_exactly(tmp_path, compiled_reference):
    run_dir = tmp_path / "run"
    ckpt = run_dir / "ckpt"
    # 1. the sample-index build: nothing trained, nothing to save
    out = stopped_at(run_dir, "index", {"NEOX_FAULT_PAUSE": "index:300"})
    assert "stop requested by signal before the first step of this start: nothing new to save" in out
    assert not list(ckpt.glob("global_step*"))
    # 2. compilation, the cache still cold: the compiler finishes (it got the signal too), step 1 is
    #    trained and saved
    out = stopped_at(run_dir, "compiling")
    assert "compile_blocks: on" in out and "stopped after step 1; exit status 75" in out
    assert (ckpt / "global_step1" / "complete").is_file()
    # 3. the save of step 4: the save completes and the run stops right after it (no step 5)
    out = stopped_at(run_dir, "save of step 4", {"NEOX_FAULT_PAUSE": "save@4:300"})
    assert "resumed from" in out and "stopped after step 4; exit status 75" in out
    assert (ckpt / "global_step4" / "complete").is_file() and (ckpt / "latest").read_text() == "global_step4"
    assert "step      5/8" not in out
    # 4. the resume: stops once it is loaded, before a step; the checkpoint stays the newest
    out = stopped_at(run_dir, "resume", {"NEOX_FAULT_PAUSE": "resume:300"})
    assert "nothing new to save (the checkpoint of step 4 stays)" in out
    assert sorted(p.name for p in ckpt.glob("global_step*")) == ["global_step1", "global_step4"]
    # 5. the rest, uninterrupted: every loss is the uninterrupted compiled run's, bit for bit
    code, out = Job(run_dir).finish()
    assert code == 0, out[-4000:]
    assert logged_losses(run_dir) == compiled_reference


@pytest.mark.processes
def test_a_stop_during_an_evaluation_and_during_the_final_save(tmp_path, toy_data):
    """During an evaluation: it finishes, the run stops right after it with a checkpoint of that
    step. During the final save: the run is finished, it ends normally (nothing to requeue for)."""
    run_dir = tmp_path / "run"
    evaluating = ["eval_iters=1", "eval_interval=2", "compile_blocks=false"]
    out = stopped_at(run_dir, "eval of step 2", {"NEOX_FAULT_PAUSE": "eval@2:300"}, *evaluating)
    assert "eval at step 2:" in out and "stopped after step 2; exit status 75" in out
    assert (run_dir / "ckpt" / "global_step2" / "complete").is_file()
    job = Job(run_dir, *evaluating, env={"NEOX_FAULT_PAUSE": "save@8:300"})
    job.wait_until(lambda: "fault: pausing the save of step 8" in job.text)
    job.stop_every_process()
    code, out = job.finish()
    assert code == 0 and "saved checkpoint global_step8" in out, out[-3000:]
    assert "stop requested" not in out and (run_dir / "ckpt" / "global_step8" / "complete").is_file()


@pytest.mark.processes
def test_a_hang_in_a_start_up_moment_is_still_the_watchdogs(tmp_path, toy_data):
    """The stop signals are blocked in the trainer now; its watchdog still ends a hang with 76."""
    job = Job(tmp_path / "hang", "watchdog_first_step_seconds=10", env={"NEOX_FAULT_PAUSE": "index:600"})
    start = time.time()
    code, out = job.finish(limit=300)
    assert code == 76, out[-4000:]
    assert "waited too long for setup (model, data indexes)" in out
    assert time.time() - start < 120


LISTENER = """
import subprocess, sys, time
from neox.launch import stop_request
stop_request.listen()
child = subprocess.Popen(["sleep", "3"])
print(child.pid, flush=True)
while not stop_request.requested():
    time.sleep(0.01)
print("noted", flush=True)
print("child", child.wait(), flush=True)
"""


@pytest.mark.processes
def test_a_stop_request_is_noted_and_the_trainers_children_do_not_die_of_it():
    """The mechanism alone: after stop_request.listen() a SIGTERM to the whole process group is a
    noted request in the trainer, and a child started from it (as inductor starts g++) runs on."""
    p = subprocess.Popen([sys.executable, "-c", LISTENER], cwd=REPO, stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    child = int(p.stdout.readline())
    os.killpg(p.pid, signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0 and out.split("\n")[:2] == ["noted", "child 0"], (p.returncode, out)
    with open(f"/proc/{os.getpid()}/status") as f:  # and the test process itself blocks nothing
        assert next(line for line in f if line.startswith("SigBlk:")).split()[1].strip("0") == ""
    assert child


def test_a_stop_before_deepy_starts_the_ranks_starts_none(capsys):
    from neox.launch.local_launch import run_job

    code = run_job([sys.executable, "-c", "raise SystemExit('must not start')"], 2, 0, dict(os.environ),
                   lambda stream, out: None, stop_before_spawn=[signal.SIGTERM])
    assert code == 75
    assert "deepy: SIGTERM before the ranks were started: nothing to save; exit status 75" in capsys.readouterr().err


def test_the_pause_fault_names_a_wrong_moment(monkeypatch):
    from neox.launch import faults

    monkeypatch.setenv("NEOX_FAULT_PAUSE", "indexx:5")
    with pytest.raises(ValueError, match="unknown moment 'indexx' \\(one of index, resume, save, step, eval\\)"):
        faults.pause("index")
    monkeypatch.setenv("NEOX_FAULT_PAUSE", "save@4:0.01")
    faults.pause("save", 3)  # another step: no pause, no line
    faults.pause("save", 4)


HOOK = """
import sys
from neox.launch import stop_request
from neox.checkpoint.hooks import after_checkpoint
stop_request.listen()
after_checkpoint("grep SigBlk /proc/self/status > {ckpt}/mask", sys.argv[1], 1).wait()
"""


@pytest.mark.processes
def test_the_after_checkpoint_command_is_a_program_of_its_own(tmp_path):
    """It is started by a trainer whose stop signals are blocked, but a stop signal acts on it."""
    subprocess.run([sys.executable, "-c", HOOK, str(tmp_path)], cwd=REPO, check=True, timeout=60)
    blocked = int((tmp_path / "mask").read_text().split()[1], 16)
    assert blocked & (1 << (signal.SIGTERM - 1) | 1 << (signal.SIGUSR1 - 1)) == 0
