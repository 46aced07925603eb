"""What a new user meets first: the plan of a fresh clone, and the errors of common slips."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from neox.config import ConfigError, load_config


def run(*args, cwd=REPO, env=None):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def error_lines(r):
    return [line for line in r.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.processes
def test_llemma_dry_run_on_a_fresh_clone_plans_memory_and_gpu_hours():
    """No tokenizer or data downloaded yet: the configs' own vocabulary sizes give the full plan."""
    for size, vocab, hours in (("7b", 32016, 21_005), ("34b", 32000, 28_396)):
        r = run("deepy.py", "train.py", f"llemma_configs/{size}.yml", "llemma_configs/data_mixture.yml", "--dry-run")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)["derived"]
        assert d["vocab_size"] == vocab and round(d["gpu_hours_at_mfu"]) == hours
        assert d["memory_per_gpu_gib"] == pytest.approx(27.9 if size == "7b" else 34.6, abs=0.05)
        assert "memory plan skipped" not in r.stderr


@pytest.mark.processes
def test_vocab_size_is_checked_against_the_tokenizer(toy_data):
    tok = os.path.join(toy_data, "tokenizer.model")  # 3,001 pieces
    common = [os.path.join(REPO, "llemma_configs", "smoke.yml")]
    with pytest.raises(ConfigError, match=r"key 'vocab_size' \(3000\) is smaller than the vocabulary of vocab_file .* \(3001\)"):
        load_config(common, [f"vocab_file={tok}", "vocab_size=3000"], dry_run=True)
    cfg = load_config(common, [f"vocab_file={tok}", "vocab_size=3008"], dry_run=True)
    assert any("larger than the tokenizer's 3001" in w for w in cfg.warnings)


@pytest.mark.processes
def test_more_processes_than_cores_is_refused_before_spawning():
    cores = os.cpu_count()
    n = 2 * cores
    r = run("deepy.py", "train.py", "llemma_configs/smoke.yml", "-o", f"num_gpus={n}", "-o", "model_parallel_size=2",
            "-o", "gradient_accumulation_steps=1", "-o", f"train_batch_size={4 * n // 2}", "-o", "log_dir=/nonexistent/x")
    assert r.returncode == 2
    assert error_lines(r) == [f"error: key 'num_gpus' ({n}) asks for {n} processes on this node, but it has {cores} "
                              "CPU cores and no GPU; lower num_gpus (and model_parallel_size) or use slurm/ for more nodes"]


@pytest.mark.processes
def test_deepy_without_the_training_script_says_so():
    r = run("deepy.py", "llemma_configs/smoke.yml")
    assert r.returncode == 2
    assert ("the first argument must be the training script, then the configs: "
            "python deepy.py train.py llemma_configs/smoke.yml") in r.stderr


