"""tools/sweep.py: a real 3-mixture sweep of the smoke model, the Slurm array, and the planning logic."""

import csv
import json
import math
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, submit_env, wait_for_sacct

from neox.cli import sweep as sweep_program
from neox.config import load_config
from neox.runs import plot as plot_run
from neox.runs import sweep as sweep_tool

SMOKE_OVERRIDES = {"num_gpus": 1, "model_parallel_size": 1, "eval_iters": 1}
MIXTURES = {"llemma-2-4-1": [2, 4, 1], "equal": [1, 1, 1], "code-heavy": [1, 1, 4]}
COMPONENTS = ["arxiv", "open-web-math", "algebraic-stack"]


def write_sweep(path, cache, **extra):
    spec = {"base_configs": ["llemma_configs/smoke.yml"],
            "overrides": {**SMOKE_OVERRIDES, "data_cache_dir": str(cache)},
            "tokens_per_run": 3000,  # 3 steps of 8 x 128 tokens
            "mixtures": {"list": [{"name": n, "weights": w} for n, w in MIXTURES.items()]}, **extra}
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def sweep_cli(*args, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "sweep.py"), *args], capture_output=True,
                          text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, toy_data):
    """One local sweep (3 DeepSpeed launches), its comparison, then the same command again."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec, out = write_sweep(tmp / "sweep.yml", tmp / "cache"), tmp / "out"
    first = sweep_cli("mixture", spec, "--out", str(out))
    assert first.returncode == 0, first.stderr[-4000:]
    logs = {n: (out / "runs" / n / "logs" / "metrics.jsonl").read_bytes() for n in MIXTURES}
    compare = sweep_cli("compare", str(out))
    assert compare.returncode == 0, compare.stderr[-4000:]
    again = sweep_cli("mixture", spec, "--out", str(out))
    return {"out": out, "first": first, "compare": compare, "again": again, "logs_after_first": logs}


def metrics_rows(out, name):
    return [json.loads(line) for line in open(out / "runs" / name / "logs" / "metrics.jsonl")]


@pytest.mark.processes
def test_each_run_config_has_its_weights_budget_and_scaled_schedule(local_sweep):
    out = local_sweep["out"]
    for name, w in MIXTURES.items():
        config = out / "runs" / name / "config.yml"
        assert f"python deepy.py train.py {config}" in config.read_text()  # says how to rerun it by hand
        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            cfg = load_config([str(config)])  # an ordinary config deepy.py accepts, data paths checked
        finally:
            os.chdir(cwd)
        assert cfg.data.train_data_weights == pytest.approx([x / sum(w) for x in w], abs=1e-12)
        tokens_per_step = cfg.batch.train_batch_size * cfg.model.seq_length
        assert tokens_per_step == 1024 and cfg.schedule.train_iters == math.ceil(3000 / 1024) == 3
        # smoke: warmup 4 and horizon 40 of 40 steps -> 3 steps: warmup 1 (at least one), horizon 3
        assert (cfg.schedule.warmup_iters, cfg.schedule.lr_decay_iters) == (1, 3)
        assert cfg.logging.eval_interval == 3 and cfg.logging.log_dir == str(out / "runs" / name / "logs")
        assert cfg.checkpoint.save == str(out / "runs" / name / "checkpoints")
        rows = metrics_rows(out, name)
        assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
        assert os.path.isfile(out / "runs" / name / "checkpoints" / "global_step3" / "complete")
        mixture = json.load(open(out / "runs" / name / "logs" / "mixture.json"))
        assert [round(m["weight"], 9) for m in mixture] == [round(x / sum(w), 9) for x in w]


@pytest.mark.processes
def test_results_equal_the_runs_metrics_and_the_winner_is_the_argmin(local_sweep):
    out = local_sweep["out"]
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == list(MIXTURES)
    selection = {}
    for r in table:
        rows = metrics_rows(out, r["run"])
        final_eval = [x for x in rows if x["step"] == 3 and "val/arxiv/loss" in x][-1]
        final_train = [x for x in rows if x["step"] == 3 and "loss" in x][-1]
        w = MIXTURES[r["run"]]
        for c, x in zip(COMPONENTS, w):
            assert float(r[f"weight/{c}"]) == pytest.approx(x / sum(w), abs=1e-12)
            assert int(r[f"tokens/{c}"]) == final_train[f"tokens/{c}"]
            assert float(r[f"val/{c}/loss"]) == final_eval[f"val/{c}/loss"]  # exact: repr round trip
        assert sum(int(r[f"tokens/{c}"]) for c in COMPONENTS) == 3 * 1024
        selection[r["run"]] = sum(final_eval[f"val/{c}/loss"] for c in COMPONENTS) / 3
        assert float(r["selection_loss"]) == pytest.approx(selection[r["run"]], rel=1e-12)
    winner = min(selection, key=selection.get)
    assert [r["run"] for r in table if r["winner"] == "1"] == [winner]
    assert f"winner: {winner} " in local_sweep["compare"].stdout
    md = (out / "results.md").read_text()
    assert f"| **{winner}** (winner) |" in md and md.count("(winner)") == 1
    assert f"Winner: **{winner}**" in md

    from PIL import Image

    img = Image.open(out / "results.png")
    assert img.size == (1300, 500)  # the bar chart and, for 3 components, the ternary plot


@pytest.mark.processes
def test_olmix_csvs_have_the_documented_columns(local_sweep):
    out = local_sweep["out"] / "olmix"
    with open(out / "ratios.csv") as f:
        ratios = list(csv.reader(f))
    with open(out / "metrics.csv") as f:
        metrics = list(csv.reader(f))
    # olmix: both files have the id column `run`; ratios has one column per domain summing to 1 per row
    assert ratios[0] == ["run", *COMPONENTS]
    assert metrics[0] == ["run", "arxiv_loss", "open-web-math_loss", "algebraic-stack_loss"]
    assert [r[0] for r in ratios[1:]] == [r[0] for r in metrics[1:]] == list(MIXTURES)
    for row in ratios[1:]:
        assert sum(float(x) for x in row[1:]) == pytest.approx(1.0, abs=1e-12)
    priors = yaml.safe_load((out / "priors.yaml").read_text())["priors"]["token_counts"]
    assert list(priors) == COMPONENTS and all(v > 0 for v in priors.values())


@pytest.mark.processes
def test_plot_of_the_smoke_runs_overlaid(local_sweep, tmp_path):
    """tools/plot_run.py on the real smoke runs' metrics.jsonl (sweep run directories)."""
    import numpy as np
    from PIL import Image

    out = local_sweep["out"]
    dirs = [str(out / "runs" / n) for n in MIXTURES]
    data = plot_run.panel_data(dirs)
    assert list(data) == list(MIXTURES)
    for name in MIXTURES:
        rows = metrics_rows(out, name)
        assert data[name]["loss"]["value"] == [r["loss"] for r in rows if "loss" in r]
        assert data[name]["lr"]["value"] == [r["lr"] for r in rows if "loss" in r]
        assert data[name]["validation"]["arxiv"]["step"] == [0, 3]
    png = tmp_path / "sweep.png"
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "plot_run.py"), *dirs, "--out", str(png)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert img.shape == (800, 1500) and img.std() > 10


