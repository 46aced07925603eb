"""Every complete checkpoint of a training run, evaluated once each, into one table with the step.

A checkpoint global_step<N> is complete when it holds the marker file `complete` (written by the
trainer after all ranks saved; see neox/checkpoint/atomic.py). Results of step N go to
<out>/step_<N>/, and one row per (step, task) is added to <out>/run_results.jsonl under a
file lock (Slurm array tasks finish in any order); <out>/run_results.md is rebuilt from it.
"""

import fcntl
import json
import os
import re
from contextlib import contextmanager

from llemma_eval.runner import format_value

COMPLETE = "complete"  # neox.checkpoint.atomic.COMPLETE (not imported: that module pulls in torch)


def complete_steps(save_dir: str) -> list[int]:
    steps = []
    for name in os.listdir(save_dir):
        m = re.fullmatch(r"global_step(\d+)", name)
        if m and os.path.isfile(os.path.join(save_dir, name, COMPLETE)):
            steps.append(int(m.group(1)))
    return sorted(steps)


@contextmanager
def _locked(out: str):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "run_results.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def evaluated(out: str) -> dict[int, set]:
    """step -> tasks already in the run table."""
    path = os.path.join(out, "run_results.jsonl")
    done: dict[int, set] = {}
    if os.path.isfile(path):
        for line in open(path):
            if line.strip():
                row = json.loads(line)
                done.setdefault(row["step"], set()).add(row["task"])
    return done


def pending_steps(save_dir: str, out: str, every: int, tasks: list[str]) -> list[int]:
    """Complete checkpoints at multiples of `every` that lack a result for any of tasks."""
    done = evaluated(out)
    return [s for s in complete_steps(save_dir)
            if (every <= 1 or s % every == 0) and not set(tasks) <= done.get(s, set())]


def append_results(out: str, step: int, results: dict) -> None:
    """Adds step's rows; a step evaluated again (--step N twice) replaces its rows for those tasks."""
    with _locked(out):
        path = os.path.join(out, "run_results.jsonl")
        rows = [json.loads(line) for line in open(path) if line.strip()] if os.path.isfile(path) else []
        rows = [r for r in rows if not (r["step"] == step and r["task"] in results)]
        rows += [{**r, "step": step, "task": task} for task, r in results.items()]
        with open(f"{path}.tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(f"{path}.tmp", path)
        _write_table(out, rows)


def _write_table(out: str, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: (r["step"], r["task"]))
    lines = ["| step | task | metric | value | n | k |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['step']} | {r['task']} | {r['metric']} | {format_value(r)} | {r['n']} | {r['k']} |")
    tmp = os.path.join(out, "run_results.md.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, os.path.join(out, "run_results.md"))
