#!/usr/bin/env python
"""Training throughput of our trainer vs. a plain PyTorch loop, Hugging Face transformers and LitGPT.

    python bench/train_throughput.py [--steps 10] [--warmup 2] [--rounds 3] [--tp 1|2]
                                     [--only ours,plain,hf,litgpt] [--set KEY=VALUE ...] [--quick]

One benchmark model for every implementation: Llama, 8 layers, hidden 512, 8 heads (no GQA),
intermediate 1376, vocab 32016, sequence 512, micro batch 4 (2,048 tokens per step), one
optimizer step per micro batch, AdamW (lr 1e-4 constant, betas 0.9/0.95, eps 1e-8, decay 0.1 on
matrices), gradient clipping 1.0. The same synthetic data for all: random token ids < 32016
written as a megatron-core indexed dataset into a temporary directory and read through the
trainer's own dataset code (neox.data.dataset), so every implementation sees the same batches and pays
the same data-fetch cost inside its timed step.

Implementations, each in its own fresh process; a round runs each once, and the rounds interleave:
  ours       `deepy.py train.py <config>`: the real launcher (deepy starts the ranks), trainer, DeepSpeed
             engine (ZeRO-1, bf16 weights, fp32 master weights, fp32 AdamW state, fp32 gradient
             accumulation), the default config (compile_blocks: auto decided as for a run of
             neox.train.speed.COMPILE_MIN_TRAIN_ITERS steps: the benchmark's own few steps would never
             compile). Step times are read from its metrics.jsonl (`step_time_s`).
  ours_tp2   the same with model_parallel_size 2 on 2 processes (only with --tp 2); same global batch.
  plain      neox.model.llama.LlamaModel without DeepSpeed, same precision policy written out by hand:
             bf16 weights and compute, bf16 gradients added into fp32 gradient buffers, clipping and
             fused torch.optim.AdamW (as ours) on fp32 master copies, master copied back into the bf16
             weights; the same model config and process policies as ours (neox.train.speed.apply:
             compile_blocks, the CPU allocator; fused head loss, --set keys). The
             framework-overhead floor for ours (TP=1 megatron-core layers on a 1-process gloo group).
             Master weights and fp32 gradients are flat buffers per parameter group (weights with
             and without decay), as in DeepSpeed's BF16_Optimizer, so AdamW updates 2 tensors.
  hf         transformers.LlamaForCausalLM (random init from LlamaConfig, SDPA attention) the way a
             user runs it with the same policy: fp32 weights, gradients and torch's default AdamW, forward under
             torch.autocast(bfloat16) (matmuls and attention in bf16), loss on fp32 logits, clipping.
  litgpt     LitGPT's GPT and Config (pip install -e '.[bench]'; in the default set when installed)
             trained as litgpt/pretrain.py does: Lightning Fabric, precision bf16-mixed (fp32
             weights, gradients and AdamW state, bf16 autocast), torch.compile of the whole model,
             torch's AdamW (fused only on CUDA, as LitGPT asks), chunked cross entropy, clipping.

Warm-up steps are excluded; a round's step time is the median over its measured steps and
tokens/s = 2,048 / that. Over the rounds every figure is a median, and each ratio (ours_vs_X) is
the median of the ratios within a round, so slow phases of a shared machine cancel. Peak RSS is
the largest process of each run (ours: its rank, not the launcher). FLOPs per token and MFU use
neox.model.flops (6N + 12 L d S, N all parameters incl. the embedding; identical for all models)
against `matmul_peak_tflops`, the best of ten 2048^3 bf16 matmuls measured before and after the
runs with the same thread count (the first is passed to ours as peak_flops_per_gpu; at TP=2 each
process gets half, so all MFUs are against the whole machine). On a CPU the 1-thread peak is
reported too (matmul_peak_tflops_1thread): what each TP=2 process has. `cpu_flags` names the
CPU's bf16 hardware (amx_bf16, avx512_bf16), on which the ratios depend.
--set KEY=VALUE sets a trainer config key (e.g. compile_blocks=false) for ours and plain, which
build the same model from the same config; hf and litgpt are not affected.
Progress goes to stderr; the last stdout line is one JSON object.
Targets (issue 21; measured, not asserted): ours >= 1.2 x litgpt, >= 1.5 x hf, >= 1.0 x plain;
ours' peak RSS <= 1.1 x litgpt's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from neox.train.speed import use_compile_cache  # noqa: E402

use_compile_cache()  # as train.py does (ours and plain share torch's compile cache)

TOKENIZER = os.path.join(REPO, "data", "toy", "tokenizer.model")

# the benchmark model (issue 7) and a tiny one for smoke tests
SHAPES = {
    "bench": dict(num_layers=8, hidden_size=512, num_attention_heads=8, num_kv_heads=8,
                  intermediate_size=1376, seq_length=512, vocab_size=32016, micro_batch=4),
    "quick": dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_kv_heads=4,
                  intermediate_size=172, seq_length=64, vocab_size=32016, micro_batch=4),
}
LR, BETAS, EPS, WEIGHT_DECAY, CLIP, SEED = 1e-4, [0.9, 0.95], 1e-8, 0.1, 1.0, 1234


def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- config and data


def neox_flat(shape: dict, total_steps: int, data_prefix: str, work: str, tp: int = 1,
              peak_flops: float = 312e12, tag: str = "ours") -> dict:
    """The trainer config (flat GPT-NeoX keys) of the benchmark model.

    vocab_size is set explicitly (32016, Code Llama's); vocab_file is still required by the
    trainer (its dataset code takes the EOS id and the cache key from it), so the toy tokenizer
    is named: validate() takes an explicit vocab_size over the tokenizer's (3,001)."""
    s = shape
    return {
        "num_layers": s["num_layers"], "hidden_size": s["hidden_size"],
        "num_attention_heads": s["num_attention_heads"], "num_kv_heads": s["num_kv_heads"],
        "intermediate_size": s["intermediate_size"], "seq_length": s["seq_length"],
        "max_position_embeddings": s["seq_length"], "rotary_emb_base": 10000,
        "vocab_size": s["vocab_size"], "make_vocab_size_divisible_by": 1, "attention_impl": "sdpa",
        "model_parallel_size": tp, "num_gpus": tp,
        "train_micro_batch_size_per_gpu": s["micro_batch"], "gradient_accumulation_steps": 1,
        "train_batch_size": s["micro_batch"],
        "optimizer": {"type": "AdamW", "params": {"lr": LR, "betas": BETAS, "eps": EPS}},
        "weight_decay": WEIGHT_DECAY, "gradient_clipping": CLIP, "zero_optimization": {"stage": 1},
        "precision": "bf16",
        "train_iters": total_steps, "lr_decay_style": "constant", "warmup_iters": 0,
        "train_data_paths": [data_prefix], "vocab_file": TOKENIZER, "tokenizer_type": "SPMTokenizer",
        "data_without_manifest": True,  # synthetic ids below vocab_size, not tokenized text
        "data_cache_dir": os.path.join(work, "index-cache"),
        "log_dir": os.path.join(work, f"logs-{tag}"), "log_interval": 1, "eval_iters": 0,
        "peak_flops_per_gpu": peak_flops, "seed": SEED,
    }


def load_cfg(flat: dict):
    from neox.config import NeoXConfig, _coerce_all, validate

    return validate(NeoXConfig.from_flat(_coerce_all(dict(flat))))


def make_data(prefix: str, shape: dict, total_steps: int, seed: int = SEED) -> int:
    """Random token ids < vocab_size in documents of 1,000-3,000 tokens, as a megatron-core
    MMIDIDX dataset at `prefix` (.bin/.idx), with room for every step (plus margin)."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    need = 2 * total_steps * shape["micro_batch"] * (shape["seq_length"] + 1) + 10_000
    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    written = 0
    while written < need:
        doc = rng.integers(3, shape["vocab_size"], size=int(rng.integers(1000, 3000)), dtype=np.uint16)
        builder.add_document(doc, [doc.size])
        written += doc.size
    builder.finalize(prefix + ".idx")
    return written


def ensure_tokenizer():
    if not os.path.isfile(TOKENIZER):
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_toy_data.py")], check=True,
                       cwd=REPO, stdout=sys.stderr)


# ----------------------------------------------------------------------------- peak


def matmul_peak_tflops(n: int = 2048, repeats: int = 5) -> float:
    """Best of `repeats` n^3 bf16 matmuls (after one untimed), in TFLOP/s."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e12


# ----------------------------------------------------------------------------- in-process loops
# Each builder returns step(i) -> (loss, grad_norm); one call = one optimizer step on micro batch
# i. Regions are marked with record_function for bench/profile_step.py (free when not profiling).


def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def train_dataset(cfg):
    from neox.data.dataset import SentencePieceTokenizer, build_train_dataset

    return build_train_dataset(cfg, SentencePieceTokenizer(cfg.data.vocab_file))


def _fetch(train_set, cfg, i, device):
    from torch.profiler import record_function

    from neox.data.dataset import get_micro_batch

    micro = cfg.batch.train_micro_batch_size_per_gpu
    with record_function("bench::data"):
        b = get_micro_batch(train_set, i, 0, 0, micro, 1, micro)
        return {k: v.to(device, non_blocking=True) for k, v in b.items()}


def _param_groups(named_params):
    """Decay on matrices, none on norm weights (as neox.train.engine.build_optimizer)."""
    decay, no_decay = [], []
    for _, p in named_params:
        (no_decay if p.dim() == 1 else decay).append(p)
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


def init_single_process_group():
    """A 1-process gloo (or nccl) group with megatron-core parallel state at TP=1."""
    from neox.launch import distributed
    from neox.launch.ports import free_port

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    distributed.init_distributed(1)


def build_plain(cfg):
    """neox.model.llama.LlamaModel with DeepSpeed's bf16 policy written out (no DeepSpeed)."""
    import torch
    from torch.profiler import record_function

    from neox.model.llama import LlamaModel
    from neox.train import speed

    device = _device()
    train_set = train_dataset(cfg)
    cfg, lines = speed.apply(cfg, device)  # the trainer's process policies (compile_blocks, allocator)
    for line in lines:
        log(f"  plain: {line}")
    torch.manual_seed(SEED)
    model = LlamaModel(cfg)
    model.init_weights(SEED)
    model = model.to(device=device, dtype=torch.bfloat16)  # as DeepSpeed's engine does with bf16
    model.train()
    # DeepSpeed's BF16_Optimizer layout: per parameter group one flat fp32 master tensor and one
    # flat fp32 gradient buffer; each bf16 weight has views into both. AdamW sees 2 tensors.
    groups = _param_groups(model.named_parameters())
    params, master_views, grad_views, flat_params, flat_grads = [], [], [], [], []
    for g in groups:
        flat = torch.cat([p.detach().float().flatten() for p in g["params"]]).requires_grad_(True)
        flat.grad = torch.zeros_like(flat)
        offset = 0
        for p in g["params"]:
            master_views.append(flat.detach()[offset: offset + p.numel()].view_as(p))
            grad_views.append(flat.grad[offset: offset + p.numel()].view_as(p))
            params.append(p)
            offset += p.numel()
        flat_params.append(flat)
        flat_grads.append(flat.grad)
        g["params"] = [flat]
    opt = torch.optim.AdamW(groups, lr=LR, betas=tuple(BETAS), eps=EPS, fused=True)  # as ours

    def step(i):
        batch = _fetch(train_set, cfg, i, device)
        with record_function("bench::forward"):
            loss = model(batch["tokens"], batch["labels"], batch["loss_mask"])
        with record_function("bench::backward"):
            loss.backward()
        with record_function("bench::grad_accum_fp32"):
            for p, g in zip(params, grad_views):
                g.add_(p.grad)  # bf16 -> fp32 accumulate
                p.grad = None
        with record_function("bench::optimizer"):
            # norm per parameter, then of the norms: torch's fp32 norm of one 40M-element CPU tensor
            # is off by ~0.3% (accumulation error); DeepSpeed's is not
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grad_views)))
            torch._foreach_mul_(flat_grads, torch.clamp(CLIP / (norm + 1e-6), max=1.0))
            opt.step()
            with torch.no_grad():
                torch._foreach_copy_(params, master_views)  # fp32 master -> bf16 weights
            for g in flat_grads:
                g.zero_()
        return loss.item(), float(norm)

    return step


