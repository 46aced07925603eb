#!/usr/bin/env python
"""Wall time and peak RSS of building the Llemma 7B blended sample index at full scale.

    python bench/index_build_scale.py [--work-dir DIR] [--keep]

Writes synthetic megatron-core MMIDIDX datasets with Proof-Pile-2-like sizes (the .idx files
are real, with seeded lognormal document lengths; the .bin files are sparse, so no token data
is written and reads return zeros), then builds the training dataset exactly as the trainer
does (neox.data.dataset.build_train_dataset with the 7B config: 42,000 steps x 1,024 sequences of 4,096
tokens, seed 1234, the 5 mixture weights), each time in a fresh process so its peak RSS
(wait4 ru_maxrss) is its own: once with a cold index cache and once loading that cache.
The child also times the main megatron-core steps (document index, sample index, shuffle index,
blending indices, saving .npy). The last line of output is one JSON object.
Targets: under 60 s and under 4,096 MiB ("MB" below means MiB) for each build.
"""

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# name, tokens, documents, weight (llemma_configs/data_mixture.yml order). Proof-Pile-2 token
# counts from the Llemma paper, document counts approximate; the Pile sample and RedPajama
# GitHub sizes are a guess at "a few B tokens" (average documents of 1.5k and 2k tokens).
COMPONENTS = [
    ("arxiv", 29_000_000_000, 1_500_000, 2.0),
    ("open-web-math", 15_000_000_000, 6_300_000, 4.0),
    ("algebraic-stack", 11_000_000_000, 3_400_000, 1.0),
    ("pile-sample", 3_000_000_000, 2_000_000, 0.147368),
    ("redpajama-github", 4_000_000_000, 2_000_000, 0.221053),
]
SEQ, ITERS, BATCH, SEED, VOCAB = 4096, 42_000, 1024, 1234, 32016
TARGET_S, TARGET_MB = 60.0, 4096.0
MIB = 1 << 20


def prefix_of(work, name):
    return os.path.join(work, "data", f"{name}_train_text_document")


# ----------------------------------------------------------------------------- synthetic data


def document_lengths(tokens, docs, seed):
    """Lognormal document lengths (int32) that sum exactly to `tokens`."""
    x = np.random.default_rng(seed).lognormal(mean=0.0, sigma=1.0, size=docs)
    lengths = np.maximum(np.floor(x * (tokens / x.sum())), 1).astype(np.int64)
    lengths[np.argmax(lengths)] += tokens - lengths.sum()  # rounding remainder
    assert lengths.sum() == tokens and lengths.max() < 2**31 and lengths.min() >= 1
    return lengths.astype(np.int32)


def write_mmidx(prefix, lengths):
    """An MMIDIDX .idx (version 1, uint16 tokens) and a sparse .bin of the matching size."""
    itemsize = 2  # numpy.uint16, dtype code 8
    n = len(lengths)
    pointers = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
    pointers *= itemsize
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(np.array([1], "<u8").tobytes())  # version
        f.write(np.array([8], "<u1").tobytes())  # dtype code of numpy.uint16
        f.write(np.array([n, n + 1], "<u8").tobytes())  # sequence count, document count
        lengths.astype("<i4").tofile(f)
        pointers.astype("<i8").tofile(f)
        np.arange(n + 1, dtype="<i8").tofile(f)  # one sequence per document
    with open(prefix + ".bin", "wb") as f:
        f.truncate(int(lengths.sum(dtype=np.int64)) * itemsize)  # sparse: no blocks written


def make_data(work):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    os.makedirs(os.path.join(work, "data"), exist_ok=True)
    for i, (name, tokens, docs, _) in enumerate(COMPONENTS):
        lengths = document_lengths(tokens, docs, seed=SEED + i)
        prefix = prefix_of(work, name)
        write_mmidx(prefix, lengths)
        ds = IndexedDataset(prefix)  # check that megatron reads it back
        assert len(ds) == docs and np.array_equal(ds.sequence_lengths, lengths)
        assert np.array_equal(ds.document_indices, np.arange(docs + 1))
        assert ds.index.dtype == np.uint16 and int(ds.index.sequence_pointers[-1]) == 2 * (tokens - int(lengths[-1]))
        assert len(ds[docs - 1]) == lengths[-1]
        del ds


# ----------------------------------------------------------------------------- child: one build


class FakeTokenizer:
    """What megatron-core's GPTDataset needs of a tokenizer (Llama ids)."""

    vocab_size, eod, eos, bos, pad = VOCAB, 2, 2, 1, -1
    unique_identifiers = {"class": "FakeTokenizer", "vocab_size": VOCAB}


def llemma_7b_cfg(work):
    from neox.config import NeoXConfig, _coerce_all, validate

    flat = {
        "num_layers": 32, "hidden_size": 4096, "num_attention_heads": 32, "num_kv_heads": 32,
        "intermediate_size": 11008, "seq_length": SEQ, "max_position_embeddings": SEQ,
        "rotary_emb_base": 10000, "vocab_size": VOCAB, "make_vocab_size_divisible_by": 1,
        "checkpoint_activations": True, "precision": "bf16",
        "model_parallel_size": 2, "num_gpus": 8, "num_nodes": 32,
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
        "train_batch_size": BATCH, "train_iters": ITERS, "lr_decay_iters": 48000, "warmup_iters": 500,
        "seed": SEED, "train_data_paths": [prefix_of(work, c[0]) for c in COMPONENTS],
        "train_data_weights": [c[3] for c in COMPONENTS],
        "data_cache_dir": os.path.join(work, "index-cache"),
    }
    return validate(NeoXConfig.from_flat(_coerce_all(flat)), dry_run=True)


