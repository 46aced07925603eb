"""Slurm and torchrun launching."""

import glob
import json
import os
import stat
import subprocess
import sys

from conftest import REPO, free_port


def test_every_script_parses():
    scripts = glob.glob(os.path.join(REPO, "slurm", "*")) + [os.path.join(REPO, ".ci", "run")]
    assert len(scripts) >= 5
    for path in scripts:
        r = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
        assert r.returncode == 0, f"{path}: {r.stderr}"


def test_slurm_launcher_with_faked_slurm(tmp_path):
    """2 nodes x 2 tasks: each srun task gets its rank, world size and the first node as master."""
    fake = tmp_path / "bin"
    fake.mkdir()
    scontrol = fake / "scontrol"
    scontrol.write_text('#!/usr/bin/env bash\n[[ "$1 $2 $3" == "show hostnames gpu[07-08]" ]] || exit 9\n'
                        'printf "gpu07\\ngpu08\\n"\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    seen = []
    for procid in range(4):
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))},
               "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_PROCID": str(procid), "SLURM_NTASKS": "4",
               "SLURM_LOCALID": str(procid % 2), "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]",
               "SLURM_JOB_ID": "4242", "NEOX_LAUNCH_DRY_RUN": "1", "PYTHON": "/opt/venv/bin/python"}
        r = subprocess.run(["bash", os.path.join(REPO, "slurm", "launch.sh"), "llemma_configs/7b.yml",
                            "llemma_configs/data_mixture.yml", "-o", "save=/ckpt"],
                           env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        env_line, cmd = r.stdout.strip().splitlines()
        seen.append(env_line)
        assert cmd == "/opt/venv/bin/python train.py llemma_configs/7b.yml llemma_configs/data_mixture.yml -o save=/ckpt"
    assert seen == [f"RANK={i} WORLD_SIZE=4 LOCAL_RANK={i % 2} NODES=2 MASTER_ADDR=gpu07 MASTER_PORT=24242"
                    for i in range(4)]


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
