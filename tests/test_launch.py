"""Slurm and torchrun launching."""

import glob
import json
import os
import stat
import subprocess
import sys

import pytest
from conftest import REPO, free_port

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)


def test_every_script_parses():
    scripts = glob.glob(os.path.join(REPO, "slurm", "*")) + [os.path.join(REPO, ".ci", "run")]
    assert len(scripts) >= 5
    for path in scripts:
        r = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
        assert r.returncode == 0, f"{path}: {r.stderr}"


def launch_dry_run(tmp_path, node_addr: str, procid: int = 0, **env_extra):
    """slurm/launch.sh in its dry-run mode, under a scontrol that knows 2 nodes gpu07, gpu08 and
    gives gpu07's NodeAddr (the real two-node run is tests/test_slurm.py)."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    scontrol = fake / "scontrol"
    scontrol.write_text('#!/usr/bin/env bash\n'
                        'if [[ "$1 $2 $3" == "show hostnames gpu[07-08]" ]]; then printf "gpu07\\ngpu08\\n"; exit; fi\n'
                        'if [[ "$1 $2 $3" == "show node gpu07" ]]; then\n'
                        f'  echo "NodeName=gpu07 NodeAddr={node_addr} x=y"; exit\nfi\n'
                        'exit 9\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))},
           "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_PROCID": str(procid), "SLURM_NTASKS": "4",
           "SLURM_LOCALID": str(procid % 2), "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]",
           "SLURM_JOB_ID": "4242", "NEOX_LAUNCH_DRY_RUN": "1", "PYTHON": "/opt/venv/bin/python", **env_extra}
    return subprocess.run(["bash", os.path.join(REPO, "slurm", "launch.sh"), "llemma_configs/7b.yml", "-o", "save=/c"],
                          env=env, capture_output=True, text=True)


def test_slurm_launcher_master_is_the_first_nodes_address_or_a_clear_error(tmp_path):
    r = launch_dry_run(tmp_path, "127.0.0.1", procid=3)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["RANK=3 WORLD_SIZE=4 LOCAL_RANK=1 NODES=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=24242",
                                     "/opt/venv/bin/python train.py llemma_configs/7b.yml -o save=/c"]
    # gpu07 resolves nowhere (before: MASTER_ADDR=gpu07, and c10d retried until its timeout)
    r = launch_dry_run(tmp_path, "gpu07.invalid")
    assert r.returncode == 2 and "error: the first node 'gpu07' of the allocation has no address" in r.stderr
    assert "set MASTER_ADDR" in r.stderr
    r = launch_dry_run(tmp_path, "gpu07.invalid", MASTER_ADDR="10.1.2.3")
    assert r.returncode == 0 and "MASTER_ADDR=10.1.2.3 " in r.stdout


# stands in for `python train.py ...` (launch.sh runs "$PYTHON train.py ARGS"): the first argument
# says how it ends
FAKE_TRAINER = """#!/usr/bin/env bash
case "$2" in
  stopped) trap '' TERM USR1; kill -TERM "$PPID"; exit 75 ;;  # decided to stop; srun's SIGTERM to the task
  # the same SIGTERM to every process of the task (as Slurm sends it) while launch.sh waits
  stopped_all) trap '' TERM USR1; sleep 1; kill -TERM 0; sleep 0.3; exit 75 ;;
  killed) kill -KILL $$ ;;
  terminated) kill -TERM $$ ;;
  *) exit "$2" ;;
esac
"""


def test_the_rank_status_launch_sh_records_is_the_trainers_own(tmp_path):
    """As the first rank exits 75, srun's SIGTERM reaches the others' launch.sh and trainer while
    the trainer is itself exiting 75: the status file must say 75 (CI once saw 143 there: bash's
    interrupted `wait` lost the status). Repeated, as it is a race; then deaths by signal and codes."""
    trainer = tmp_path / "python"
    trainer.write_text(FAKE_TRAINER)
    trainer.chmod(0o755)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))},
           "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "n1",
           "MASTER_ADDR": "127.0.0.1", "NEOX_STATUS_DIR": str(tmp_path / "status"), "PYTHON": str(trainer)}

    def recorded(how: str) -> tuple:
        status = tmp_path / "status" / "rank0"
        status.unlink(missing_ok=True)
        r = subprocess.run(["bash", os.path.join(REPO, "slurm", "launch.sh"), how], env=env, capture_output=True,
                           text=True, timeout=30, start_new_session=True)  # the task's own process group
        assert "Terminated" not in r.stderr  # bash's line for a child the task's signal killed
        return r.returncode, int(status.read_text().split()[0]) if status.exists() else None

    assert [recorded("stopped") for _ in range(20)] == [(75, 75)] * 20
    assert [recorded(how) for how in ("stopped_all", "killed", "terminated", "0", "2")] == [
        (75, 75), (137, 137), (143, 143), (0, 0), (2, 2)]


def test_train_py_under_torchrun_fits_the_batch_to_the_world(tmp_path, toy_data):
    """torchrun sets RANK/WORLD_SIZE; 2 processes at TP=1 -> DP 2, accumulation halved, batch kept."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "train.py", "llemma_configs/smoke.yml", "-o", "model_parallel_size=1", "-o", "num_gpus=1",
           "-o", "train_iters=3", "-o", "lr_decay_iters=3", "-o", "warmup_iters=1", "-o", "eval_iters=0",
           "-o", f"log_dir={tmp_path}/logs", "-o", f"save={tmp_path}/ckpt", "-o", f"data_cache_dir={tmp_path}/c"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "micro batch 4 -> 4, accumulation 2 -> 1, global batch 8 kept" in r.stdout
    rows = [json.loads(line) for line in open(tmp_path / "logs" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["consumed_samples"] == 24


def test_a_fresh_checkout_has_the_directory_slurm_writes_its_logs_to():
    """Slurm does not create --output's directory: without logs/ a job fails with no output at all
    (JobLaunchFailure). The checkout carries it (logs/.gitignore keeps the logs out of git)."""
    tracked = subprocess.run(["git", "ls-files", "logs"], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert tracked == ["logs/.gitignore"]
    for script in ("llemma_7b.sbatch", "llemma_34b.sbatch", "check_overlap.sbatch", "decontaminate.sbatch", "evaluate.sbatch",
                   "dedup.sbatch"):
        text = open(os.path.join(REPO, "slurm", script)).read()
        assert "#SBATCH --output=logs/" in text, script
