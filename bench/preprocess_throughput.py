#!/usr/bin/env python
"""Tokenization throughput of tools/preprocess_data.py vs. raw SentencePiece batched encode.

    python bench/preprocess_throughput.py [--work-dir DIR] [--mb 24] [--files 8] [--workers 2] [--repeats 3]

Generates (deterministically, with tools/make_toy_corpus.py's generators) --mb MB of math-ish
text split into --files .jsonl.zst files, then measures in the same run, best of --repeats
(runs alternate, so machine noise hits both alike):
  ours: preprocess(files, workers=W, append_eod=True), .jsonl.zst -> .bin/.idx end to end
  raw:  SentencePieceProcessor.encode(all texts already in memory, num_threads=W), the ceiling
  raw_numpy: the same with return_type="numpy" (what the workers use; no Python int lists)
Prints one JSON object (last line); target: ratio_ours_over_raw >= 0.8.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import sentencepiece as spm
import zstandard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from neox.cli import make_toy_corpus  # noqa: E402


def make_inputs(out, mb, n_files, seed=4321):
    """Write n_files .jsonl.zst files (cycling through the three components); returns their texts."""
    os.makedirs(out, exist_ok=True)
    cctx = zstandard.ZstdCompressor(level=3)
    paths, texts = [], []
    for i in range(n_files):
        component = make_toy_corpus.COMPONENTS[i % len(make_toy_corpus.COMPONENTS)]
        data, _, _ = make_toy_corpus.generate_split(component, f"bench{i}", seed, int(mb * 1e6 / n_files))
        paths.append(os.path.join(out, f"part-{i:03d}.jsonl.zst"))
        with open(paths[-1], "wb") as f:
            f.write(cctx.compress(data))
        texts += [json.loads(line)["text"] for line in data.splitlines()]
    return paths, texts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", default=None, help="default: a temporary directory, removed afterwards")
    p.add_argument("--mb", type=float, default=24.0, help="MB of text to generate")
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    tok = os.path.join(REPO, "data", "toy", "tokenizer.model")
    if not os.path.isfile(tok):
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_toy_data.py")], check=True, cwd=REPO)
    work = args.work_dir or tempfile.mkdtemp(prefix="preprocess_bench_")
    try:
        t0 = time.monotonic()
        paths, texts = make_inputs(os.path.join(work, "inputs"), args.mb, args.files)
        print(f"generated {len(texts)} docs, {sum(map(len, texts)) / 1e6:.1f} MB text in "
              f"{len(paths)} files ({sum(map(os.path.getsize, paths)) / 1e6:.1f} MB zstd) "
              f"in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        from neox.cli import preprocess_data  # late: megatron.core takes seconds to import, not part of the timing

        sp = spm.SentencePieceProcessor(model_file=tok)
        ours_s, raw_s, raw_np_s = [], [], []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            m = preprocess_data.preprocess(paths, os.path.join(work, "out", "bench"), tok, append_eod=True,
                                           workers=args.workers, progress=False)
            ours_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ids = sp.encode(texts, num_threads=args.workers)
            raw_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sp.encode(texts, num_threads=args.workers, return_type="numpy")
            raw_np_s.append(time.perf_counter() - t0)
            print(f"repeat {r}: ours {ours_s[-1]:.2f}s raw {raw_s[-1]:.2f}s raw_numpy {raw_np_s[-1]:.2f}s",
                  file=sys.stderr)
        raw_tokens = sum(map(len, ids))
        # Same documents, same ids (ours adds one EOD per document): compare by time.
        assert m["tokens"] == raw_tokens + m["documents"], (m["tokens"], raw_tokens, m["documents"])
        ours, raw = min(ours_s), min(raw_s)
        result = {
            "text_mb": round(sum(map(len, texts)) / 1e6, 2), "files": len(paths), "workers": args.workers,
            "repeats": args.repeats,
            "ours": {"tokens": m["tokens"], "docs": m["documents"], "seconds": round(ours, 3),
                     "tokens_per_s": round(m["tokens"] / ours)},
            "raw": {"tokens": raw_tokens, "docs": len(texts), "seconds": round(raw, 3),
                    "tokens_per_s": round(raw_tokens / raw)},
            "raw_numpy": {"seconds": round(min(raw_np_s), 3), "tokens_per_s": round(raw_tokens / min(raw_np_s))},
            "ratio_ours_over_raw": round(raw / ours, 3),
            "ratio_ours_over_raw_numpy": round(min(raw_np_s) / ours, 3),
            "target": 0.8,
        }
        print(json.dumps(result))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