def instrument(phases):
    """Time megatron-core's index-building steps; record the peak RSS seen at the end of each."""
    from megatron.core.datasets import gpt_dataset, helpers

    active = set()

    def wrap(module, attr, label):
        fn = getattr(module, attr)

        def timed(*args, **kwargs):
            if label in active:  # _build_document_index recurses: time the outer call only
                return fn(*args, **kwargs)
            active.add(label)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                active.discard(label)
                p = phases.setdefault(label, {"s": 0.0, "per_call": [], "max_rss_mb_after": 0.0})
                p["per_call"].append(time.perf_counter() - t0)
                p["s"] += p["per_call"][-1]
                p["max_rss_mb_after"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        setattr(module, attr, timed)

    wrap(gpt_dataset, "_build_document_index", "document_index")
    wrap(helpers, "build_sample_idx", "sample_index (C++)")
    wrap(gpt_dataset, "_build_shuffle_index", "shuffle_index")
    wrap(helpers, "build_blending_indices", "blending_indices (C++)")
    wrap(np, "unique", "blend check (numpy.unique)")
    wrap(np, "save", "save .npy")


def child(work, mode):
    import torch

    from neox.data.dataset import build_train_dataset, format_mixture, mixture_table

    def peak():
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    rss = {"after_imports": peak()}
    t_start = time.perf_counter()
    cfg = llemma_7b_cfg(work)
    phases = {}
    instrument(phases)
    with socket.socket() as s:  # megatron's builder expects a process group: a world of one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    t0 = time.perf_counter()
    ds = build_train_dataset(cfg, FakeTokenizer())
    build_s = time.perf_counter() - t0
    rss["after_build"] = peak()
    print(f"[{mode}] mixture:\n" + format_mixture(mixture_table(ds, cfg)), flush=True)
    rss["after_mixture_table"] = peak()
    n = ITERS * BATCH
    assert len(ds) >= n, (len(ds), n)
    for i in (0, 1, n // 2, n - 1):  # sparse .bin: tokens are zeros, shapes are what matter
        sample = ds[i]
        assert sample["tokens"].shape == (SEQ,) and sample["labels"].shape == (SEQ,)
    rss["after_samples"] = peak()
    torch.distributed.destroy_process_group()
    result = {"build_s": round(build_s, 2), "in_process_s": round(time.perf_counter() - t_start, 2),
              "len": len(ds), "peak_rss_mb_at": rss,
              "phases": {k: {"s": round(v["s"], 2), "s_per_call": [round(x, 2) for x in v["per_call"]],
                             "max_rss_mb_after": round(v["max_rss_mb_after"])}
                         for k, v in phases.items()}}
    with open(os.path.join(work, f"result-{mode}.json"), "w") as f:
        json.dump(result, f)


def run_child(work, mode):
    """Run one build in a fresh process; wall time and peak RSS (ru_maxrss) of that process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", mode, "--work-dir", work])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} build failed (exit code {proc.returncode})")
    with open(os.path.join(work, f"result-{mode}.json")) as f:
        result = json.load(f)
    startup_s = round(wall - result["in_process_s"], 2)  # interpreter, imports (torch, megatron), exit
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024), "startup_s": startup_s,
            **result}


def disk_mb(root):
    """Space actually used (allocated blocks) under root, in MiB."""
    total = 0
    for d, _, files in os.walk(root):
        total += sum(os.stat(os.path.join(d, f)).st_blocks * 512 for f in files)
    return round(total / MIB, 1)


# ----------------------------------------------------------------------------- main


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", help="where data and caches go (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--child", choices=["cold", "warm"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.work_dir, args.child)

    work = args.work_dir or tempfile.mkdtemp(prefix="index_build_scale-")
    os.makedirs(work, exist_ok=True)
    try:
        t0 = time.perf_counter()
        make_data(work)
        gen_s = time.perf_counter() - t0
        for name, tokens, docs, w in COMPONENTS:
            print(f"{name:<18} {tokens:>15,} tokens {docs:>10,} documents  weight {w}")
        print(f"synthetic data written in {gen_s:.1f} s ({disk_mb(os.path.join(work, 'data'))} MiB on disk; "
              f".bin files sparse)", flush=True)
        cold = run_child(work, "cold")
        cache_mb = disk_mb(os.path.join(work, "index-cache"))
        warm = run_child(work, "warm")
        assert not warm["phases"].get("document_index"), "warm build rebuilt the indices"
        def ok(r):
            return {"wall": r["wall_s"] < TARGET_S, "peak_rss": r["peak_rss_mb"] < TARGET_MB}

        out = {
            "benchmark": "index_build_scale",
            "components": [{"name": n, "tokens": t, "documents": d, "weight": w} for n, t, d, w in COMPONENTS],
            "num_samples": ITERS * BATCH, "seq_length": SEQ, "seed": SEED,
            "generation_s": round(gen_s, 1),
            "cold": cold, "warm": warm,
            "targets": {"wall_s": TARGET_S, "peak_rss_mb": TARGET_MB},
            "meets_targets": {"cold": ok(cold), "warm": ok(warm),
                              "all": all(v for r in (cold, warm) for v in ok(r).values())},
            "cache_mb": cache_mb,
            "work_dir": work if args.keep else None,
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))
    return 0 if out["meets_targets"]["all"] else 1


if __name__ == "__main__":
    sys.exit(main())
