import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


from neox.launch.ports import free_port  # noqa: E402,F401  (re-exported for the tests)


def tiny_flat(**overrides) -> dict:
    """Flat config for a tiny model; data paths are fake (validated with dry_run=True)."""
    flat = {
        "num_layers": 2, "hidden_size": 48, "num_attention_heads": 6, "num_kv_heads": 2,
        "intermediate_size": 96, "seq_length": 16, "rotary_emb_base": 1e6, "vocab_size": 101,
        "model_parallel_size": 1, "num_gpus": 1, "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1, "train_iters": 10, "warmup_iters": 2,
        "train_data_paths": ["/nonexistent/data_text_document"], "precision": "fp32",
    }
    flat.update(overrides)
    return flat


def tiny_cfg(**overrides):
    from neox.config import NeoXConfig, _coerce_all, validate

    return validate(NeoXConfig.from_flat(_coerce_all(tiny_flat(**overrides))), dry_run=True)


@pytest.fixture
def single_process_group():
    """A real gloo process group of size 1 with megatron-core parallel state at TP=1. The rendezvous
    variables are removed again after the test: left set, a later test's subprocess (lm-eval's
    accelerate) took itself for a rank of a job and failed to bind the stale MASTER_PORT."""
    names = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    from neox.launch import distributed

    distributed.init_distributed(1)
    yield
    distributed.destroy()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def toy_data():
    """The bundled toy corpus, tokenizer and tokenized data (built once, then reused)."""
    import subprocess

    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_toy_data.py")], check=True,
                   cwd=REPO)
    return os.path.join(REPO, "data", "toy")


@pytest.fixture(scope="module")
def tok(toy_data):
    """The toy SentencePiece model's path."""
    return os.path.join(toy_data, "tokenizer.model")


@pytest.fixture(scope="module")
def sp(tok):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=tok)


# ---------------------------------------------------------------- the real Slurm of .ci/slurm.sh

SLURM_FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
               "BOOT_FAIL", "DEADLINE"}


@pytest.fixture(scope="session")
def slurm():
    """The local cluster started by `bash .ci/slurm.sh up` (.ci/run does it): nodes n1, n2."""
    import subprocess

    r = subprocess.run(["sinfo", "-h", "-o", "%D %t"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip(), (
        "no Slurm cluster answers sinfo: start it with `bash .ci/slurm.sh up` (as root; .ci/run does)\n" + r.stderr)
    return True


def submit_env(**extra) -> dict:
    """This process's environment as a user's shell would have it: without the rendezvous
    variables earlier tests set here (sbatch exports the environment to the job, and a shared
    MASTER_PORT would put every job on one port)."""
    ours = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    return {**{k: v for k, v in os.environ.items() if k not in ours}, "OMP_NUM_THREADS": "1", **extra}


def sbatch(*args, cwd=REPO, env=None) -> str:
    """Submit as a user would (from the repository); the job id."""
    import subprocess

    r = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, cwd=cwd,
                       env=submit_env(**(env or {})))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def job_info(job: str) -> dict:
    """scontrol's fields of a job (JobState, Restarts, ExitCode, ...); {} once Slurm forgot it."""
    import subprocess

    r = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True)
    return dict(kv.split("=", 1) for kv in r.stdout.split() if "=" in kv) if r.returncode == 0 else {}


def sacct_states(job: str) -> list:
    """Every run of the job, requeued ones included, oldest first (sacct -D)."""
    import subprocess

    r = subprocess.run(["sacct", "-j", job, "-D", "-X", "-n", "-P", "--format=State"], capture_output=True,
                       text=True)
    return [s.split()[0] for s in r.stdout.split("\n") if s.strip()]


def job_submitted_by(job: str, name: str) -> str:
    """The id of the job named `name` that array job `job` submitted (a dependent merge); accounting
    may lag a moment behind the submission."""
    import subprocess
    import time

    for _ in range(120):
        ids = [m for m in subprocess.run(["sacct", "-n", "-X", "-P", f"--name={name}", "--format=JobID"],
                                         capture_output=True, text=True).stdout.split()
               if m.isdigit() and int(m) > int(job)]
        if ids:
            return min(ids, key=int)
        time.sleep(0.5)
    raise AssertionError(f"no job named {name} after job {job}")