@pytest.mark.processes
def test_train_py_as_one_plain_process_says_how_to_start_it(toy_data):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    r = subprocess.run([sys.executable, "train.py", "llemma_configs/smoke.yml"], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 2  # a config error: the same status as deepy.py's
    assert error_lines(r) == ["error: train.py runs one process per GPU and was started as a single process, but "
                              "the config needs 2: start it with python deepy.py train.py llemma_configs/smoke.yml "
                              "(or torchrun --nproc_per_node=N train.py ..., or slurm/)"]


@pytest.mark.processes
def test_config_errors_exit_2_from_deepy_and_train_py_alike(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("num_layers: 2\nnum_layerz: 3\n")
    for script in (["deepy.py", "train.py"], ["train.py"]):
        r = run(*script, str(bad))
        assert r.returncode == 2 and error_lines(r) == [
            f"error: unknown key 'num_layerz' in {bad} (did you mean 'num_layers'?)"], r.stderr


def test_yaml_syntax_error_names_the_offending_line(tmp_path):
    bad = tmp_path / "syntax.yml"
    bad.write_text("num_layers: 2\nhidden_size 128\nseq_length: 16\n")  # line 2 lacks its ':'
    with pytest.raises(ConfigError, match=r"syntax.yml line 2: invalid YAML"):
        load_config([str(bad)])
    bad.write_text("num_layers: 2\noptimizer: {type: AdamW, params: {lr: 1e-4}\nseq_length: 16\n")  # unclosed
    with pytest.raises(ConfigError, match=r"syntax.yml line 2: invalid YAML"):
        load_config([str(bad)])


def test_a_key_twice_in_one_file_names_both_lines(tmp_path):
    dup = tmp_path / "dup.yml"
    dup.write_text("train_iters: 40\nseq_length: 16\ntrain_iters: 7\n")
    with pytest.raises(ConfigError, match=r"dup.yml: key 'train_iters' is set twice \(lines 1 and 3\)"):
        load_config([str(dup)])
    dup.write_text("optimizer:\n  type: AdamW\n  params: {lr: 1.0e-4, lr: 2.0e-4}\n")
    with pytest.raises(ConfigError, match=r"key 'lr' is set twice \(lines 3 and 3\)"):
        load_config([str(dup)])


def test_relative_paths_from_elsewhere_say_where_they_were_looked_for(tmp_path):
    cfg = os.path.join(REPO, "llemma_configs", "smoke.yml")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ConfigError) as e:
            load_config([cfg])
    finally:
        os.chdir(old)
    msg = str(e.value)
    assert msg.startswith("key 'train_data_paths': file not found: data/toy/tokenized/arxiv_train_text_document.bin")
    assert f"relative to the current directory {tmp_path}" in msg
    assert "the toy data is made by python tools/make_toy_data.py, run from the repository root" in msg


@pytest.mark.processes
def test_current_base_configs_plan_on_a_laptop():
    """The recipe on Llama-3.1-8B, Qwen2.5-7B, Qwen3-8B and OLMo-2-7B: the released models'
    parameter counts (what transformers counts for their config.json), a memory plan that fits
    40 GB, and the planner numbers docs/llemma_recipe.md gives."""
    for name, params, gib, hours in (("llama3_8b", 8_030_261_248, 33.1, 24_478),
                                     ("qwen25_7b", 7_615_616_512, 31.4, 22_686),
                                     ("qwen3_8b", 8_190_735_360, 34.6, 25_270),
                                     ("olmo2_7b", 7_298_617_344, 31.0, 22_510),
                                     # past 34B: TP 8 with sequence parallelism and ZeRO stage 2
                                     ("llama3_70b", 70_553_706_496, 24.7, 58_323)):
        r = run("deepy.py", "train.py", f"llemma_configs/{name}.yml", "llemma_configs/data_mixture.yml", "--dry-run")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)["derived"]
        assert d["num_parameters"] == params and round(d["gpu_hours_at_mfu"]) == hours
        assert d["memory_per_gpu_gib"] == pytest.approx(gib, abs=0.05) and "memory plan skipped" not in r.stderr
    doc = open(os.path.join(REPO, "docs", "llemma_recipe.md")).read()
    assert ("| parameters (equal to the released models') | 8,030,261,248 | 7,615,616,512 | 8,190,735,360 | "
            "7,298,617,344 |") in doc


WITHOUT = """import runpy, sys
sys.modules[{module!r}] = None  # as if it were not installed
sys.path.insert(0, "tools")
sys.argv = {argv!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.processes
@pytest.mark.parametrize("module, argv, line", [
    ("lm_eval", ["tools/run_eval.py", "runs/toy/llemma-toy-hf", "--tasks", "llemma_gsm8k", "--out", "runs/x"],
     "error: evaluation needs lm-eval, which is not installed in this Python: pip install -e '.[eval]' in the "
     "checkout (or pip install 'llemma-neox[eval]')"),
    ("matplotlib", ["tools/plot_run.py", "{tmp}", "--out", "{tmp}/run.png"],
     "error: tools/plot_run.py needs matplotlib, which is not installed in this Python: pip install -e '.[plot]' in "
     "the checkout (or pip install 'llemma-neox[plot]')"),
], ids=["run_eval-without-lm-eval", "plot_run-without-matplotlib"])
def test_a_missing_extra_is_one_line_naming_it(module, argv, line, tmp_path):
    """The quick start installs no extras; the toy pipeline's last hint (run_eval) then says which."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 8.0, "lr": 0.001}\n')
    r = run("-c", WITHOUT.format(module=module, argv=[a.format(tmp=tmp_path) for a in argv]))
    assert r.returncode == 1 and r.stderr.strip() == line, r.stderr
