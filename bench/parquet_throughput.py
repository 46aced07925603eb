#!/usr/bin/env python
"""Preprocessing from Parquet against the same documents as .jsonl.zst, and deduplication against reading.

    python bench/parquet_throughput.py [--mb 500] [--small-mb 125] [--workers 2] [--work-dir DIR]

Generates (deterministically, with the toy corpus's generators) --mb MB of text as one Parquet
shard with FineMath's columns (text, url, token_count, score, int_score; row groups of 10,000 rows)
and the same documents as one .jsonl.zst, then measures in the same run, each in a fresh process:
  parquet, jsonl_zst: tools/preprocess_data.py's preprocess() of the one file (--workers: the
      spare cores are encode threads), seconds, MB/s of text and peak memory (the process's own VmHWM);
  parquet_small: the same for a --small-mb shard: peak memory must not grow with the shard;
  dedup: neox.data.dedup on the small shard, documents per second, against reading its text
      column alone (neox.data.readers).
Prints one JSON object (last line); targets: parquet_over_jsonl_zst >= 0.9 (throughput) and
memory_large_over_small <= 1.2.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from neox.data import toy_corpus  # noqa: E402

CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
from neox.data.preprocess import preprocess
t = time.perf_counter()
m = preprocess([{path!r}], {prefix!r}, {tok!r}, append_eod=True, workers={workers}, progress=False)
# VmHWM: this process's own peak (ru_maxrss carries the parent's peak across fork and exec)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({{"seconds": time.perf_counter() - t, "documents": m["documents"], "tokens": m["tokens"],
                  "max_rss_mib": hwm / 1024}}))
"""

DEDUP_CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
from neox.data import dedup, readers
t = time.perf_counter()
rows = sum(len(texts) for _, texts, _ in readers.batches({path!r}, "text", 4096, 64 << 20))
read = time.perf_counter() - t
t = time.perf_counter()
record = dedup.run([{path!r}], {out!r}, log=lambda m: None)
print(json.dumps({{"documents": rows, "read_seconds": read, "dedup_seconds": time.perf_counter() - t,
                  "removed": record["removed"]}}))
"""


def make_shard(work: str, mb: float, name: str, seed: int = 7) -> tuple[str, str, int]:
    """One Parquet shard and the same documents as .jsonl.zst; returns their paths and the text bytes."""
    texts = []
    size, i = 0, 0
    while size < mb * 1e6:
        component = toy_corpus.COMPONENTS[i % len(toy_corpus.COMPONENTS)]
        data, _, _ = toy_corpus.generate_split(component, f"{name}{i}", seed, 20_000_000)
        for line in data.splitlines():
            texts.append(json.loads(line)["text"])
            size += len(texts[-1].encode())
            if size >= mb * 1e6:
                break
        i += 1
    rows = [{"text": t, "url": f"https://bench.example/{k}", "token_count": len(t) // 4, "score": 3.5 + (k % 3) / 2,
             "int_score": 3 + k % 3} for k, t in enumerate(texts)]
    parquet = os.path.join(work, f"{name}.parquet")
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=10_000)
    jsonl = os.path.join(work, f"{name}.jsonl.zst")
    with open(jsonl, "wb") as f, zstandard.ZstdCompressor(level=3).stream_writer(f) as w:
        for t in texts:
            w.write(json.dumps({"text": t}).encode() + b"\n")
    return parquet, jsonl, size


def child(code: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=500)
    p.add_argument("--small-mb", type=float, default=125)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work-dir", default=None)
    p.add_argument("--tokenizer", default=os.path.join(REPO, "data", "toy", "tokenizer.model"))
    args = p.parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="parquet-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        big_parquet, big_jsonl, big_bytes = make_shard(work, args.mb, "large")
        small_parquet, _, small_bytes = make_shard(work, args.small_mb, "small")
        run = {}
        for name, path in (("jsonl_zst", big_jsonl), ("parquet", big_parquet), ("parquet_small", small_parquet)):
            run[name] = child(CHILD.format(repo=REPO, path=path, prefix=os.path.join(work, name), tok=args.tokenizer,
                                           workers=args.workers))
        for name, nbytes in (("jsonl_zst", big_bytes), ("parquet", big_bytes), ("parquet_small", small_bytes)):
            run[name]["text_mb_per_s"] = nbytes / 1e6 / run[name]["seconds"]
        d = child(DEDUP_CHILD.format(repo=REPO, path=small_parquet, out=os.path.join(work, "dedup")))
        result = {
            "text_mb": {"large": big_bytes / 1e6, "small": small_bytes / 1e6},
            "parquet_file_mb": os.path.getsize(big_parquet) / 1e6, "jsonl_zst_file_mb": os.path.getsize(big_jsonl) / 1e6,
            **run,
            "parquet_over_jsonl_zst": run["parquet"]["text_mb_per_s"] / run["jsonl_zst"]["text_mb_per_s"],
            "memory_large_over_small": run["parquet"]["max_rss_mib"] / run["parquet_small"]["max_rss_mib"],
            "dedup": {**d, "dedup_docs_per_s": d["documents"] / d["dedup_seconds"],
                      "read_docs_per_s": d["documents"] / d["read_seconds"]},
            "workers": args.workers,
        }
        print(json.dumps(result, indent=1))
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
