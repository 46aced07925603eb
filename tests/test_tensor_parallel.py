"""TP=2 (two real processes over gloo) equals TP=1: same gradients, same training losses."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from conftest import REPO, free_port, tiny_flat

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)


def _grad_worker(rank, world, port, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    sys.path.insert(0, REPO)
    from megatron.core import parallel_state as ps

    from neox.config import NeoXConfig, _coerce_all, validate
    from neox.launch import distributed
    from neox.model import partition
    from neox.model.llama import LlamaModel

    flat = tiny_flat(model_parallel_size=world, num_gpus=world, vocab_size=101)
    cfg = validate(NeoXConfig.from_flat(_coerce_all(flat)), dry_run=True)
    distributed.init_distributed(world)
    model = LlamaModel(cfg)
    model.init_weights(seed=7)
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 101, (2, 17), generator=gen)
    loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    grads = {}
    group = ps.get_tensor_model_parallel_group()
    for name, p in model.named_parameters():
        parts = [torch.empty_like(p.grad) for _ in range(world)]
        torch.distributed.all_gather(parts, p.grad.contiguous(), group=group)
        full = torch.cat(partition.unshard(parts, name, partition.sizes(cfg.model)))  # HF layout
        grads[name] = partition.strip_vocab(full, name, cfg.model.vocab_size)
    if rank == 0:
        torch.save({"loss": loss.item(), "grads": grads}, out_path)
    distributed.destroy()


def run_grads(world, tmp_path):
    out = str(tmp_path / f"grads_tp{world}.pt")
    mp.start_processes(_grad_worker, args=(world, free_port(), out), nprocs=world, start_method="spawn")
    return torch.load(out)


def test_tp2_gradients_equal_tp1(tmp_path):
    tp1, tp2 = run_grads(1, tmp_path), run_grads(2, tmp_path)
    assert tp1["loss"] == pytest.approx(tp2["loss"], rel=1e-6)
    assert tp1["grads"].keys() == tp2["grads"].keys()
    for name, g1 in tp1["grads"].items():
        g2 = tp2["grads"][name]
        assert g1.shape == g2.shape, name
        scale = g1.abs().max().item()
        assert scale > 0, f"{name} got no gradient"
        assert (g1 - g2).abs().max().item() <= 1e-4 * scale + 1e-7, name


def train_losses(tmp_path, tp, gpus=None, accum=2):
    """10 fp32 steps of smoke.yml with 8 sequences per step, at the given TP and process count."""
    gpus = gpus or tp
    run = tmp_path / f"tp{tp}_gpus{gpus}"
    cmd = [sys.executable, "deepy.py", "train.py", "llemma_configs/smoke.yml",
           "-o", f"model_parallel_size={tp}", "-o", f"num_gpus={gpus}", "-o", "precision=fp32",
           "-o", f"gradient_accumulation_steps={accum}",
           "-o", "train_iters=10", "-o", "lr_decay_iters=10", "-o", f"log_dir={run}/logs",
           "-o", f"save={run}/ckpt", "-o", "eval_iters=0", "-o", "checkpoint_factor=1000",
           "-o", f"data_cache_dir={tmp_path}/index-cache"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with open(run / "logs" / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if '"loss"' in line]


@pytest.fixture(scope="module")
def tp1_run(tmp_path_factory, toy_data):
    return train_losses(tmp_path_factory.mktemp("tp1"), 1)


def assert_same_run(a_run, b_run):
    assert [r["step"] for r in a_run] == [r["step"] for r in b_run] == list(range(1, 11))
    for a, b in zip(a_run, b_run):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), (a, b)
        assert a["consumed_samples"] == b["consumed_samples"]
    assert a_run[-1]["loss"] < a_run[0]["loss"]  # it did train


def test_tp2_training_losses_equal_tp1(tmp_path, tp1_run):
    """Same seed, data and global batch (8 sequences), fp32, ZeRO-1 through DeepSpeed."""
    assert_same_run(tp1_run, train_losses(tmp_path, 2))


def test_dp2_training_losses_equal_dp1(tmp_path, tp1_run):
    """Two data-parallel ranks (ZeRO-1 shards the optimizer over them), one micro-batch each,
    see the same 8 samples per step as one rank with two micro-batches: same losses."""
    assert_same_run(tp1_run, train_losses(tmp_path, 1, gpus=2, accum=1))
