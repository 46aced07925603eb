"""Before/after check of the training loop: an fp32 TP=2 smoke run with a skipped step, two
rollbacks (a loss spike, then two NaN steps in a row), evaluations and a resume must log the same
numbers as the run recorded in tests/fixtures/trainer_regression.json.

Re-record (only when a change of the numbers is intended): python tests/test_trainer_regression.py
"""

import json
import math
import os
import re
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "trainer_regression.json")
# relative: fp32 matmul and reduction kernels differ in the last bits between CPUs (seen: 5e-7
# between a CPU with AMX and one without); every decision the loop makes is compared exactly
TOLERANCE = 1e-5
TIMING_KEYS = {"tokens_per_sec", "mfu", "step_time_s"}  # wall-clock numbers: never equal twice
ARGS = ["precision=fp32", "lr_decay_iters=20", "warmup_iters=4", "checkpoint_factor=4",
        "eval_iters=1", "eval_interval=5", "loss_spike_min_history=4", "max_bad_steps_in_a_row=2",
        "max_rollbacks=3"]
# Launch 1 (steps 1-10): NaN at 3 is skipped; the spike at 6 rolls back to global_step4.
# Launch 2 resumes from global_step10 (steps 11-20): NaN at 13 and 14 in a row roll back to 12.
LAUNCHES = [("train_iters=10", {"NEOX_FAULT_NAN_STEP": "3", "NEOX_FAULT_SPIKE_STEP": "6"}),
            ("train_iters=20", {"NEOX_FAULT_NAN_STEP": "13,14"})]
# Lines the loop prints about its decisions (the per-step line holds timings and is left out).
EVENT = re.compile(r"(step \d+: .*|resumed from .*|saved checkpoint .*|eval at step .*)$")


def launch(work: str, iters: str, faults: dict) -> str:
    cmd = [sys.executable, "deepy.py", "train.py", "llemma_configs/smoke.yml"]
    for o in [*ARGS, iters, f"data_cache_dir={work}/cache", f"log_dir={work}/logs", f"save={work}/ckpt"]:
        cmd += ["-o", o]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEOX_FAULT_")}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env={**env, **faults})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r.stdout


def events(stdout: str, work: str) -> list[str]:
    found = [m.group(1) for line in stdout.splitlines() if (m := EVENT.search(line))]
    return [line.replace(work, "<run>") for line in found]


def record(work: str) -> dict:
    """Everything deterministic the two launches leave behind."""
    import torch

    out = [events(launch(work, iters, faults), work) for iters, faults in LAUNCHES]
    with open(os.path.join(work, "logs", "metrics.jsonl")) as f:
        rows = [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]
    ckpt = os.path.join(work, "ckpt")
    state = torch.load(os.path.join(ckpt, "global_step20", "mp_rank_00_model_states.pt"), weights_only=False)
    return {"metrics": rows, "events": out, "guard": json.loads(json.dumps(state["guard"])),
            "checkpoints": sorted(d for d in os.listdir(ckpt) if d.startswith("global_step"))}


def differences(got, want, where="") -> list[str]:
    """Where two JSON values differ; floats may differ by TOLERANCE, relative."""
    if isinstance(want, dict) and isinstance(got, dict):
        if set(got) != set(want):
            return [f"{where}: keys {sorted(got)} != {sorted(want)}"]
        return [d for k in want for d in differences(got[k], want[k], f"{where}/{k}")]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items != {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in differences(g, w, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        same = (math.isnan(want) and math.isnan(got)) or abs(got - want) <= TOLERANCE * max(1.0, abs(want))
        return [] if same else [f"{where}: {got!r} != {want!r}"]
    if isinstance(want, str) and isinstance(got, str) and NUMBER.split(got) == NUMBER.split(want):
        # a printed line: its text exactly, its numbers within TOLERANCE or one unit of the last digit
        if all(abs(float(g) - float(w)) <= max(TOLERANCE * abs(float(w)), 1.01 * 10.0 ** -len(w.partition(".")[2]))
               for g, w in zip(NUMBER.findall(got), NUMBER.findall(want))):
            return []
    return [] if (type(got), got) == (type(want), want) else [f"{where}: {got!r} != {want!r}"]


NUMBER = re.compile(r"-?\d+\.\d+")  # a printed decimal (integers, e.g. step numbers, stay text)


def test_differences_catches_a_changed_number():
    want = {"metrics": [{"step": 1, "loss": 8.0, "lr": 1e-3}], "events": [["step 3: skipped"]]}
    assert differences(json.loads(json.dumps(want)), want) == []
    assert differences({"metrics": [{"step": 1, "loss": 8.0 + 2e-5, "lr": 1e-3}], "events": [["step 3: skipped"]]},
                       want) == []
    assert differences({"metrics": [{"step": 1, "loss": 8.0002, "lr": 1e-3}], "events": [["step 3: skipped"]]},
                       want) == ["/metrics[0]/loss: 8.0002 != 8.0"]
    line = {"events": [["eval at step 5: val/loss 6.8750 | val/ppl 967.7611"]]}
    assert differences({"events": [["eval at step 5: val/loss 6.8751 | val/ppl 967.7615"]]}, line) == []
    assert differences({"events": [["eval at step 5: val/loss 6.8753 | val/ppl 967.7611"]]}, line) != []
    assert differences({"events": [["eval at step 6: val/loss 6.8750 | val/ppl 967.7611"]]}, line) != []
    assert differences({"metrics": [], "events": [["step 3: skipped"]]}, want) == ["/metrics: 0 items != 1"]
    assert differences({**want, "events": [["step 4: skipped"]]}, want) == [
        "/events[0][0]: 'step 4: skipped' != 'step 3: skipped'"]


@pytest.mark.processes
def test_run_with_skip_rollbacks_and_resume_matches_the_recorded_one(tmp_path, toy_data):
    with open(FIXTURE) as f:
        want = json.load(f)
    got = record(str(tmp_path))
    # the fixture covers what the test claims: every step logged, both rollbacks, a skip, the resume
    steps = [r["step"] for r in want["metrics"] if "loss" in r]
    assert sorted(set(steps)) == [s for s in range(1, 21) if s != 3]
    assert [r["rollback"]["to_step"] for r in want["metrics"] if "rollback" in r] == [4, 12]
    assert any(line.startswith("resumed from <run>/ckpt/global_step10") for line in want["events"][1])
    diffs = differences(got, want)
    assert not diffs, "\n".join(diffs[:20])


if __name__ == "__main__":  # record the fixture from the code as it is now
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_toy_data.py")], check=True, cwd=REPO)
    with tempfile.TemporaryDirectory() as work:
        result = record(work)
    os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
    with open(FIXTURE, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"wrote {FIXTURE}: {len(result['metrics'])} metric rows")
