"""bench/gpu_check.py without a GPU: --plan builds and validates every part's config (and its
planner numbers are neox.model.planner's), the arithmetic of the report, and the part runner's timeout."""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "bench"))
import gpu_check


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "out"
    r = subprocess.run([sys.executable, "bench/gpu_check.py", "--plan", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not out.exists()  # a plan writes nothing
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


@pytest.mark.processes
def test_plan_lists_every_part_with_budget(plan):
    p, stderr = plan
    assert p["parts"] == ["setup", "correctness", "training", "throughput", "llemma7b", "memory"]
    assert p["budget_s"] == 540 and set(p["part_timeout_s"]) == set(p["parts"])
    assert set(p["configs"]) == {"correctness", "training", "throughput", "llemma7b"}
    assert set(p["configs"]["training"]) == {"uninterrupted", "uninterrupted_repeat", "resumed", "sigterm"}
    assert set(p["configs"]["throughput"]) == {"ours", "ours_compile", "ours_ckpt", "plain", "hf"}
    assert "throughput   ours_ckpt" in stderr  # the human table names every run


@pytest.mark.processes
def test_planner_numbers_are_neox_planners(plan):
    from neox.model.planner import memory_per_gpu

    for part, runs in plan[0]["configs"].items():
        for run, d in runs.items():
            cfg = gpu_check.validated(d["config"], dry_run=True)
            assert d["planner"] == pytest.approx(memory_per_gpu(cfg), rel=1e-12), (part, run)


@pytest.mark.processes
def test_throughput_model_is_a_1_to_2b_llama(plan):
    runs = plan[0]["configs"]["throughput"]
    d = runs["ours"]
    L, h, f, V = 24, 2048, 5504, 32016  # by hand: q, k, v, o + gate, up, down + 2 norms; embed + head + norm
    assert d["num_parameters"] == L * (4 * h * h + 3 * h * f + 2 * h) + 2 * V * h + h == 1_345_488_896
    assert (d["seq_length"], d["vocab_size"], d["precision"], d["zero_stage"], d["data_parallel"],
            d["tensor_parallel"]) == (4096, 32016, "bf16", 1, 1, 1)
    assert d["flops_per_token"] == 6 * d["num_parameters"] + 12 * L * h * 4096
    assert (runs["ours_compile"]["compile_blocks"], runs["ours_compile"]["checkpoint_activations"]) == (True, False)
    assert (runs["ours_ckpt"]["compile_blocks"], runs["ours_ckpt"]["checkpoint_activations"]) == (False, True)
    # checkpointing keeps one layer input per layer instead of each layer's working set
    assert runs["ours_ckpt"]["planner"]["activations_gib"] < runs["ours"]["planner"]["activations_gib"] / 2


@pytest.mark.processes
def test_llemma_shape_and_training_configs(plan):
    llemma = plan[0]["configs"]["llemma7b"]
    for n in (2, 4, 32):
        d = llemma[f"layers_{n}"]
        assert (d["num_layers"], d["hidden_size"], d["intermediate_size"], d["num_attention_heads"], d["seq_length"],
                d["micro_batch"], d["checkpoint_activations"], d["tensor_parallel"]) == (
                    n, 4096, 11008, 32, 4096, 4, True, 1)
    assert llemma["layers_32"]["num_parameters"] == 6_738_546_688  # Llemma 7B, as the README's plan
    assert plan[0]["llemma_layers_measured"] == [2, 4] and plan[0]["llemma_layers_extrapolated"] == 32
    for run, d in plan[0]["configs"]["training"].items():
        c = d["config"]
        assert (c["num_gpus"], c["model_parallel_size"], c["num_layers"], c["hidden_size"]) == (1, 1, 2, 128), run
        assert c["save"].endswith(os.path.join(run, "ckpt")) and c["precision"] == "bf16"
    assert plan[0]["configs"]["training"]["sigterm"]["config"]["train_iters"] > 20  # still running when signalled


def test_report_arithmetic():
    proj = gpu_check.extrapolate_layers(1.0, 2, 1.5, 4, 32)
    assert proj == {"per_layer_s": 0.25, "fixed_s": 0.5, "step_time_s": 8.5}
    assert gpu_check.llemma_reference(624.0) == [4200.0, 4800.0]  # twice the A100's 312 TFLOP/s
    assert gpu_check.planner_error(1.15, 2**30) == pytest.approx(0.15)


def test_summary_table_from_part_records():
    results = {
        "setup": {"status": "passed", "wall_s": 30.0, "checks": [{"name": "pip_install", "passed": True}],
                  "gpu": "NVIDIA H200", "torch": "2.11.0", "matmul_peak_tflops": 790.4},
        "throughput": {"status": "failed", "wall_s": 150.0, "checks": [{"name": "mfu", "passed": False}],
                       "ratios": {"ours_vs_hf": 1.42}, "mfu": {"ours": 0.385}},
        "llemma7b": {"status": "passed", "wall_s": 60.0, "checks": [], "projection": {
            "tokens_per_sec_per_gpu": 5100.0, "llemma_scaled_to_this_gpu_tokens_per_sec": [5320.5, 6080.5]}},
        "memory": {"status": "passed", "wall_s": 1.0, "checks": [], "runs": [
            {"planner_error": -0.08, "checked": True}, {"planner_error": 0.05, "checked": True},
            {"planner_error": -0.72, "checked": False}]},  # a smoke run: recorded, not in the range
        "training": {"status": "timeout", "wall_s": 150.0, "checks": [], "error": "killed after its 150 s"},
    }
    lines = gpu_check.summary_table(results).splitlines()
    assert "peak 790 TFLOP/s" in lines[1] and "1/1" in lines[1]
    assert "ours_vs_hf 1.42; MFU ours 38.5%" in lines[2] and "failed" in lines[2]
    assert "5,100 tokens/s/GPU" in lines[3] and "5,320-6,080" in lines[3]
    assert "-8.0% .. +5.0% over 2 checked runs (1 too small" in lines[4]
    assert "timeout" in lines[5] and "killed after its 150 s" in lines[5]


@pytest.mark.processes
def test_part_timeout_kills_the_whole_session(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    code = ("import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
            f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    t0 = time.time()
    data = gpu_check.run_part("training", [sys.executable, "-c", code], str(tmp_path), timeout=3)
    assert time.time() - t0 < 20
    assert data["status"] == "timeout" and "killed after its 3 s" in data["error"]
    assert json.loads((tmp_path / "training.json").read_text())["status"] == "timeout"
    pid = int(pidfile.read_text())
    for _ in range(50):  # the grandchild (e.g. a trainer) went with its part
        if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"process {pid} of the timed-out part is still running")


@pytest.mark.processes
def test_crashed_part_keeps_its_checks(tmp_path):
    record = {"part": "correctness", "status": "running", "checks": [{"name": "fp32", "passed": True}]}
    code = f"import json; json.dump({record!r}, open({str(tmp_path / 'correctness.json')!r}, 'w')); raise SystemExit(3)"
    data = gpu_check.run_part("correctness", [sys.executable, "-c", code], str(tmp_path), timeout=30)
    assert data["status"] == "error" and "exit status 3" in data["error"]
    assert data["checks"] == record["checks"]


@pytest.mark.processes
@pytest.mark.parametrize("args, message", [
    (["--only", "setup,bogus", "--out", "x"], "error: --only: unknown part(s) bogus"),
    (["--budget-s", "0", "--out", "x"], "error: --budget-s must be positive"),
    ([], "error: --out DIR is required"),
])
def test_usage_errors(args, message):
    r = subprocess.run([sys.executable, "bench/gpu_check.py", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_memory_part_compares_each_run_with_the_planner(tmp_path):
    import types

    def planned(part, run):
        flat = gpu_check.all_configs(str(tmp_path / "work" / part), "unused", 312.0)[part][run]
        plan = gpu_check.describe(flat)["planner"]
        return (plan["total_gib"] - plan["overhead_gib"]) * 2**30

    records = {"throughput": {"ours": planned("throughput", "ours") / 1.10,  # planner 10% high: within 15%
                              "ours_ckpt": planned("throughput", "ours_ckpt") / 1.30},  # 30% high: off
               "training": {"uninterrupted": 300 * 2**20}}  # the smoke model: recorded, not judged
    for part, runs in records.items():
        gpu_check.write_json(str(tmp_path / f"{part}.json"), {"part": part, "runs": {
            run: {"max_memory_allocated": int(b), "max_memory_reserved": int(b) + 2**30} for run, b in runs.items()}})
    p = gpu_check.Part("memory", str(tmp_path), time.time() + 60)
    gpu_check.part_memory(p, types.SimpleNamespace(out=str(tmp_path)))
    checks = {c["name"]: (c["passed"], c["value"]) for c in p.data["checks"]}
    assert set(checks) == {"planner_throughput_ours", "planner_throughput_ours_ckpt"}
    assert checks["planner_throughput_ours"][0] and checks["planner_throughput_ours"][1] == pytest.approx(0.10, abs=1e-6)
    assert not checks["planner_throughput_ours_ckpt"][0]
    smoke = [r for r in p.data["runs"] if r["run"] == "uninterrupted"][0]
    assert not smoke["checked"] and smoke["max_memory_reserved_gib"] == pytest.approx(300 / 1024 + 1)