def hf_model(cfg):
    import transformers

    m = cfg.model
    config = transformers.LlamaConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_kv_heads, max_position_embeddings=m.max_position_embeddings,
        rms_norm_eps=m.rms_norm_epsilon, rope_theta=m.rotary_emb_base, tie_word_embeddings=False,
        initializer_range=m.init_method_std, use_cache=False, attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(config)


def build_hf(cfg):
    """transformers.LlamaForCausalLM: fp32 weights and AdamW, bf16 autocast compute."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import record_function

    device = _device()
    train_set = train_dataset(cfg)
    torch.manual_seed(SEED)
    model = hf_model(cfg).to(device)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model.named_parameters()), lr=LR, betas=tuple(BETAS), eps=EPS)
    params = list(model.parameters())

    def step(i):
        batch = _fetch(train_set, cfg, i, device)
        with record_function("bench::forward"):
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                logits = model(input_ids=batch["tokens"]).logits
            # labels are already the next tokens (our dataset); HF's own loss would shift again
            per_token = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(),
                                        reduction="none")
            mask = batch["loss_mask"].flatten().float()
            loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
        with record_function("bench::backward"):
            loss.backward()
        with record_function("bench::optimizer"):
            norm = torch.nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.item(), float(norm)

    return step


def litgpt_config(cfg):
    """LitGPT's Config for the benchmark model (its Llama-2 layout: RMSNorm, LLaMAMLP, no biases)."""
    from litgpt import Config

    m = cfg.model
    return Config(block_size=m.seq_length, vocab_size=m.vocab_size, padded_vocab_size=m.vocab_size,
                  n_layer=m.num_layers, n_head=m.num_attention_heads, n_embd=m.hidden_size,
                  n_query_groups=m.num_kv_heads, rotary_percentage=1.0, parallel_residual=False,
                  bias=False, norm_class_name="RMSNorm", norm_eps=m.rms_norm_epsilon,
                  mlp_class_name="LLaMAMLP", intermediate_size=m.intermediate_size, rope_base=m.rotary_emb_base)


