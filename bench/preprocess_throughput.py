#!/usr/bin/env python
"""Tokenization throughput of tools/preprocess_data.py vs. the tokenizer's own batched encode.

    python bench/preprocess_throughput.py [--work-dir DIR] [--mb 24] [--files 8] [--workers 2] [--repeats 3]
                                          [--tokenizer spm|hf]

Generates (deterministically, with tools/make_toy_corpus.py's generators) --mb MB of math-ish
text split into --files .jsonl.zst files, then measures in the same run, best of --repeats
(runs alternate, so machine noise hits both alike):
  ours: preprocess(files, workers=W, append_eod=True), .jsonl.zst -> .bin/.idx end to end
  raw:  SentencePieceProcessor.encode(all texts already in memory, num_threads=W), the ceiling
  raw_numpy: the same with return_type="numpy" (what the workers use; no Python int lists)
Prints one JSON object (last line); target: ratio_ours_over_raw >= 0.8.

--tokenizer hf: a byte-level BPE tokenizer.json (Hugging Face `tokenizers`) trained here on the
first 4 MB of the generated text (16,000 pieces, renumbered after 63,000 unused ones so the
vocabulary exceeds 65,535 ids and the output is int32, as for Llama 3), and instead:
  ours_processes: preprocess(the --files files, workers=W): W processes, one Rust thread each
  ours_threads:   preprocess(the same text as one file, workers=W): one process, W Rust threads
  raw:            Tokenizer.encode_batch(all texts in memory), the Rust library's own threads
                  (what the data tools call, per batch of documents)
  raw_fast:       Tokenizer.encode_batch_fast (no offsets)
ratio_ours_over_raw = the faster of ours over the faster of raw.
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
from neox.data import toy_corpus as make_toy_corpus  # noqa: E402


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


def make_bpe(texts, out, filler=63_000):
    """tokenizer.json + tokenizer_config.json of a byte-level BPE trained on `texts` (see the docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    sample, size = [], 0
    for t in texts:
        sample.append(t)
        size += len(t)
        if size > 4e6:
            break
    tok.train_from_iterator(sample, trainers.BpeTrainer(vocab_size=16000, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    spec = json.loads(tok.to_str())
    spec["model"]["vocab"] = {**{f"<|filler_{i}|>": i for i in range(filler)},
                              **{piece: i + filler for piece, i in spec["model"]["vocab"].items()}}
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, f)
    return os.path.join(out, "tokenizer.json")


def bench_hf(args, work, paths, texts):
    from tokenizers import Tokenizer

    from neox.data import preprocess as preprocess_data

    tok_path = make_bpe(texts, os.path.join(work, "bpe"))
    one = os.path.join(work, "inputs", "all.jsonl.zst")  # the same documents as a single file
    with open(one, "wb") as out:
        for p in paths:
            with open(p, "rb") as f:
                out.write(f.read())  # concatenated zstd frames are one valid stream
    tok = Tokenizer.from_file(tok_path)
    tok.encode_special_tokens = True  # as neox.data.tokenizer.HFTokenizer
    times = {k: [] for k in ("ours_processes", "ours_threads", "raw", "raw_fast")}
    for r in range(args.repeats):
        for name, inputs in (("ours_processes", paths), ("ours_threads", [one])):
            t0 = time.perf_counter()
            m = preprocess_data.preprocess(inputs, os.path.join(work, "out", name), tok_path, append_eod=True,
                                           workers=args.workers, progress=False)
            times[name].append(time.perf_counter() - t0)
            assert m["dtype"] == "int32", m["dtype"]
        t0 = time.perf_counter()
        enc = tok.encode_batch(texts, add_special_tokens=False)
        times["raw"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        tok.encode_batch_fast(texts, add_special_tokens=False)
        times["raw_fast"].append(time.perf_counter() - t0)
        print(f"repeat {r}: " + " ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), file=sys.stderr)
    raw_tokens = sum(len(e.ids) for e in enc)
    # same documents, same ids; ours adds BOS (the tokenizer's post-processor adds it) and EOS per document
    assert m["tokens"] == raw_tokens + 2 * m["documents"], (m["tokens"], raw_tokens, m["documents"])
    best = {k: min(v) for k, v in times.items()}
    ours, raw = min(best["ours_processes"], best["ours_threads"]), min(best["raw"], best["raw_fast"])
    return {
        "tokenizer": "hf byte-level BPE tokenizer.json", "vocab_size": m["tokenizer"]["vocab_size"],
        "text_mb": round(sum(map(len, texts)) / 1e6, 2), "files": len(paths), "workers": args.workers,
        "repeats": args.repeats, "tokens": m["tokens"], "docs": m["documents"],
        **{k: {"seconds": round(v, 3), "tokens_per_s": round((raw_tokens if k.startswith("raw") else m["tokens"]) / v)}
           for k, v in best.items()},
        "faster_ours": "processes" if best["ours_processes"] <= best["ours_threads"] else "threads",
        "ratio_ours_over_raw": round(raw / ours, 3),
        "target": 0.8,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", default=None, help="default: a temporary directory, removed afterwards")
    p.add_argument("--mb", type=float, default=24.0, help="MB of text to generate")
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tokenizer", choices=["spm", "hf"], default="spm",
                   help="spm: the toy SentencePiece model; hf: a byte-level BPE tokenizer.json trained here")
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
        from neox.data import (
            preprocess as preprocess_data,  # late: megatron.core takes seconds to import, not part of the timing
        )

        if args.tokenizer == "hf":
            print(json.dumps(bench_hf(args, work, paths, texts)))
            return
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
