#!/usr/bin/env python
"""Output head + loss, forward and backward: the fused chunked path against the unfused one.

    python bench/head_loss.py [--tokens 2048] [--hidden 512] [--vocab 32016] [--repeats 6]

The benchmark model's head by default (2,048 tokens, hidden 512, vocab 32,016, bf16, TP=1):
  unfused   lm_head GEMM, logits.float(), megatron's vocab_parallel_cross_entropy, backward
  fused     neox.model.head_loss.head_loss (fused_head_loss: true), backward
Each runs in its own process: time is the median of --repeats forward + backward passes after one
untimed; peak is the process's peak RSS above its RSS just before the first pass (inputs, weight
and libraries already loaded), so it counts what the pass allocates. The last stdout line is one
JSON object with both and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(impl: str, tokens: int, hidden: int, vocab: int, repeats: int) -> dict:
    import torch

    sys.path.insert(0, os.path.join(REPO, "bench"))
    from train_throughput import init_single_process_group

    init_single_process_group()
    from megatron.core import tensor_parallel as mtp

    from neox.model.head_loss import head_loss

    gen = torch.Generator().manual_seed(0)
    hidden_states = torch.randn(1, tokens, hidden, generator=gen).bfloat16()
    weight = (torch.randn(vocab, hidden, generator=gen) * 0.02).bfloat16().requires_grad_(True)
    labels = torch.randint(0, vocab, (1, tokens), generator=gen)

    def one_pass():
        h = hidden_states.clone().requires_grad_(True)
        if impl == "fused":
            loss = head_loss(h, weight, labels, None, valid_local=vocab)
        else:
            logits = torch.matmul(h, weight.t())
            loss = mtp.vocab_parallel_cross_entropy(logits.float(), labels).mean()
        loss.backward()
        weight.grad = None
        return loss.item()

    base = rss_mb()
    loss = one_pass()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"time_s": statistics.median(times), "times_s": [round(t, 4) for t in times],
            "peak_above_start_mb": peak - base, "loss": loss}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32016)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--worker", choices=("fused", "unfused"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.tokens, args.hidden, args.vocab, args.repeats) < 1:
        p.error("--tokens, --hidden, --vocab and --repeats must be >= 1")
    if args.worker:
        print(json.dumps(worker(args.worker, args.tokens, args.hidden, args.vocab, args.repeats)))
        return 0
    out = {"tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab, "dtype": "bf16",
           "statistic": "median time of forward + backward; peak RSS above the start of the passes"}
    for impl in ("unfused", "fused"):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--tokens", str(args.tokens),
               "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--repeats", str(args.repeats)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{impl} failed:\n{r.stderr[-3000:]}")
        out[impl] = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{impl}: {out[impl]['time_s']:.3f} s, peak +{out[impl]['peak_above_start_mb']:.0f} MB",
              file=sys.stderr)
    out["fused_vs_unfused_time"] = out["fused"]["time_s"] / out["unfused"]["time_s"]
    out["fused_vs_unfused_peak"] = out["fused"]["peak_above_start_mb"] / out["unfused"]["peak_above_start_mb"]
    out["loss_abs_diff"] = abs(out["fused"]["loss"] - out["unfused"]["loss"])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
