"""tools/run_eval.py end to end on CPU: the toy stand-in model on small MATH/GSM8k/Proof-Pile-2 files."""

import json
import math
import os
import shutil
import stat
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO

TOOL = os.path.join(REPO, "tools", "run_eval.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
DOCS = {"arxiv": ["Let $x$ be a prime. Then the theorem holds for every $n$."],
        "open-web-math": ["The derivative of $x^2$ is $2x$, as the limit shows.",
                          "We prove the lemma by induction on the number of vertices."]}


def write_benchmarks(root):
    """Files in the layout and with the fields of the real releases."""
    for i, subject in enumerate(["algebra", "algebra", "geometry"]):
        d = root / "MATH" / "test" / subject
        d.mkdir(parents=True, exist_ok=True)
        json.dump({"problem": f"What is ${i}+1$?", "level": "Level 1", "type": subject.title(),
                   "solution": f"We add: ${i}+1=\\boxed{{{i + 1}}}$."}, open(d / f"{i}.json", "w"))
    (root / "gsm8k").mkdir()
    with open(root / "gsm8k" / "test.jsonl", "w") as f:
        for i in range(3):
            f.write(json.dumps({"question": f"Ann has {i} pens and buys 2 more. How many pens does she have?",
                                "answer": f"She has {i}+2=<<{i}+2={i + 2}>>{i + 2} pens.\n#### {i + 2}"}) + "\n")
    import zstandard

    for comp, texts in DOCS.items():
        d = root / "proof-pile-2" / comp / "test"
        d.mkdir(parents=True)
        lines = "".join(json.dumps({"text": t, "meta": {}}) + "\n" for t in texts).encode()
        if comp == "arxiv":  # as published: zstd-compressed
            (d / "test_0.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
        else:
            (d / "test_0.jsonl").write_bytes(lines)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, toy_data):
    from neox.cli.make_stand_in_codellama import make

    root = tmp_path_factory.mktemp("eval")
    make(str(root / "hf"), os.path.join(toy_data, "tokenizer.model"), max_positions=4096)
    write_benchmarks(root / "data")
    cmd = [sys.executable, TOOL, str(root / "hf"), "--out", str(root / "out"), "--data-dir", str(root / "data"),
           "--tasks", "llemma_math,llemma_gsm8k,llemma_math_majk,proof_pile_2_ppl", "--limit", "2", "--k", "3",
           "--max-gen-toks", "6", "--workers", "2", "--timeout", "20"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return root, r


@pytest.mark.processes
def test_results_samples_and_table(evaluated):
    root, r = evaluated
    out = root / "out"
    results = json.load(open(out / "results.json"))
    assert list(results) == ["llemma_math", "llemma_gsm8k", "llemma_math_majk", "proof_pile_2_ppl"]
    for task, res in results.items():
        assert {"metric", "value", "n", "k", "seconds"} <= set(res), task
        assert res["n"] == 2 and res["seconds"] > 0
    assert results["llemma_math"]["metric"] == "exact_or_equiv" and results["llemma_math"]["k"] == 1
    assert "math_verify" in results["llemma_math"]["metrics"]
    assert results["llemma_math_majk"]["metric"] == "maj@3" and results["llemma_math_majk"]["k"] == 3
    for task in ("llemma_math", "llemma_gsm8k", "llemma_math_majk"):
        recs = [json.loads(line) for line in open(out / "samples" / f"{task}.jsonl")]
        k = results[task]["k"]
        assert [x["doc_id"] for x in recs] == [0, 1]
        for x in recs:
            assert len(x["generations"]) == len(x["answers"]) == len(x["correct"]) == k
            assert x["gold"] == str(x["doc_id"] + (1 if "math" in task else 2))
        # the score in results.json is the samples' own
        assert results[task]["value"] == sum(x["maj_correct"] for x in recs) / 2
    math_recs = [json.loads(line) for line in open(out / "samples" / "llemma_math.jsonl")]
    assert [x["gold"] for x in math_recs] == ["1", "2"]
    table = open(out / "results.md").read()
    assert "| llemma_math | exact_or_equiv |" in table and "| proof_pile_2_ppl | token_perplexity |" in table
    assert table.strip() in r.stdout


def _direct_loglikelihood(model, tok, text, bos_count=1):
    """Sum of log p over every token after the first; bos_count=2 is "<s> <s> text" (lm-eval's default)."""
    ids = [tok.bos_token_id] * bos_count + tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1)), len(ids) - bos_count


