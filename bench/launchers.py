#!/usr/bin/env python
"""Which local launcher tells the truth about its ranks? DeepSpeed's runner vs torchrun, tried
with a stand-in rank (no torch): the exit status a rank's 75 becomes, what a SIGTERM to the
launcher gives the ranks, and which rank a `kill -9` of rank 0 is blamed on. Prints JSON.

    python bench/launchers.py
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from neox.launch.ports import free_port  # noqa: E402

RANK = r'''
import os, signal, sys, time
rank = os.environ.get("LOCAL_RANK", "?")
mode = sys.argv[-1]  # DeepSpeed passes --local_rank=N first
def on_term(*_):
    time.sleep(float(os.environ.get("SAVE_SECONDS", "0")))  # "writing a checkpoint"
    print(f"rank {rank} saved after SIGTERM", flush=True)
    sys.exit(75)
signal.signal(signal.SIGTERM, on_term)
print(f"rank {rank} pid {os.getpid()}", flush=True)
if mode == "exit75":
    time.sleep(1); sys.exit(75)
time.sleep(120)
'''

LAUNCHERS = {
    "deepspeed": lambda script, mode: [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
                                       "--master_port", str(free_port()), script, mode],
    "torchrun": lambda script, mode: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                      "--master_port", str(free_port()), script, mode],
}


def ranks_of(out: str) -> dict:
    return {line.split()[1]: int(line.split()[3]) for line in out.splitlines()
            if line.startswith("rank ") and " pid " in line}


def trial(name: str, script: str, mode: str, env: dict) -> dict:
    log = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen(LAUNCHERS[name](script, "exit75" if mode == "exit75" else "wait"), stdout=log,
                         stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    t0 = time.time()
    if mode != "exit75":
        while len(ranks_of(_read(log))) < 2:
            time.sleep(0.2)
        if mode == "sigterm_launcher":
            p.send_signal(signal.SIGTERM)
        else:  # kill -9 of rank 0
            os.kill(ranks_of(_read(log))["0"], signal.SIGKILL)
    code = p.wait(timeout=120)
    out = _read(log)
    report = [line.strip() for line in out.splitlines()
              if any(k in line for k in ("return code", "exitcode", "local_rank", "Signal", "saved after"))]
    return {"launcher": name, "fault": mode, "exit_status": code, "seconds": round(time.time() - t0, 1),
            "report": report[:8]}


def _read(f) -> str:
    f.seek(0)
    return f.read()


def main():
    with tempfile.TemporaryDirectory() as d:
        script = os.path.join(d, "rank.py")
        with open(script, "w") as f:
            f.write(RANK)
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "SAVE_SECONDS": "40"}
        rows = [trial(n, script, m, env) for n in LAUNCHERS for m in ("exit75", "sigterm_launcher", "kill9_rank0")]
    for r in rows:
        print(json.dumps(r), file=sys.stderr)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