@pytest.mark.processes
def test_rerun_launches_nothing(local_sweep):
    again, out = local_sweep["again"], local_sweep["out"]
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"already finished, skipped: {', '.join(MIXTURES)}" in again.stderr
    assert "nothing to run" in again.stderr and "mixture runs" not in again.stderr  # no progress bar: no launch
    for name, before in local_sweep["logs_after_first"].items():
        assert (out / "runs" / name / "logs" / "metrics.jsonl").read_bytes() == before


@pytest.mark.processes
def test_a_changed_sweep_file_is_refused_before_anything_is_written(local_sweep, tmp_path, capsys):
    out = local_sweep["out"]
    spec = write_sweep(tmp_path / "changed.yml", tmp_path / "cache", fixed={})
    text = yaml.safe_load(open(spec))
    text["tokens_per_run"] = 5000
    (tmp_path / "changed.yml").write_text(yaml.safe_dump(text))
    before = (out / "runs" / "equal" / "config.yml").read_text()
    assert sweep_program.main(["mixture", spec, "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: {out / 'runs' / 'llemma-2-4-1' / 'config.yml'} exists with a different config")
    assert (out / "runs" / "equal" / "config.yml").read_text() == before


@pytest.mark.processes
def test_slurm_executor_runs_one_array_task_per_run_on_slurm(slurm, tmp_path, toy_data):
    """The real Slurm: one array task per mixture, no --gpus-per-node unless the sweep file asks,
    each task trains its run through slurm/sweep_array.sbatch; compare reads the results."""
    spec = write_sweep(tmp_path / "sweep.yml", tmp_path / "cache",
                       slurm={"max_parallel": 3, "sbatch_args": ["--cpus-per-task=1", "--time=20"]})
    out = tmp_path / "out"
    r = sweep_cli("mixture", spec, "--out", str(out), "--executor", "slurm", env=submit_env())
    assert r.returncode == 0, r.stderr[-3000:]
    job = re.search(r"Submitted batch job (\d+)", r.stdout).group(1)
    submitted = next(line for line in r.stderr.splitlines() if line.startswith("submitting: "))
    assert "--array=0-2%3" in submitted and "--gpus-per-node" not in submitted
    states = wait_for_sacct(job, len(MIXTURES))
    logs = {p.name: p.read_text() for p in (out / "slurm").iterdir()}
    assert states == ["COMPLETED"] * len(MIXTURES), (states, logs)
    for name in MIXTURES:
        assert [row["step"] for row in metrics_rows(out, name) if "loss" in row] == [1, 2, 3]
    compare = sweep_cli("compare", str(out))
    assert compare.returncode == 0, compare.stderr[-3000:]


@pytest.mark.processes
def test_dry_run_plans_the_whole_sweep_and_writes_nothing(tmp_path, capsys, toy_data):
    spec = write_sweep(tmp_path / "sweep.yml", tmp_path / "cache")
    assert sweep_program.main(["mixture", spec, "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    r = capsys.readouterr()
    plan = json.loads(r.out)
    # each run is the smoke model for 3 steps: the planner's GPU-hours for that config, times 3 runs
    one = load_config([os.path.join(REPO, "llemma_configs", "smoke.yml")],
                      [f"{k}={v}" for k, v in SMOKE_OVERRIDES.items()] + ["train_iters=3", "warmup_iters=1",
                                                                          "lr_decay_iters=3", "vocab_size=3001"],
                      dry_run=True)
    from neox.model.planner import plan as planner

    per_run = planner(one)["gpu_hours_at_mfu"]
    assert [x["gpu_hours"] for x in plan["runs"]] == pytest.approx([per_run] * 3, rel=1e-12)
    assert plan["total_gpu_hours"] == pytest.approx(3 * per_run, rel=1e-12)
    assert "GPU-hours at 35.0% MFU for the whole sweep" in r.err
    assert not (tmp_path / "out").exists()


def test_llemma_sweep_file_plans_six_7b_runs(capsys):
    spec = os.path.join(REPO, "llemma_configs", "sweeps", "llemma_mixture.yml")
    assert sweep_program.main(["mixture", spec, "--out", "/nonexistent/sweep", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    runs = {x["name"]: x for x in plan["runs"]}
    llemma = runs["arxiv-web-code-2-4-1"]["weights"]
    # 2:4:1 of 95% plus 2% and 3% general data: exactly data_mixture.yml's shares
    expected = [2 / 7 * 0.95, 4 / 7 * 0.95, 1 / 7 * 0.95, 0.02, 0.03]
    assert list(llemma.values()) == pytest.approx(expected, abs=1e-12)
    published = yaml.safe_load(open(os.path.join(REPO, "llemma_configs", "data_mixture.yml")))["train_data_weights"]
    assert expected == pytest.approx([w / sum(published) for w in published], abs=1e-5)
    assert len(runs) == 6 and all(x["train_iters"] == 1000 for x in runs.values())
    assert plan["selection_metric"] == "math-train"
    # 1,000 of the 42,000 steps of Llemma 7B (21,005 GPU-hours at 35% MFU, README) per run
    assert plan["total_gpu_hours"] == pytest.approx(6 * 21005 / 42, rel=1e-3)


# ----------------------------------------------------------------------------- planning logic, in process


def smoke_sweep(tmp_path, **extra):
    return sweep_tool.load_sweep(write_sweep(tmp_path / "s.yml", tmp_path / "cache", **extra))


def test_grid_dirichlet_and_fixed_shares(tmp_path):
    s = smoke_sweep(tmp_path, mixtures={"grid": {"steps": 4}, "dirichlet": {"n": 3, "seed": 5, "alpha": 2.0}},
                    fixed={"algebraic-stack": 0.2})
    plan = sweep_tool.plan_sweep(s, str(tmp_path / "out"), dry_run=True)
    names = [r["name"] for r in plan["runs"]]
    # searched: arxiv and open-web-math; grid of 4: (1,3) (2,2) (3,1) -- every component keeps data
    assert names[:3] == ["grid-1-3", "grid-2-2", "grid-3-1"]
    assert list(plan["runs"][0]["weights"].values()) == pytest.approx([0.8 * 0.25, 0.8 * 0.75, 0.2])
    import numpy as np

    draws = np.random.default_rng(5).dirichlet([2.0, 2.0], 3)
    for r, d in zip(plan["runs"][3:], draws):
        assert list(r["weights"].values()) == pytest.approx([0.8 * d[0], 0.8 * d[1], 0.2], abs=1e-12)
    assert names[3:] == ["dirichlet-00", "dirichlet-01", "dirichlet-02"]


def test_schedule_scaling_keeps_the_llemma_7b_shape():
    class S:  # Llemma 7B: 42,000 of a 48,000-step cosine, warmup 500
        train_iters, warmup_iters, lr_decay_iters = 42000, 500, 48000

    base = type("Cfg", (), {"schedule": S})
    assert sweep_tool.scaled_schedule(base, 2100) == {"train_iters": 2100, "warmup_iters": 25, "lr_decay_iters": 2400}
    assert sweep_tool.scaled_schedule(base, 1000) == {"train_iters": 1000, "warmup_iters": 12, "lr_decay_iters": 1143}


@pytest.mark.parametrize("extra, message", [
    ({"tokens": 5}, "unknown key 'tokens'"),
    ({"fixed": {"wiki": 0.1}}, "component 'wiki' is not among the train components arxiv, open-web-math, algebraic-stack"),
    ({"fixed": {"arxiv": 1.5}}, "the 'fixed' shares must sum to between 0 and 1"),
    ({"mixtures": {"list": [{"weights": [1, 2]}]}}, "mixtures.list[0]: weights must be 3 non-negative numbers"),
    ({"mixtures": {"list": [{"name": "a", "weights": [1, 1, 1]}, {"name": "a", "weights": [1, 2, 1]}]}},
     "mixture names must be unique"),
    ({"mixtures": {"grid": {"steps": 2}}}, "mixtures.grid.steps must be an integer >= 3"),
    ({"selection": {"metric": "gsm8k"}}, "selection.metric 'gsm8k' is neither 'mean' nor one of"),
    ({"anneal_from": {"load": "runs/stable", "step": 6, "decay_iters": 3}},
     "key 'tokens_per_run' does not go with anneal_from (the runs start from runs/stable at step 6"),
    ({"anneal_from": {"load": "runs/stable", "step": 0, "decay_iters": 3}},
     "anneal_from.step must be a positive integer, got 0"),
    ({"overrides": {"num_layrs": 2}}, "unknown key 'num_layrs' in -o overrides (did you mean 'num_layers'?)"),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path, capsys, extra, message):
    spec = write_sweep(tmp_path / "bad.yml", tmp_path / "cache", **extra)
    assert sweep_program.main(["mixture", spec, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and message in captured.err, captured.err
    assert captured.err.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.processes
def test_anneal_mode_branches_every_mixture_off_one_stable_checkpoint(tmp_path, toy_data):
    """Two anneals from step 6 of a stable WSD smoke run, each decaying over 3 steps on its own
    mixture: both run, the source is only read, and the comparison writes its table and picture."""
    stable = tmp_path / "stable"
    r = subprocess.run([sys.executable, "deepy.py", "train.py", "llemma_configs/smoke.yml", "-o", "num_gpus=1",
                        "-o", "model_parallel_size=1", "-o", "train_iters=6", "-o", "lr_decay_iters=100",
                        "-o", "lr_decay_style=wsd", "-o", "lr_wsd_decay_iters=10", "-o", "eval_iters=0",
                        "-o", f"save={stable}/ckpt", "-o", f"log_dir={stable}/logs", "-o", "checkpoint_factor=6",
                        "-o", f"data_cache_dir={tmp_path}/cache"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    source_files = sorted(p.name for p in (stable / "ckpt" / "global_step6").iterdir())
    spec = {"base_configs": ["llemma_configs/smoke.yml"],
            "overrides": {**SMOKE_OVERRIDES, "data_cache_dir": str(tmp_path / "cache"), "lr_decay_style": "wsd",
                          "lr_wsd_decay_iters": 10, "lr_decay_iters": 100},
            "anneal_from": {"load": str(stable / "ckpt"), "step": 6, "decay_iters": 3},
            "mixtures": {"list": [{"name": "web-heavy", "weights": [1, 4, 1]},
                                  {"name": "code-heavy", "weights": [1, 1, 4]}]}}
    (tmp_path / "anneal.yml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    first = sweep_cli("mixture", str(tmp_path / "anneal.yml"), "--out", str(out))
    assert first.returncode == 0, first.stderr[-4000:]
    for name in ("web-heavy", "code-heavy"):
        rows = metrics_rows(out, name)
        assert [r["step"] for r in rows if "loss" in r] == [7, 8, 9]  # a branch: its steps continue the source's
        cfg = yaml.safe_load(open(out / "runs" / name / "config.yml"))
        assert (cfg["load_step"], cfg["anneal"], cfg["lr_decay_iters"], cfg["lr_wsd_decay_iters"]) == (6, True, 9, 3)
    assert sorted(p.name for p in (stable / "ckpt" / "global_step6").iterdir()) == source_files
    compare = sweep_cli("compare", str(out))
    assert compare.returncode == 0, compare.stderr[-4000:]
    table = (out / "results.md").read_text()
    assert "web-heavy" in table and "code-heavy" in table and (out / "results.png").stat().st_size > 10_000