def build_litgpt(cfg):
    """LitGPT's GPT trained the way its pretraining script (litgpt/pretrain.py) does it: Lightning
    Fabric with precision bf16-mixed (fp32 weights, gradients and AdamW state, bf16 autocast),
    torch.compile of the whole model, torch's AdamW (fused only on CUDA, as LitGPT asks),
    LitGPT's chunked cross entropy, fabric.clip_gradients."""
    import lightning as L
    import torch
    from litgpt import GPT
    from litgpt.pretrain import initialize_weights
    from litgpt.utils import chunked_cross_entropy
    from torch.profiler import record_function

    device = _device()
    train_set = train_dataset(cfg)
    fabric = L.Fabric(devices=1, accelerator="cuda" if device == "cuda" else "cpu", precision="bf16-mixed")
    fabric.seed_everything(SEED)
    config = litgpt_config(cfg)
    with fabric.init_module(empty_init=True):
        model = GPT(config)
    initialize_weights(fabric, model, n_layer=config.n_layer, n_embd=config.n_embd)
    model = fabric.setup(torch.compile(model))
    opt = torch.optim.AdamW(_param_groups(model.named_parameters()), lr=LR, betas=tuple(BETAS), eps=EPS,
                            fused=device == "cuda")
    opt = fabric.setup_optimizers(opt)

    def step(i):
        batch = _fetch(train_set, cfg, i, device)
        with record_function("bench::forward"):
            loss = chunked_cross_entropy(model(batch["tokens"]), batch["labels"])
        with record_function("bench::backward"):
            fabric.backward(loss)
        with record_function("bench::optimizer"):
            norm = fabric.clip_gradients(model, opt, max_norm=CLIP)
            opt.step()
            opt.zero_grad()
        return loss.item(), float(norm)

    return step


