#!/usr/bin/env python
"""Where a training step of the benchmark model spends its time (torch.profiler).

    python bench/profile_step.py [--impl ours|plain|hf] [--steps 3] [--warmup 1] [--eager] [--quick] [--top 25]

Same model, data and settings as bench/train_throughput.py, in this one process (TP=1):
  ours   (default) neox.model.llama.LlamaModel on the DeepSpeed engine exactly as neox.train.trainer.train
         builds it (our AdamW, deepspeed_config(cfg): ZeRO-1, bf16, fp32 gradient accumulation,
         the megatron-core mpu), and the trainer's step mirrored line by line: set the LR, fetch
         the micro batch, engine(...), engine.backward, engine.step, loss to CPU with the
         data-parallel all-reduce, get_global_grad_norm. Not the deepy.py launch (one process,
         nothing to launch), so start-up and launcher effects are not in here.
  plain  the plain PyTorch loop of train_throughput.py (our model, same bf16 policy, no DeepSpeed)
  hf     transformers.LlamaForCausalLM with bf16 autocast, as in train_throughput.py

The warm-up steps run unprofiled, then --steps steps run under torch.profiler. Each profiled op's
self time is put in one bucket, decided by the op and the ops and regions around it:
  data           anything inside the record_function region around the batch fetch
  optimizer      anything inside the optimizer region (ours: engine.step(): grad norm, clipping,
                 AdamW on the fp32 master weights, copy back to bf16; the same work in plain/hf)
  grad_accum     adding the bf16 gradients into the fp32 gradient buffers (ours: DeepSpeed's
                 BF16_Optimizer.update_hp_grads at the end of engine.backward; plain: its own loop;
                 hf: none, its gradients are fp32 already)
  attention      scaled_dot_product_attention and its backward, with everything inside them
  communication  collectives (all_reduce, gloo/nccl work; at TP=1 the trainer's loss all-reduce
                 over data parallel, and with fused_head_loss: false megatron's vocab-parallel
                 cross entropy over its 1-rank group)
  matmul         aten::mm/addmm/bmm/matmul/linear (with the layout copies they do inside)
  elementwise    every other aten op: RMSNorm, SiLU and the gate product, rotary, residual adds,
                 dtype casts, embedding, cross entropy, autograd's gradient sums
  other          the rest of the step's wall time: Python, framework code between ops (DeepSpeed
                 engine, hooks, autograd engine bookkeeping), profiler overhead
Shares are fractions of the profiled steps' wall time and sum to 1 (other is the remainder).
On a GPU the buckets use the ops' device (kernel) time instead (not tried: this was written on a
CPU-only machine). The per-phase split (data/forward/backward/grad_accum/optimizer/rest of
step) and the top ops by self time go to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput as tt  # noqa: E402

BUCKETS = ["matmul", "attention", "elementwise", "grad_accum", "optimizer", "communication", "data", "other"]
REGIONS = {"bench::data": "data", "bench::optimizer": "optimizer", "bench::grad_accum_fp32": "grad_accum"}
PHASES = ["bench::data", "bench::forward", "bench::backward", "bench::grad_accum_fp32", "bench::optimizer"]
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
              "aten::_addmm_activation"}


def is_attention(name: str) -> bool:
    n = name.lower()
    return "scaled_dot_product" in n or "scaleddotproduct" in n or "flash_attn" in n or "flashattn" in n


def is_communication(name: str) -> bool:
    n = name.lower()
    return any(k in n for k in ("all_reduce", "allreduce", "all_gather", "allgather", "reduce_scatter",
                                "broadcast", "gloo", "nccl", "c10d::", "barrier"))


def classify(chain: list[str]) -> str:
    """Bucket of the innermost op of `chain` (names from the outermost region to the op)."""
    for name in chain:
        if name in REGIONS:
            return REGIONS[name]
    for name in chain:
        if is_attention(name):
            return "attention"
        if is_communication(name):
            return "communication"
    if any(name in MATMUL_OPS for name in chain):
        return "matmul"
    if chain[-1].startswith("aten::"):
        return "elementwise"
    return "other"


# ----------------------------------------------------------------------------- the step under test


def build_ours(cfg):
    """Our model on the DeepSpeed engine, built as neox.train.trainer.train builds it; the returned
    step mirrors one iteration of its loop (gradient_accumulation_steps = 1)."""
    import torch
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from megatron.core import parallel_state as ps
    from torch.profiler import record_function

    from neox.data.dataset import get_micro_batch
    from neox.model.llama import LlamaModel
    from neox.train.engine import build_engine, seed_everything, set_lr
    from neox.train.lr_schedule import lr_for_config
    from neox.train.validation import dp_mean

    # label DeepSpeed's fp32 gradient accumulation (the end of engine.backward) for the profile
    original = BF16_Optimizer.update_hp_grads

    def update_hp_grads(self, *a, **k):
        with record_function("bench::grad_accum_fp32"):
            return original(self, *a, **k)

    BF16_Optimizer.update_hp_grads = update_hp_grads

    from neox.train import speed

    cfg, lines = speed.apply(cfg, tt._device())  # as the trainer: compile_blocks, the CPU allocator
    for line in lines:
        tt.log(line)
    seed_everything(cfg.misc.seed)
    model = LlamaModel(cfg)
    model.init_weights(cfg.misc.seed)
    engine = build_engine(cfg, model)
    assert isinstance(engine.optimizer, BF16_Optimizer), type(engine.optimizer)
    train_set = tt.train_dataset(cfg)
    micro, dp = cfg.batch.train_micro_batch_size_per_gpu, cfg.data_parallel_size
    accum, global_batch = cfg.batch.gradient_accumulation_steps, cfg.batch.train_batch_size
    dp_rank = ps.get_data_parallel_rank()

    def step(i):
        set_lr(engine, lr_for_config(cfg, i + 1))
        loss_sum = torch.zeros(1)
        for j in range(accum):
            with record_function("bench::data"):
                batch = get_micro_batch(train_set, i, j, dp_rank, micro, dp, global_batch)
            with record_function("bench::forward"):
                loss = engine(batch["tokens"], batch["labels"], batch["loss_mask"])
            with record_function("bench::backward"):
                engine.backward(loss)
            with record_function("bench::optimizer"):
                engine.step()
            loss_sum += loss.detach().float().cpu()
        loss_mean = (dp_mean(loss_sum) / accum).item()
        grad_norm = engine.get_global_grad_norm()
        return loss_mean, float(grad_norm) if grad_norm is not None else float("nan")

    return step


# ----------------------------------------------------------------------------- analysis


def analyse(prof, use_device: bool):
    """Per-bucket and per-phase times (us) of the events under the bench::step regions."""
    events = prof.events()
    steps = [e for e in events if e.name == "bench::step"]
    wall = sum(e.cpu_time_total for e in steps)
    buckets, phases, ops = defaultdict(float), defaultdict(float), defaultdict(lambda: [0.0, 0])
    for name in PHASES + ["rest"]:
        phases[name.replace("bench::", "")] = 0.0

    def chain_of(e):
        names = []
        while e is not None:
            names.append(e.name)
            e = e.cpu_parent
        return names[::-1]

    for e in events:
        if getattr(e, "device_type", None) is not None and "CPU" not in str(e.device_type):
            continue  # kernel events: counted through the CPU op that launched them
        chain = chain_of(e)
        if chain[0] != "bench::step" or e.name == "bench::step":
            continue
        # phases: CPU self time (incl. Python between ops) by the innermost bench:: region
        phase = next((n for n in reversed(chain[1:]) if n in PHASES), "rest")
        phases[phase.replace("bench::", "")] += e.self_cpu_time_total
        t = e.self_device_time_total if use_device else e.self_cpu_time_total
        if e.name.startswith("bench::") and not t:
            continue
        bucket = classify(chain[1:])
        buckets[bucket] += t
        op = ops[(e.name, bucket, phase.replace("bench::", ""))]
        op[0] += t
        op[1] += 1
    buckets["other"] += max(0.0, wall - sum(buckets.values()))
    phases["rest"] += max(0.0, wall - sum(phases.values()))
    return wall, buckets, phases, ops


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", choices=("ours", "plain", "hf"), default="ours")
    p.add_argument("--steps", type=int, default=3, help="profiled steps")
    p.add_argument("--warmup", type=int, default=1, help="unprofiled steps first")
    p.add_argument("--quick", action="store_true", help="tiny model (smoke test)")
    p.add_argument("--eager", action="store_true", help="ours/plain: compile_blocks false (default: auto, "
                   "decided as for a long run)")
    p.add_argument("--top", type=int, default=25, help="ops listed on stderr")
    p.add_argument("--trace", default=None, help="also write a Chrome trace to this file")
    args = p.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    tt.ensure_tokenizer()
    shape = tt.SHAPES["quick" if args.quick else "bench"]
    total = args.warmup + args.steps
    work = tempfile.mkdtemp(prefix="profile_step_")
    try:
        prefix = os.path.join(work, "data", "synthetic_text_document")
        os.makedirs(os.path.dirname(prefix))
        tt.make_data(prefix, shape, total)
        if args.impl in ("ours", "plain"):
            tt.init_single_process_group()
        cfg = tt.load_cfg(tt.neox_flat(shape, total, prefix, work))
        if args.impl in ("ours", "plain"):  # compile_blocks: auto as in a long run (train_throughput.py)
            from neox.train.speed import compile_blocks_of_a_long_run

            compile_blocks = not args.eager and compile_blocks_of_a_long_run(tt._device())[0]
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, compile_blocks=compile_blocks))
        build = {"ours": build_ours, "plain": tt.build_plain, "hf": tt.build_hf}[args.impl]
        step = build(cfg)
        use_device = torch.cuda.is_available()
        sync = torch.cuda.synchronize if use_device else (lambda: None)
        for i in range(args.warmup):
            t0 = time.perf_counter()
            loss, _ = step(i)
            tt.log(f"warm-up step {i + 1}: {time.perf_counter() - t0:.3f} s, loss {loss:.4f}")
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if use_device else [])
        times = []
        with profile(activities=activities) as prof:
            for i in range(args.warmup, total):
                t0 = time.perf_counter()
                with record_function("bench::step"):
                    loss, _ = step(i)
                    sync()
                times.append(time.perf_counter() - t0)
                tt.log(f"profiled step {i + 1}: {times[-1]:.3f} s, loss {loss:.4f}")
        if args.trace:
            prof.export_chrome_trace(args.trace)
        wall, buckets, phases, ops = analyse(prof, use_device)
        if args.impl in ("ours", "plain"):
            from neox.launch import distributed

            distributed.destroy()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = args.steps
    tt.log(f"\n{args.impl}: {n} profiled steps, {wall / n / 1e3:.1f} ms per step (profiler on)")
    tt.log("phases (share of step wall time): " + ", ".join(f"{k} {v / wall:.3f}" for k, v in phases.items()))
    tt.log(f"{'op':<60} {'bucket':<13} {'phase':<10} {'calls/step':>10} {'ms/step':>9} {'share':>6}")
    for (name, bucket, phase), (t, calls) in sorted(ops.items(), key=lambda kv: -kv[1][0])[: args.top]:
        tt.log(f"{name[:60]:<60} {bucket:<13} {phase:<10} {calls / n:>10.0f} {t / n / 1e3:>9.2f} {t / wall:>6.3f}")
    shares = {b: buckets.get(b, 0.0) / wall for b in BUCKETS}
    out = {"impl": args.impl, "quick": args.quick, "steps": n, "warmup": args.warmup, "model": shape,
           "threads": threads, "step_time_s": wall / n / 1e6,
           "step_times_s": [round(t, 4) for t in times], "time_base": "device" if use_device else "cpu",
           "shares": shares, "sum_of_shares": sum(shares.values()),
           "ms_per_step": {b: buckets.get(b, 0.0) / n / 1e3 for b in BUCKETS},
           "phases": {k: v / wall for k, v in phases.items()}}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
