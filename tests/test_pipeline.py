"""The README's toy pipeline end to end, and the finetune start's refusals."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, toy_data):
    run_dir = tmp_path_factory.mktemp("toy")
    r = subprocess.run([sys.executable, "tools/toy_pipeline.py", "--run-dir", str(run_dir)], cwd=REPO,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return run_dir, r.stdout


def test_pipeline_trains_and_exports(pipeline):
    run_dir, stdout = pipeline
    assert "held-out perplexity" in stdout
    ppl = json.load(open(run_dir / "perplexity.json"))
    for comp, before in ppl["before"].items():
        assert ppl["after"][comp] < 0.5 * before, (comp, before, ppl["after"][comp])
    meta = json.load(open(run_dir / "codellama-neox" / "neox_conversion.json"))
    assert meta["rope_theta_source"] == 1e6 and meta["rope_theta"] == 1e4
    assert meta["verify_max_abs_logit_diff"] < 1e-4
    cfg = json.load(open(run_dir / "llemma-toy-hf" / "config.json"))
    assert cfg["rope_theta"] == 1e4 and cfg["vocab_size"] == 3001
    rows = [json.loads(line) for line in open(run_dir / "logs" / "metrics.jsonl")]
    first = next(r for r in rows if "loss" in r)
    assert first["step"] == 1 and first["loss"] > 7.5  # started from the (random) base model


def test_exported_tokenizer_and_model_load(pipeline):
    import sentencepiece as spm
    import transformers

    run_dir, _ = pipeline
    export = str(run_dir / "llemma-toy-hf")
    model, info = transformers.LlamaForCausalLM.from_pretrained(export, output_loading_info=True)
    assert not any(info.values()), info
    tok = transformers.AutoTokenizer.from_pretrained(export)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(export, "tokenizer.model"))
    text = "Theorem. For every prime $p$, $a^p \\equiv a \\pmod p$."
    assert tok.encode(text, add_special_tokens=False) == sp.encode(text)
    assert tok.bos_token_id == 1 and tok.eos_token_id == 2


def test_the_printed_evaluation_command_runs_as_written(pipeline):
    """The pipeline ends with the command to evaluate its export on toy benchmark files (the one
    docs/evaluation.md gives for runs/toy); it runs as printed, offline, and both protocols score."""
    run_dir, stdout = pipeline
    command = stdout.strip().splitlines()[-1].split()
    assert command[:2] == ["python", "tools/run_eval.py"], command
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    results = json.load(open(run_dir / "eval" / "results.json"))
    assert list(results) == ["llemma_math", "llemma_gsm8k", "proof_pile_2_ppl"]
    assert results["llemma_math"]["n"] == 5 and set(results["llemma_math"]["protocols"]) == {"default", "llemma"}
    assert results["proof_pile_2_ppl"]["components"] == {"arxiv": 5}  # --limit 5: the first component's 5
    doc = open(os.path.join(REPO, "docs", "evaluation.md")).read()
    assert " ".join(command).replace(os.path.relpath(run_dir, REPO), "runs/toy") in doc


def deepy_fails(*overrides):
    cmd = [sys.executable, "deepy.py", "train.py", "llemma_configs/smoke.yml"]
    for o in overrides:
        cmd += ["-o", o]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    return r.stdout + r.stderr


def test_finetune_refuses_wrong_tp_and_theta(pipeline, tmp_path):
    run_dir, _ = pipeline
    ckpt = str(run_dir / "codellama-neox")
    common = [f"load={ckpt}", "finetune=true", f"save={tmp_path}/s", f"log_dir={tmp_path}/l"]
    out = deepy_fails(*common, "model_parallel_size=1", "num_gpus=1")
    assert "is sharded for TP=2 but model_parallel_size=1" in out
    out = deepy_fails(*common, "rotary_emb_base=1000000")
    assert "checkpoint rotary_emb_base 10000.0 != config rotary_emb_base 1000000.0" in out


def test_export_of_the_trained_tp2_checkpoint_computes_the_same_logits(pipeline):
    """The trained (ZeRO-1, bf16, TP=2) checkpoint and its Hugging Face export agree."""
    run_dir, _ = pipeline
    r = subprocess.run([sys.executable, "tools/verify_conversion.py", "--hf-dir", str(run_dir / "llemma-toy-hf"),
                        "--ckpt", str(run_dir / "checkpoints")], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert float(r.stdout.strip().splitlines()[-1].split("=")[1]) < 1e-4


def test_guarded_start_passes_and_catches_a_corrupted_tensor(pipeline, tmp_path):
    import shutil

    import torch

    run_dir, _ = pipeline
    rows = [json.loads(line) for line in open(run_dir / "logs" / "metrics.jsonl")]
    ref = next(r for r in rows if "reference_loss" in r)
    assert ref["step"] == 0 and abs(ref["reference_loss"] - ref["reference_loss_recorded"]) < 1e-3
    assert "reference_loss_training_theta" in ref  # Llemma's 1e6 -> 1e4 change, as a number
    bad = tmp_path / "bad-ckpt"
    shutil.copytree(run_dir / "codellama-neox", bad)
    path = bad / "global_step0" / "mp_rank_01_model_states.pt"
    state = torch.load(path, weights_only=False)
    state["module"]["layers.0.mlp.gate_up_proj.weight"] *= 3.0  # one corrupted tensor, shapes intact
    torch.save(state, path)
    out = deepy_fails(f"load={bad}", "finetune=true", f"save={tmp_path}/s", f"log_dir={tmp_path}/l")
    assert "guarded start:" in out and "on the converter's reference batch" in out
