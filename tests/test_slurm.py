"""The training scripts on a real Slurm (.ci/slurm.sh: slurmctld, slurmd n1 and n2, slurmdbd),
submitted unedited as a user would. Every job is submitted at once and driven by one loop (signal,
cancel, kill or requeue at a chosen moment); each test then reads its own job's outcome from
sacct, scontrol, the job's log and the trainer's metrics."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, SLURM_FINAL, job_info, kernel_compiler_running, sacct_states, sbatch, smoke_run_args

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)

STEPS = 8
# one node, two ranks (the smoke model at TP=2): what the defaults of llemma_7b.sbatch become on a
# CPU partition, overridden on sbatch's command line
NODE = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=20",
        "--signal=B:USR1@10"]
# (sbatch options, actions) per job; an action is (what, when), done in order, when: the step the
# trainer has logged (0 = started: its config resolved, no step yet), "compiling" (a C++ compiler
# builds one of inductor's kernels for the job) or "log:TEXT" (TEXT is in the job's log)
JOBS = {
    "reference": ([], []),
    # the warning about 20 s after the start (early: a fast machine trains 8 steps in a minute), and
    # the limit a minute after the stop on a loaded one (startup and step 1 took 2 minutes there)
    "preempt_time_limit": (["--time=3", "--signal=B:USR1@160"], [("extend_after_requeue", None)]),
    "preempt_at_start": ([], [("usr1", 0)]),
    "preempt_step1": ([], [("usr1", 1)]),
    "preempt_step2": ([], [("usr1", 2)]),
    "preempt_step3": ([], [("usr1", 3)]),
    # the moments of a run where a stop used to be fatal or is slow: compilation (compile_blocks on,
    # a cold compile cache), the sample-index build, a checkpoint save, the resume of a requeued job
    "stop_compiling": ([], [("usr1", "compiling")]),
    "stop_index_build": ([], [("usr1", "log:fault: pausing the index")]),
    "stop_save": ([], [("usr1", "log:fault: pausing the save of step 4")]),
    "stop_resume": ([], [("usr1", 2), ("usr1", "log:fault: pausing the resume")]),
    "cancel": ([], [("scancel", 1)]),
    "kill_rank1": ([], [("kill9_rank1", 1)]),
    "kill_rank0": ([], [("kill9_rank0", 1)]),
    "config_error": ([], []),
    "external_requeue": ([], [("requeue", 1)]),
    "two_nodes": (["--nodes=2", "--ntasks-per-node=1"], []),
}
# test-only faults (neox/launch/faults.py) per job: the time limit's SIGTERM reaches every process of the
# batch step, the verdict's Python too, when the stop outlasts the limit: it must change nothing;
# slowed moments (every start pauses there; a stop ends the pause)
# A job acting at a step gets 2 s at the start of each step: an unloaded machine trains the smoke
# model's 8 steps in 2 s, faster than the action can follow the step it waits for.
SLOW_STEPS = {"NEOX_FAULT_PAUSE": "step:2"}
FAULTS = {"preempt_time_limit": {"NEOX_FAULT_LATE_SIGNAL": "TERM"},
          "stop_index_build": {"NEOX_FAULT_PAUSE": "index:30"},
          "stop_save": {"NEOX_FAULT_PAUSE": "save@4:30"},
          "stop_resume": {"NEOX_FAULT_PAUSE": "resume:30,step:2"},
          **{name: SLOW_STEPS for name in ("preempt_step1", "preempt_step2", "preempt_step3", "cancel", "kill_rank1",
                                           "kill_rank0", "external_requeue")}}
PREEMPTED = ["preempt_time_limit", "preempt_at_start", "preempt_step1", "preempt_step2", "preempt_step3",
             "stop_compiling", "stop_index_build", "stop_save", "stop_resume"]
DEADLINE_S = 900


def train_args(run_dir, name):
    args = smoke_run_args(run_dir, STEPS)
    if name == "config_error":
        args += ["-o", "hidden_size=lots"]
    if name == "two_nodes":  # TP 1 x DP 2 (the smoke batch of 8 at micro batch 4: no accumulation)
        args += ["-o", "model_parallel_size=1", "-o", "gradient_accumulation_steps=1"]
    if name == "stop_compiling":
        args += ["-o", "compile_blocks=true"]
    if name == "stop_save":
        args += ["-o", "checkpoint_factor=4"]
    return args


def job_env(run_dir, name) -> dict:
    env = {"PYTHON": sys.executable, **FAULTS.get(name, {})}
    if name == "stop_compiling":  # cold: nothing compiled yet
        env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(run_dir, "inductor")
    return env


def logged_steps(run_dir) -> list:
    path = os.path.join(run_dir, "logs", "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return [r for r in rows if "loss" in r and "step" in r]


def rank_pid(job: str, rank: int):
    """The trainer process of one rank of a job (from /proc: SLURM_JOB_ID and RANK in its env)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            env = dict(kv.split(b"=", 1) for kv in open(f"/proc/{entry}/environ", "rb").read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if any(c.endswith(b"train.py") for c in cmd) and b"bash" not in cmd[0] and \
                env.get(b"SLURM_JOB_ID") == job.encode() and env.get(b"RANK") == str(rank).encode():
            return int(entry)
    return None


def act(what: str, job: str) -> str:
    """Do it; '' or why it could not be done (the job's test reports it)."""
    commands = {"usr1": ["scancel", "-b", "--signal=USR1", job],  # what a time limit's --signal=B:USR1 does
                "scancel": ["scancel", job], "requeue": ["scontrol", "requeue", job]}
    if what in commands:
        r = subprocess.run(commands[what], capture_output=True, text=True)
        return r.stderr.strip() if r.returncode else ""
    pid = rank_pid(job, int(what[-1]))
    if not pid:
        return f"no trainer process of {what[-5:]}"
    os.kill(pid, signal.SIGKILL)
    return ""


def ready(j, when) -> bool:
    """Whether the job has reached the moment of its next action."""
    if when == "compiling":
        return kernel_compiler_running(match_env={"SLURM_JOB_ID": j["job"]})
    if isinstance(when, str):
        return os.path.exists(j["log"]) and when[len("log:"):] in open(j["log"], errors="replace").read()
    if when == 0:
        return os.path.exists(j["log"]) and "run: resolved config" in open(j["log"], errors="replace").read()
    return len(logged_steps(j["dir"])) >= when


@pytest.fixture(scope="module")
def jobs(slurm, toy_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    out = {}
    for name, (options, actions) in JOBS.items():
        run_dir = root / name
        job = sbatch(*NODE, *options, f"--job-name=t-{name}", "slurm/llemma_7b.sbatch", *train_args(run_dir, name),
                     env=job_env(str(run_dir), name))
        out[name] = {"job": job, "dir": str(run_dir), "actions": actions, "done": 0,
                     "log": os.path.join(REPO, "logs", f"t-{name}-{job}.out")}
    start = polled = time.time()
    states = {name: job_info(j["job"]) for name, j in out.items()}
    while time.time() - start < DEADLINE_S:
        if time.time() - polled > 2:  # scontrol for every job: seconds on a loaded machine
            states, polled = {name: job_info(j["job"]) for name, j in out.items()}, time.time()
        pending = 0
        for name, j in out.items():
            info = states[name]
            state = info.get("JobState", "")
            acting = j["done"] < len(j["actions"])
            if state in SLURM_FINAL and not acting:
                continue
            pending += 1
            if not acting:
                continue
            what, at = j["actions"][j["done"]]
            if what == "extend_after_requeue":  # the time limit preempted it once: give the rerun time
                if state in SLURM_FINAL:
                    j["done"] += 1
                elif int(info.get("Restarts", 0)) >= 1:
                    subprocess.run(["scontrol", "update", f"JobId={j['job']}", "TimeLimit=20"], check=True)
                    j["done"] += 1
                continue
            if ready(j, at):  # from the job's own files: no scontrol between the moment and the action
                j["action_error"] = j.get("action_error", "") + act(what, j["job"])
                j["done"] += 1
                j["acted_at_steps"] = j.get("acted_at_steps", []) + [len(logged_steps(j["dir"]))]
            elif state in SLURM_FINAL:
                j["done"] = len(j["actions"])  # ended before its moment: the test says so
        if not pending:
            break
        time.sleep(0.1)
    for j in out.values():
        j["info"] = job_info(j["job"])
        j["sacct"] = sacct_states(j["job"])
        j["text"] = open(j["log"], errors="replace").read() if os.path.exists(j["log"]) else ""
        j["steps"] = logged_steps(j["dir"])
    return out


def outcome(j) -> str:
    """The job's states and action, the batch script's and srun's own lines (every start of the job),
    then the log's tail."""
    own = [line for line in j["text"].splitlines() if re.match(r"(==========|\d{4}-\d\d-\d\d \d\d:|srun: |slurmstepd)", line)]
    return (f"job {j['job']}: {j['info'].get('JobState')} sacct {j['sacct']} actions {j['actions']}: "
            f"{j['done']} done {j.get('action_error', '')!r} at steps {j.get('acted_at_steps')}\n"
            + "\n".join(own) + f"\n--- log tail:\n{j['text'][-2000:]}")


def losses(j) -> dict:
    return {r["step"]: r["loss"] for r in j["steps"]}


def test_a_training_job_runs_to_completion_from_a_fresh_checkout(jobs):
    j = jobs["reference"]
    assert j["info"]["JobState"] == "COMPLETED" and j["sacct"] == ["COMPLETED"], outcome(j)
    assert sorted(losses(j)) == list(range(1, STEPS + 1))
    assert "training finished: all 2 ranks exited 0" in j["text"]
    assert os.path.isfile(os.path.join(j["dir"], "ckpt", f"global_step{STEPS}", "complete"))


@pytest.mark.parametrize("name", PREEMPTED)
def test_preemption_checkpoints_requeues_and_resumes_exactly(jobs, name, request):
    """A stop at each moment: a real time limit, during start-up, after steps 1, 2 and 3, during
    compilation, the sample-index build, a checkpoint save and the resume of a requeued job. Each run
    is REQUEUED, then COMPLETED, and the losses equal the uninterrupted run's bit for bit (a
    compiled run's: the compiled reference's); nothing the trainer started printed an error."""
    j, ref = jobs[name], jobs["reference"]
    assert j["info"]["JobState"] == "COMPLETED", outcome(j)
    assert j["sacct"][-2:] == ["REQUEUED", "COMPLETED"], outcome(j)
    assert j["done"] == len(j["actions"]) and not j.get("action_error"), outcome(j)
    starts = re.findall(r"^========== .* job \d+, start (\d+)", j["text"], flags=re.M)
    requeues = 2 if name == "stop_resume" else 1
    assert starts[:requeues + 1] == [str(n) for n in range(1, requeues + 2)], outcome(j)  # appended
    assert re.search(r"stopped on request (after a complete checkpoint|before training started|: rank)", j["text"]), outcome(j)
    assert j["text"].count(f"requeueing job {j['job']}") == requeues, outcome(j)
    expected = request.getfixturevalue("compiled_reference") if name == "stop_compiling" else losses(ref)
    assert losses(j) == expected, outcome(j)
    assert "exited with status 143" not in j["text"] and "Terminated" not in j["text"].split("requeueing")[0][-300:]
    for noise in ("Traceback", "CppCompileError", "InductorError", "cc1plus", "g++"):
        assert noise not in j["text"], outcome(j)


def test_the_stop_moments_were_hit(jobs):
    """Each stop landed in its moment, and the trainer said what it did there."""
    text = {name: jobs[name]["text"] for name in ("stop_compiling", "stop_index_build", "stop_save", "stop_resume")}
    assert "compile_blocks: on (set in the config)" in text["stop_compiling"]
    assert "stopped after step 1; exit status 75" in text["stop_compiling"], outcome(jobs["stop_compiling"])
    before_first_step = "stop requested by signal before the first step of this start: nothing new to save"
    assert f"{before_first_step} (no step was trained yet)" in text["stop_index_build"]
    assert "stopped after step 4; exit status 75" in text["stop_save"], outcome(jobs["stop_save"])
    # the first stop came at step 2 or 3 (it rides in the next step's all-reduce)
    assert re.search(f"{before_first_step} \\(the checkpoint of step [23] stays\\)", text["stop_resume"]), \
        outcome(jobs["stop_resume"])


def test_scancel_cancels_after_a_checkpoint(jobs):
    j = jobs["cancel"]
    assert j["info"]["JobState"] == "CANCELLED" and j["sacct"] == ["CANCELLED"], outcome(j)
    assert "not requeued" in j["text"] and f"requeueing job {j['job']}" not in j["text"]
    stopped = max(r["step"] for r in j["steps"])
    assert stopped < STEPS and os.path.isfile(os.path.join(j["dir"], "ckpt", f"global_step{stopped}", "complete"))


@pytest.mark.parametrize("rank", [1, 0])
def test_a_killed_rank_is_named_and_the_survivor_says_one_line(jobs, rank):
    j = jobs[f"kill_rank{rank}"]
    assert j["info"]["JobState"] == "FAILED" and j["info"]["ExitCode"] == "137:0", outcome(j)
    assert f"rank {rank} failed first: it was killed by SIGKILL (status 137)" in j["text"], outcome(j)
    other = 1 - rank
    assert f"error: rank {other}: a collective failed because another rank is gone" in j["text"], outcome(j)
    assert "Traceback" not in j["text"], outcome(j)


def test_a_dead_rank0_lock_is_taken_over_by_the_next_job(jobs, tmp_path):
    """Rank 0 killed with SIGKILL cannot release <save>/.lock; the next job on it takes it over,
    says so, and trains."""
    j = jobs["kill_rank0"]
    assert os.path.exists(os.path.join(j["dir"], "ckpt", ".lock"))
    job = sbatch(*NODE, "--job-name=t-after-kill", "slurm/llemma_7b.sbatch", *train_args(j["dir"], "after"))
    for _ in range(600):
        info = job_info(job)
        if info.get("JobState") in SLURM_FINAL:
            break
        time.sleep(0.5)
    text = open(os.path.join(REPO, "logs", f"t-after-kill-{job}.out"), errors="replace").read()
    assert info["JobState"] == "COMPLETED", text[-3000:]
    assert "took over the stale lock" in text, text[-3000:]
    assert "training finished: all 2 ranks exited 0" in text


def test_a_config_error_is_reported_as_one(jobs):
    j = jobs["config_error"]
    assert j["info"]["JobState"] == "FAILED" and j["info"]["ExitCode"] == "2:0", outcome(j)
    # the verdict, not srun's last status (srun may have terminated the other rank: its 143)
    verdict = j["text"].strip().splitlines()[-1]
    assert verdict.endswith("rank 0 failed first: it exited with status 2: a config error (its error line is above); "
                            "1 other rank(s) ended after it") or "rank 1 failed first: it exited with status 2" in verdict, \
        outcome(j)
    assert "error: key 'hidden_size' must be int, got 'lots'" in j["text"], outcome(j)


def test_an_external_requeue_is_not_an_error(jobs):
    j = jobs["external_requeue"]
    assert j["info"]["JobState"] == "COMPLETED" and j["sacct"][-1] == "COMPLETED", outcome(j)
    assert int(j["info"]["Restarts"]) >= 1 and "scontrol requeue failed" not in j["text"]
    assert sorted(losses(j)) == list(range(1, STEPS + 1))


def test_two_nodes_train_data_parallel(jobs):
    """n1 and n2 (names that resolve nowhere): the master is the first node's address."""
    j = jobs["two_nodes"]
    assert j["info"]["JobState"] == "COMPLETED", outcome(j)
    assert j["info"]["NodeList"] == "n[1-2]"
    assert "training finished: all 2 ranks exited 0" in j["text"]
    assert "cluster: 2 GPUs (2 nodes x 1) instead of 1 x 2" in j["text"], outcome(j)