BUILDERS = {"plain": "build_plain", "hf": "build_hf", "litgpt": "build_litgpt"}


def run_worker(impl: str, flat: dict, total_steps: int) -> dict:
    """In a fresh process: build, then time total_steps steps (perf_counter around each step)."""
    import torch

    t_start = time.perf_counter()
    if impl == "plain":
        init_single_process_group()
    cfg = load_cfg(flat)
    step = globals()[BUILDERS[impl]](cfg)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    setup_s = time.perf_counter() - t_start
    times, losses, norms = [], [], []
    for i in range(total_steps):
        sync()
        t0 = time.perf_counter()
        loss, norm = step(i)
        sync()
        times.append(time.perf_counter() - t0)
        losses.append(loss)
        norms.append(norm)
        log(f"  {impl} step {i + 1}/{total_steps}: {times[-1]:.3f} s, loss {loss:.4f}, grad_norm {norm:.3f}")
    if impl == "plain":
        from neox.launch import distributed

        distributed.destroy()
    return {"step_time_s": times, "loss": losses, "grad_norm": norms, "setup_s": setup_s,
            "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------- launching


# Runs the command given after it and writes the peak RSS (KiB) of its largest process, itself or
# any descendant it waited for (deepy.py waits for its ranks), to the file named first.
RSS_WRAPPER = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
               "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
               "sys.exit(rc)")