@pytest.mark.processes
def test_perplexity_equals_transformers_with_one_bos(evaluated):
    from transformers import AutoTokenizer, LlamaForCausalLM

    root, _ = evaluated
    model = LlamaForCausalLM.from_pretrained(root / "hf").eval()
    tok = AutoTokenizer.from_pretrained(root / "hf")
    recs = [json.loads(line) for line in open(root / "out" / "samples" / "proof_pile_2_ppl.jsonl")]
    assert [x["component"] for x in recs] == ["arxiv", "open-web-math"]  # --limit 2: one of each
    results = json.load(open(root / "out" / "results.json"))["proof_pile_2_ppl"]
    total_ll = total_tokens = 0
    for rec, text in zip(recs, [DOCS["arxiv"][0], DOCS["open-web-math"][0]]):
        ll, n = _direct_loglikelihood(model, tok, text)
        doubled, _ = _direct_loglikelihood(model, tok, text, bos_count=2)
        assert abs(doubled - ll) > 1e-2 * abs(ll)  # a doubled BOS would be caught
        assert rec["tokens"] == n
        assert rec["loglikelihood"] == pytest.approx(ll, rel=1e-4)
        component_ppl = results["metrics"][f"{rec['component']}/token_perplexity"]
        assert component_ppl == pytest.approx(math.exp(-ll / n), rel=1e-4)
        total_ll, total_tokens = total_ll + ll, total_tokens + n
    assert results["value"] == pytest.approx(math.exp(-total_ll / total_tokens), rel=1e-4)
    assert results["components"] == {"arxiv": 1, "open-web-math": 1}
    table = open(root / "out" / "results.md").read()
    ppl = results["metrics"]["arxiv/token_perplexity"]
    assert f"| proof_pile_2_ppl/arxiv | token_perplexity | {ppl:.4f} | | 1 | 1 | |" in table