def wait_for_sacct(job: str, count: int, timeout_s: float = 900) -> list:
    """The final states of the job's `count` array tasks (or of the job, count 1) once all ended."""
    import subprocess
    import time

    deadline = time.time() + timeout_s
    while True:
        r = subprocess.run(["sacct", "-j", job, "-X", "-n", "-P", "--format=JobID,State"], capture_output=True,
                           text=True)
        rows = [line.split("|") for line in r.stdout.splitlines() if line.strip()]
        states = [s.split()[0] for _, s in rows]
        if len(rows) >= count and all(s in SLURM_FINAL for s in states) or time.time() > deadline:
            return states
        time.sleep(1)


# ---------------------------------------------------------------- stop requests at every moment

def smoke_run_args(run_dir, steps: int = 8) -> list:
    """The run both the Slurm jobs and the deepy.py stop tests train: the smoke model, `steps` steps."""
    return ["llemma_configs/smoke.yml", "-o", f"train_iters={steps}", "-o", f"lr_decay_iters={steps}",
            "-o", "eval_iters=0", "-o", f"save={run_dir}/ckpt", "-o", f"log_dir={run_dir}/logs",
            "-o", f"data_cache_dir={run_dir}/cache"]


def logged_losses(run_dir) -> dict:
    """step -> loss from a run's metrics.jsonl (the last row of a step a restart trained again)."""
    import json

    path = os.path.join(run_dir, "logs", "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "step" in r}


@pytest.fixture(scope="session")
def compiled_reference(toy_data, tmp_path_factory):
    """The smoke run of 8 steps with compile_blocks on, uninterrupted, under deepy.py (one thread
    per rank, as the Slurm jobs run): the losses a compiled run stopped anywhere must continue."""
    import subprocess

    run_dir = tmp_path_factory.mktemp("compiled_reference")
    r = subprocess.run([sys.executable, "deepy.py", "train.py", *smoke_run_args(run_dir), "-o", "compile_blocks=true"],
                       cwd=REPO, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "TORCHINDUCTOR_CACHE_DIR": str(run_dir / "inductor")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    losses = logged_losses(run_dir)
    assert sorted(losses) == list(range(1, 9))
    return losses


def kernel_compiler_running(match_env: dict | None = None, session: int | None = None) -> bool:
    """Whether a C++ compiler builds one of torch inductor's kernels (a `*.main.cpp`; its first
    compiles only probe the CPU) in the given session, or with the given environment values."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            if not cmd[0].endswith((b"cc1plus", b"g++")) or not any(c.endswith(b".main.cpp") for c in cmd):
                continue
            if session is not None and os.getsid(int(entry)) != session:
                continue
            if match_env:
                env = dict(kv.split(b"=", 1) for kv in open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
                           if b"=" in kv)
                if any(env.get(k.encode()) != v.encode() for k, v in match_env.items()):
                    continue
        except OSError:
            continue
        return True
    return False


# ---------------------------------------------------------------- the quick set

def _process_starters():
    import _posixsubprocess
    import subprocess

    return [(os, "fork"), (os, "posix_spawn"), (os, "posix_spawnp"), (_posixsubprocess, "fork_exec"),
            (subprocess, "_fork_exec")]


class StartsAProcess(AssertionError):
    pass


@pytest.fixture(autouse=True)
def quick_tests_start_no_process(request, monkeypatch):
    """A test without the `processes` marker may not start a process, so that the quick set
    (pytest -m 'not processes') stays quick: it fails naming the marker."""
    if request.node.get_closest_marker("processes") or os.environ.get("NEOX_TESTS_FIND_PROCESSES"):
        return
    for module, name in _process_starters():
        def refuse(*args, **kwargs):
            raise StartsAProcess(f"{request.node.nodeid} starts a process: mark it @pytest.mark.processes "
                                 "(docs/tests.md, the quick set)")
        monkeypatch.setattr(module, name, refuse)


_current = {"test": None}


def pytest_configure(config):
    """NEOX_TESTS_FIND_PROCESSES=FILE: every test that would start a process (its fixtures
    included) stops at that moment and is listed in FILE: the tests to mark, found in seconds."""
    if not os.environ.get("NEOX_TESTS_FIND_PROCESSES"):
        return
    for module, name in _process_starters():
        def refuse(*args, **kwargs):
            raise StartsAProcess(f"{_current['test']} starts a process")
        setattr(module, name, refuse)


def pytest_runtest_setup(item):
    _current["test"] = item.nodeid


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    yield
    record = os.environ.get("NEOX_TESTS_FIND_PROCESSES")
    if record and call.excinfo is not None and call.excinfo.errisinstance(StartsAProcess):
        with open(record, "a") as f:
            f.write(item.nodeid + "\n")