def _stream(cmd, env, log_path, prefix, echo):
    """Run cmd, its output to log_path; lines for which echo(line) is true also to stderr. Returns
    its output lines and its peak RSS in MiB."""
    rss_path = log_path + ".rss"
    cmd = [sys.executable, "-c", RSS_WRAPPER, rss_path, *cmd]
    with open(log_path, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        lines = []
        for line in proc.stdout:
            f.write(line)
            lines.append(line)
            if echo(line):
                log(f"  {prefix}: {line.rstrip()}")
        rc = proc.wait()
    if rc != 0:
        tail = "".join(lines[-40:])
        raise RuntimeError(f"{prefix} failed with exit status {rc}; log {log_path}; last lines:\n{tail}")
    with open(rss_path) as f:
        return lines, int(f.read()) / 1024


def run_ours(flat: dict, work: str, tag: str) -> dict:
    import yaml

    cfg_path = os.path.join(work, f"{tag}.yml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(flat, f)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    _, rss = _stream([sys.executable, os.path.join(REPO, "deepy.py"), os.path.join(REPO, "train.py"), cfg_path],
                     env, os.path.join(work, f"{tag}.log"), tag,
                     lambda line: line.startswith(("step ", "error", "Traceback")))
    wall = time.perf_counter() - t0
    with open(os.path.join(flat["log_dir"], "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    rows = [r for r in rows if "step_time_s" in r]
    return {"step_time_s": [r["step_time_s"] for r in rows], "loss": [r["loss"] for r in rows],
            "grad_norm": [r["grad_norm"] for r in rows], "mfu_logged": [r["mfu"] for r in rows],
            "wall_s": wall, "peak_rss_mib": rss}


def run_in_process_impl(impl: str, flat: dict, work: str, total_steps: int, threads: int) -> dict:
    spec = os.path.join(work, f"{impl}.json")
    with open(spec, "w") as f:
        json.dump({"flat": flat, "total_steps": total_steps}, f)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    lines, rss = _stream([sys.executable, os.path.abspath(__file__), "--worker", impl, "--spec", spec], env,
                         os.path.join(work, f"{impl}.log"), impl, lambda line: line.startswith(f"  {impl} step"))
    result = json.loads(lines[-1])
    result["peak_rss_mib"] = rss
    result["wall_s"] = time.perf_counter() - t0
    return result


def summarize(result: dict, warmup: int, tokens_per_step: int, flops_per_token: float, peak_tflops: float):
    measured = result["step_time_s"][warmup:]
    med = statistics.median(measured)
    tps = tokens_per_step / med
    return {"tokens_per_sec": tps, "step_time_s": med, "step_time_mean_s": statistics.fmean(measured),
            "step_time_min_s": min(measured), "step_time_max_s": max(measured),
            "mfu": tps * flops_per_token / (peak_tflops * 1e12)}


KEYS = {"ours": "ours", "ours_tp2": "ours_tp2", "plain": "plain_torch", "hf": "hf", "litgpt": "litgpt"}
IMPLS = ("ours", "plain", "hf", "litgpt")


def aggregate(rounds: dict) -> dict:
    """Medians over the rounds: each implementation's tokens/s, step time, MFU and peak RSS, and
    each ratio of ours to another taken within a round (the machine's drift cancels in a ratio)."""
    out = {}
    med = statistics.median
    for name, rs in rounds.items():
        k = KEYS[name]
        for field in ("tokens_per_sec", "step_time_s", "step_time_mean_s", "mfu"):
            out[f"{k}_{field}"] = med(r["summary"][field] for r in rs)
        out[f"{k}_peak_rss_mib"] = med(r["peak_rss_mib"] for r in rs)
    if "ours" in rounds:
        out["ours_mfu_logged"] = med(med(r["mfu_logged"]) for r in rounds["ours"])
        for other in ("hf", "plain", "litgpt", "ours_tp2"):
            if other not in rounds:
                continue
            num, den = (other, "ours") if other == "ours_tp2" else ("ours", other)
            ratios = [a["summary"]["tokens_per_sec"] / b["summary"]["tokens_per_sec"]
                      for a, b in zip(rounds[num], rounds[den])]
            key = "ours_tp2_vs_ours" if other == "ours_tp2" else f"ours_vs_{KEYS[other]}"
            out[key] = med(ratios)
            out[f"{key}_per_round"] = [round(x, 3) for x in ratios]
        if "litgpt" in rounds:
            out["ours_peak_rss_vs_litgpt"] = out["ours_peak_rss_mib"] / out["litgpt_peak_rss_mib"]
    if "plain" in rounds and "hf" in rounds:
        out["plain_torch_vs_hf"] = out["plain_torch_tokens_per_sec"] / out["hf_tokens_per_sec"]
    if "ours" in rounds and "plain" in rounds:  # same model, data and policy: the losses should agree
        out["loss_max_abs_diff_plain_vs_ours"] = max(
            abs(a - b) for a, b in zip(rounds["ours"][0]["loss"], rounds["plain"][0]["loss"]))
    return out


def cpu_flags() -> list:
    """The bf16 hardware of this CPU (the ratios depend on it): amx_bf16, avx512_bf16, or neither."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted({"amx_bf16", "avx512_bf16"} & set(flags))


def litgpt_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("litgpt") is not None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="measured steps per implementation")
    p.add_argument("--warmup", type=int, default=2, help="steps run first and not measured")
    p.add_argument("--tp", type=int, choices=(1, 2), default=1,
                   help="1 (default): ours at TP=1; 2: also ours at TP=2 (2 processes)")
    p.add_argument("--only", default=None,
                   help="comma-separated subset of ours,plain,hf,litgpt (default: all; litgpt when installed)")
    p.add_argument("--rounds", type=int, default=3,
                   help="run every implementation this many times, interleaved, and report medians (default 3)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="trainer config key for ours and plain (YAML value), e.g. compile_blocks=true")
    p.add_argument("--quick", action="store_true", help="tiny model (smoke test, numbers meaningless)")
    p.add_argument("--work-dir", default=None, help="default: a temporary directory, removed afterwards")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs, data)")
    p.add_argument("--worker", choices=("plain", "hf", "litgpt"), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:  # child process: one in-process implementation
        with open(args.spec) as f:
            spec = json.load(f)
        print(json.dumps(run_worker(args.worker, spec["flat"], spec["total_steps"])), flush=True)
        return 0

    if args.only is None:
        impls = [i for i in IMPLS if i != "litgpt" or litgpt_available()]
        if "litgpt" not in impls:
            log("warning: litgpt is not installed (pip install -e '.[bench]'), so its run is left out")
    else:
        impls = [x.strip() for x in args.only.split(",") if x.strip()]
        if set(impls) - set(IMPLS) or not impls:
            p.error(f"--only: choose from {', '.join(IMPLS)}; got {args.only!r}")
        if "litgpt" in impls and not litgpt_available():
            p.error("--only litgpt: litgpt is not installed; pip install -e '.[bench]' (see bench/README.md)")
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        p.error("--steps and --rounds must be >= 1 and --warmup >= 0")
    shape = SHAPES["quick" if args.quick else "bench"]
    total = args.warmup + args.steps
    import yaml

    from neox.config import KEY_TO_SECTION, _unknown_key_error, normalize_key

    settings = {}
    for item in args.set:
        key, eq, value = item.partition("=")
        key = normalize_key(key.strip())
        if not eq or not key:
            p.error(f"--set wants KEY=VALUE, got {item!r}")
        if key not in KEY_TO_SECTION:
            p.error(str(_unknown_key_error(key, "--set")))
        settings[key] = yaml.safe_load(value)
    from neox.config import ConfigError, NeoXConfig, _coerce_all, validate

    try:  # the values too, before anything is measured
        validate(NeoXConfig.from_flat(_coerce_all({**neox_flat(shape, total, "unused", "unused"), **settings})),
                 dry_run=True)
    except ConfigError as e:
        p.error(f"--set: {e}")
    if "compile_blocks" not in settings:
        # The default config's compile_blocks: auto, decided as for a real run (the benchmark's few
        # steps are far below the threshold and would always run eager)
        from neox.train.speed import COMPILE_MIN_TRAIN_ITERS, compile_blocks_of_a_long_run

        settings["compile_blocks"], why = compile_blocks_of_a_long_run(_device())
        log(f"compile_blocks: auto -> {str(settings['compile_blocks']).lower()} for ours and plain, as in a run "
            f"of {COMPILE_MIN_TRAIN_ITERS}+ steps ({why.removeprefix('auto: ')})")
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)

    import torch

    reps = 2 if args.quick else 10
    peak_1thread = None
    if threads > 1 and not torch.cuda.is_available():  # what each of the TP=2 processes has
        torch.set_num_threads(1)
        peak_1thread = matmul_peak_tflops(repeats=reps)
    torch.set_num_threads(threads)
    peak = matmul_peak_tflops(repeats=reps)
    log(f"matmul peak (bf16 2048^3, {threads} threads): {peak * 1e3:.1f} GFLOP/s" +
        (f"; 1 thread: {peak_1thread * 1e3:.1f} GFLOP/s" if peak_1thread else ""))

    ensure_tokenizer()
    work = args.work_dir or tempfile.mkdtemp(prefix="train_bench_")
    os.makedirs(work, exist_ok=True)
    try:
        prefix = os.path.join(work, "data", "synthetic_text_document")
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        n_tokens = make_data(prefix, shape, total)
        log(f"synthetic data: {n_tokens:,} random tokens < {shape['vocab_size']} in {prefix}")
        flat = {**neox_flat(shape, total, prefix, work, peak_flops=peak * 1e12), **settings}
        cfg = load_cfg(flat)  # also validates the --set keys before anything runs
        from neox.model.flops import flops_per_token, parameter_count

        fpt = flops_per_token(cfg)
        tokens_per_step = shape["micro_batch"] * shape["seq_length"]
        log(f"model: {json.dumps(shape)}; {parameter_count(cfg):,} parameters, {fpt / 1e6:.1f} MFLOP/token, "
            f"{tokens_per_step} tokens/step; {args.warmup} warm-up + {args.steps} measured steps")

        plan = [(i, 1) for i in impls]
        if "ours" in impls and args.tp == 2:
            plan.append(("ours", 2))
        rounds = {}  # name -> one result per round; the rounds interleave the implementations
        for rnd in range(args.rounds):
            for impl, tp in plan:
                name = impl if tp == 1 else f"{impl}_tp{tp}"
                log(f"running {name}" + (f" (round {rnd + 1}/{args.rounds})" if args.rounds > 1 else "") + " ...")
                if impl == "ours":
                    tag = name + (f"-r{rnd}" if rnd else "")
                    f2 = {**neox_flat(shape, total, prefix, work, tp=tp, peak_flops=peak * 1e12 / tp, tag=tag),
                          **settings}
                    r = run_ours(f2, work, tag)
                else:
                    r = run_in_process_impl(impl, flat, work, total, threads)
                r["summary"] = s = summarize(r, args.warmup, tokens_per_step, fpt, peak)  # MFU redone below
                log(f"{name}: median step {s['step_time_s']:.3f} s, {s['tokens_per_sec']:,.0f} tokens/s, "
                    f"MFU {100 * s['mfu']:.1f}%, peak RSS {r['peak_rss_mib']:,.0f} MiB "
                    f"(process wall {r['wall_s']:.1f} s)")
                rounds.setdefault(name, []).append(r)

        # A neighbour on a shared machine can slow the first peak measurement: measure again after
        # the runs and keep the better one for every MFU (the per-round summaries are redone)
        peak_after = matmul_peak_tflops(repeats=reps)
        log(f"matmul peak after the runs: {peak_after * 1e3:.1f} GFLOP/s")
        peak = max(peak, peak_after)
        for rs in rounds.values():
            for r in rs:
                r["summary"] = summarize(r, args.warmup, tokens_per_step, fpt, peak)
        out = {"quick": args.quick, "model": shape, "settings": settings, "steps": args.steps, "warmup": args.warmup,
               "rounds": args.rounds, "cpu_flags": cpu_flags(),
               "statistic": "per round: median step_time_s of the measured steps; over rounds: median "
                            "(tokens/s, MFU, peak RSS, and each ratio of two implementations in the same round)",
               "tokens_per_step": tokens_per_step,
               "threads": threads, "num_parameters": parameter_count(cfg), "flops_per_token": fpt,
               "matmul_peak_tflops": peak, "matmul_peak_tflops_1thread": peak_1thread}
        out.update(aggregate(rounds))
        out["step_times_s"] = {KEYS[n]: [[round(t, 4) for t in r["step_time_s"]] for r in rs] for n, rs in rounds.items()}
        out["losses"] = {KEYS[n]: [round(x, 4) for x in rs[0]["loss"]] for n, rs in rounds.items()}
        out["process_wall_s"] = {KEYS[n]: [round(r["wall_s"], 1) for r in rs] for n, rs in rounds.items()}
        print(json.dumps(out))
    finally:
        if args.keep:
            log(f"kept {work}")
        elif not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