@pytest.mark.processes
def test_every_checkpoint_of_a_run_exported_on_the_fly(evaluated, tmp_path):
    """A converted trainer checkpoint copied to steps 100..400, two complete at multiples of 200."""
    root, _ = evaluated
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_codellama.py"), "--hf-dir", str(root / "hf"),
                    "--out", str(tmp_path / "conv"), "--tp", "1", "--dtype", "fp32"], check=True, env=ENV,
                   capture_output=True)
    save = tmp_path / "save"
    save.mkdir()
    for f in os.listdir(tmp_path / "conv"):
        if f != "global_step0" and f != "latest":
            src = tmp_path / "conv" / f
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, save / f)
    for step in (100, 200, 300, 400):
        shutil.copytree(tmp_path / "conv" / "global_step0", save / f"global_step{step}")
        if step != 400:  # 400 is still being written: no marker
            (save / f"global_step{step}" / "complete").write_text("")
    out = tmp_path / "evals"
    base = [sys.executable, TOOL, "--run", str(save), "--every", "200", "--out", str(out), "--data-dir",
            str(root / "data"), "--tasks", "proof_pile_2_ppl", "--limit", "2"]
    pending = subprocess.run(base + ["--list-pending"], capture_output=True, text=True, env=ENV)
    assert pending.stdout.split() == ["200"]  # 100, 300: not multiples; 400: not complete
    r = subprocess.run(base, capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = [json.loads(line) for line in open(out / "run_results.jsonl")]
    assert [(x["step"], x["task"]) for x in rows] == [(200, "proof_pile_2_ppl")]
    hf_ppl = json.load(open(root / "out" / "results.json"))["proof_pile_2_ppl"]["value"]
    assert rows[0]["value"] == pytest.approx(hf_ppl, rel=1e-5)  # export round trip: the same model
    assert "| 200 | proof_pile_2_ppl | token_perplexity |" in open(out / "run_results.md").read()
    again = subprocess.run(base + ["--list-pending"], capture_output=True, text=True, env=ENV)
    assert again.stdout.split() == []  # evaluated once
    # a step evaluated again replaces its rows; another step's rows are added
    from llemma_eval import runs

    runs.append_results(str(out), 200, {"proof_pile_2_ppl": dict(rows[0], value=2.0)})
    runs.append_results(str(out), 100, {"proof_pile_2_ppl": dict(rows[0], value=3.0)})
    rows = [json.loads(line) for line in open(out / "run_results.jsonl")]
    assert [(x["step"], x["value"]) for x in rows] == [(200, 2.0), (100, 3.0)]
    table = open(out / "run_results.md").read().splitlines()
    assert table[2].startswith("| 100 |") and table[3].startswith("| 200 | proof_pile_2_ppl | token_perplexity | 2.0000 |")


@pytest.mark.processes
def test_bad_arguments_fail_fast(tmp_path):
    r = subprocess.run([sys.executable, TOOL, str(tmp_path), "--out", str(tmp_path / "o"), "--tasks", "llemma_mat"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: --tasks: unknown task(s) ['llemma_mat']")
    r = subprocess.run([sys.executable, TOOL, str(tmp_path), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "neither a Hugging Face directory" in r.stderr
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "data" / "gsm8k").mkdir(parents=True)
    r = subprocess.run([sys.executable, TOOL, str(tmp_path / "hf"), "--out", str(tmp_path / "o"), "--data-dir",
                        str(tmp_path / "data"), "--tasks", "llemma_math"], capture_output=True, text=True)
    assert r.returncode == 2
    needs = f"{tmp_path}/data/MATH/test/<subject>/*.json (or MATH/test.jsonl)"
    assert r.stderr == f"error: --data-dir: task llemma_math needs {needs}\n"
    import importlib.util

    if importlib.util.find_spec("vllm") is None:  # CPU machines: the GPU extra is not installed
        r = subprocess.run([sys.executable, TOOL, str(tmp_path / "hf"), "--out", str(tmp_path / "o"),
                            "--backend", "vllm"], capture_output=True, text=True)
        assert (r.returncode, r.stderr) == (2, "error: --backend vllm: vllm is not installed "
                                                "(pip install -e '.[eval-gpu]')\n")
    assert not (tmp_path / "o").exists()


@pytest.mark.processes
def test_eval_after_checkpoint_submits_without_blocking(tmp_path):
    from neox.checkpoint.hooks import after_checkpoint, check_command

    fake = tmp_path / "bin"
    fake.mkdir()
    sbatch = fake / "sbatch"
    sbatch.write_text(f'#!/usr/bin/env bash\nsleep 2\necho "$@" > {tmp_path}/submitted\necho "Submitted batch job 77"\n')
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    ckpt = tmp_path / "save"
    ckpt.mkdir()
    os.environ["PATH"] = f"{fake}:{os.environ['PATH']}"
    try:
        start = time.time()
        proc = after_checkpoint("sbatch slurm/evaluate.sbatch {ckpt} runs/eval {step} --tasks llemma_math",
                                str(ckpt), 1200)
        assert time.time() - start < 1.5  # training is not held while sbatch runs
        assert proc.wait(timeout=30) == 0
    finally:
        os.environ["PATH"] = os.environ["PATH"].split(":", 1)[1]
    assert (tmp_path / "submitted").read_text().split() == [
        "slurm/evaluate.sbatch", str(ckpt), "runs/eval", "1200", "--tasks", "llemma_math"]
    log = (ckpt / "eval_after_checkpoint.log").read_text()
    assert "[step 1200] sbatch slurm/evaluate.sbatch" in log and "Submitted batch job 77" in log
    with pytest.raises(ValueError, match=r"unknown placeholder\(s\) \['stpe'\]"):
        check_command("sbatch x {stpe}")


@pytest.mark.processes
def test_evaluate_sbatch_array_task_takes_its_step(tmp_path):
    """Array task 1 of steps 200,400 evaluates step 400 with vLLM at the node's GPU count."""
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\necho "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "REPO": REPO, "PYTHON": str(fake), "SLURM_ARRAY_TASK_ID": "1", "SLURM_GPUS_ON_NODE": "4",
           "SLURM_CPUS_PER_TASK": "16", "TASKS": "llemma_math", "DATA_DIR": "/data/bench"}
    r = subprocess.run(["bash", os.path.join(REPO, "slurm", "evaluate.sbatch"), "/ckpt/run", "/evals", "200,400",
                        "--limit", "5"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("tools/run_eval.py --run /ckpt/run --step 400 --out /evals --tasks llemma_math "
                                "--data-dir /data/bench --backend vllm --tensor-parallel-size 4 --workers 16 --limit 5")
    env.pop("SLURM_ARRAY_TASK_ID")
    r = subprocess.run(["bash", os.path.join(REPO, "slurm", "evaluate.sbatch"), "/ckpt/run", "/evals", "200,400"],
                       capture_output=True, text=True, env=env)
    assert [line.split()[4] for line in r.stdout.splitlines()] == ["200", "400"]


def test_prompts_are_lm_evals_minerva_and_gsm8k_cot(tmp_path):
    """The pack's contexts: upstream's few-shot examples, then the problem in upstream's format."""
    from lm_eval.tasks.minerva_math import utils as minerva

    from llemma_eval.runner import _load_tasks

    write_benchmarks(tmp_path)
    contexts = {}
    for name in ("llemma_math", "llemma_gsm8k_majk"):
        task = _load_tasks([name], str(tmp_path), 5, 1234)["tasks"][name]
        task.build_all_requests(limit=1, rank=0, world_size=1)
        contexts[name] = task.instances
    math_ctx = contexts["llemma_math"][0].arguments[0]
    shots = minerva.list_fewshot_samples()
    # each solution on the line after "Solution:" (the Llemma prompt; lm-eval's default delimiter is a space)
    assert math_ctx.startswith(minerva.doc_to_text(shots[0]) + "\n" + shots[0]["solution"] + "\n\n")
    assert math_ctx.count("Final Answer: The final answer is") == 4
    assert math_ctx.endswith("\n\n" + minerva.doc_to_text({"problem": "What is $0+1$?"}))
    gsm = contexts["llemma_gsm8k_majk"]
    assert len(gsm) == 1 and gsm[0].repeats == 5  # k = 5: one request, five samples
    assert gsm[0].arguments[0].count("The answer is") == 8
    assert gsm[0].arguments[0].endswith("Q: Ann has 0 pens and buys 2 more. How many pens does she have?\nA:")
    assert gsm[0].arguments[1]["do_sample"] and gsm[0].arguments[1]["temperature"] == 0.6


@pytest.mark.processes
def test_every_task_runs_from_local_files_and_rescoring_gives_the_same_results(evaluated, tmp_path):
    """Every task of the pack, both protocols, from toy benchmark files in every --data-dir layout
    (tiny k); rescoring the samples files reproduces results.json."""
    from llemma_eval.runner import TASKS
    from llemma_eval.toy_bench import write_all

    root, _ = evaluated
    write_all(str(tmp_path / "bench"))
    shutil.copytree(root / "data" / "proof-pile-2", tmp_path / "bench" / "proof-pile-2")
    tasks = [t for t in TASKS if t != "proof_pile_2_ppl"]
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, TOOL, str(root / "hf"), "--out", str(out), "--data-dir", str(tmp_path / "bench"),
                        "--tasks", ",".join(tasks), "--limit", "1", "--k", "2", "--max-gen-toks", "4",
                        "--workers", "2", "--timeout", "20"], capture_output=True, text=True, timeout=1200, env=ENV)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    results = json.load(open(out / "results.json"))
    assert list(results) == tasks
    for task, res in results.items():
        assert res["n"] == 1 and res["k"] == (2 if task.endswith("_majk") else 1), task
        assert set(res["protocols"]) == {"default", "llemma"}, task
        rec = json.loads(open(out / "samples" / f"{task}.jsonl").readline())
        assert rec["kind"] == TASKS[task] and len(rec["generations"]) == res["k"]
        assert rec["gold"] is not None and rec["llemma"]["gold"] is not None, task  # every loader gave a reference
    again = tmp_path / "again"
    shutil.copytree(out / "samples", again / "samples")
    r = subprocess.run([sys.executable, TOOL, "rescore", "--samples", str(again / "samples"), "--workers", "2",
                        "--timeout", "20"], capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    rescored = json.load(open(again / "results.json"))
    for task, res in results.items():
        assert rescored[task]["protocols"] == res["protocols"] and rescored[task]["metrics"] == res["metrics"], task
