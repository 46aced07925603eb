#!/usr/bin/env python
"""Throughput of the test-set overlap check (neox/data/overlap.py) against the I/O floor and plain Python.

    python bench/overlap_throughput.py [--tokens 500000000] [--test-examples 5000] [--slice-tokens 300000]
        [--words-tokens 20000000] [--workers 2] [--work-dir DIR]

Writes (once; reused while the parameters match) a synthetic uint16 .bin/.idx of --tokens tokens
with log-normal document lengths (median 1,500 tokens, like web and arXiv text; ids of the toy
SentencePiece tokenizer, Zipf-distributed) and a MATH-shaped test file of --test-examples examples
(problem ~80 tokens, solution ~220 tokens), 200 texts of which are planted whole in the training data
(10 of them in the first documents, which the Python baselines scan).
Then measures, in the same run:
  floor:     reading the whole .bin with numpy (memory map, every token touched), the I/O floor
  ours:      tokens mode, one process, every document of the file (n = 30, both keys)
  llemma:    Llemma's approach in plain Python on the first --slice-tokens tokens: a set of 30-grams
             per document intersected with each test example's set (sets prebuilt, which helps it)
  plain_set: plain Python with one set of all test n-grams (the obvious improvement), same slice
  words:     words mode (decode, whitespace split, word n-grams) on the first --words-tokens tokens,
             and SentencePiece decoding alone on the same documents
  run:       tools/check_overlap.py's run() end to end with --workers, hits written
The slice's hits must equal Llemma's, every planted text must be found in tokens mode, and words
mode must find exactly the planted texts that Llemma's words check finds (on the words slice).
Prints one JSON object (last line). Targets: ours >= 10M tokens/s per worker, >= 100x llemma.
The page cache is warm (the file was just written or read): "floor" is memory, not disk.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import sentencepiece as spm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from neox.data import overlap  # noqa: E402

N = 30
PLANTED = 200
NODE_CORES = 32
PROOF_PILE_2_TOKENS = 55e9


def zipf_ids(rng, size, vocab):
    ranks = np.arange(3, vocab)
    p = 1.0 / (ranks - 2 + 10.0)
    return rng.choice(ranks, size=size, p=p / p.sum()).astype(np.uint16)


def write_test_file(path, rng, sp, n_tests):
    """MATH-shaped test examples of Zipf-distributed tokens, decoded to text."""
    vocab = sp.get_piece_size()
    texts = [{"problem": sp.decode(zipf_ids(rng, int(rng.integers(40, 120)), vocab).tolist()),
              "solution": sp.decode(zipf_ids(rng, int(rng.integers(120, 320)), vocab).tolist()),
              "level": f"Level {1 + i % 5}"} for i in range(n_tests)]
    with open(path, "w") as f:
        f.writelines(json.dumps(t) + "\n" for t in texts)
    return texts


def document_lengths(rng, tokens):
    """Log-normal document lengths (median 1,500) summing to exactly `tokens`."""
    lengths = np.clip(rng.lognormal(np.log(1500), 1.0, size=tokens // 500), 50, 200_000).astype(np.int64)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), tokens)) + 1]
    lengths[-1] -= int(lengths.sum()) - tokens
    return lengths[lengths > 0]


def make_data(work, tokens, n_tests, sp, seed=17):
    """The synthetic .bin/.idx and test file; the planted (doc, test_id, key) triples."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = os.path.join(work, f"synthetic_{tokens}_v2")
    test_file = os.path.join(work, f"test_{n_tests}.jsonl")
    planted_file = prefix + f".planted_{n_tests}.json"
    if all(os.path.exists(p) for p in (prefix + ".idx", test_file, planted_file)):
        return prefix, test_file, [tuple(x) for x in json.load(open(planted_file))]
    rng = np.random.default_rng(seed)
    vocab = sp.get_piece_size()
    texts = write_test_file(test_file, rng, sp, n_tests)
    lengths = document_lengths(rng, tokens)
    eligible = np.flatnonzero(lengths >= 500)
    early = eligible[:10]  # inside the slice the Python baselines scan, so that their hits are compared
    plant_docs = set(early.tolist()) | set(rng.choice(eligible[10:], PLANTED - early.size, replace=False).tolist())
    pool = zipf_ids(rng, 1 << 24, vocab)  # documents are slices of this pool at random offsets
    pool = np.concatenate([pool, pool[:200_000]])
    offsets = rng.integers(0, 1 << 24, lengths.size)
    planted = []
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for d, (ln, off) in enumerate(zip(lengths.tolist(), offsets.tolist())):
        doc = pool[off:off + ln]
        if d in plant_docs:  # a whole test text, tokenized as the check will, after 100 tokens
            tid, key = int(rng.integers(n_tests)), ("problem", "solution")[len(planted) % 2]
            ids = sp.encode(texts[tid][key])[: ln - 100]
            if len(ids) >= N:
                doc = doc.copy()
                doc[100:100 + len(ids)] = ids
                planted.append((d, tid, key))
        builder.add_document(doc, [ln])
    builder.finalize(prefix + ".idx")
    json.dump(planted, open(planted_file, "w"))
    return prefix, test_file, planted


def timed(fn, *args):
    """(wall seconds, CPU seconds of this process, result): on a shared machine the CPU time is what a
    worker with a core of its own would take."""
    w0, c0 = time.perf_counter(), time.process_time()
    res = fn(*args)
    return time.perf_counter() - w0, time.process_time() - c0, res


def read_floor(ds):
    toks = ds.tokens()
    step = 1 << 24
    top = 0
    for a in range(0, toks.size, step):
        top = max(top, int(np.asarray(toks[a:a + step]).max()))  # every byte read from the page cache
    return top


def slice_docs(ds, tokens):
    hi = max(1, int(np.searchsorted(np.cumsum(ds.lengths), tokens)) + 1)
    hi = min(hi, ds.num_docs)
    toks = ds.tokens()
    return hi, [toks[s:s + ln].tolist() for s, ln in zip(ds.starts[:hi].tolist(), ds.lengths[:hi].tolist())]


def test_grams(index, tests, sp):
    """(test_id, key) -> set of n-gram tuples, from the same token sequences as our index."""
    out = {}
    for key in tests.keys:
        for e, text in enumerate(tests.texts[key]):
            ids = sp.encode(text)
            out[(tests.line_numbers[e], key)] = {tuple(ids[i:i + N]) for i in range(len(ids) - N + 1)}
    return out


def llemma_python(docs, grams):
    """Llemma's check_overlap.py shape: per document a set of n-grams, intersected with each example's."""
    hits = set()
    for d, doc in enumerate(docs):
        doc_set = {tuple(doc[i:i + N]) for i in range(len(doc) - N + 1)}
        for (test_id, key), g in grams.items():
            if doc_set & g:
                hits.add((d, test_id, key))
    return hits


def plain_set_python(docs, grams):
    owners = {}  # built outside the timing, like the sets of the Llemma baseline
    for tk, g in grams.items():
        for gram in g:
            owners.setdefault(gram, []).append(tk)
    return timed(_lookup_each_window, docs, owners)


def _lookup_each_window(docs, owners):
    hits = set()
    for d, doc in enumerate(docs):
        for i in range(len(doc) - N + 1):
            for test_id, key in owners.get(tuple(doc[i:i + N]), ()):
                hits.add((d, test_id, key))
    return hits


def llemma_words_planted(ds, tests, sp, planted):
    """Which planted texts Llemma's words check finds: the passage's edges merge with the words
    around it once decoded, so a short text may have no 30-gram left intact."""
    found = set()
    for d, tid, key in planted:
        words = sp.decode(ds.tokens()[ds.starts[d]:ds.starts[d] + ds.lengths[d]].astype(np.int32)).split()
        test_words = tests.texts[key][tests.line_numbers.index(tid)].split()
        doc_set = {tuple(words[i:i + N]) for i in range(len(words) - N + 1)}
        if doc_set & {tuple(test_words[i:i + N]) for i in range(len(test_words) - N + 1)}:
            found.add((d, tid, key))
    return found


def decode_all(ds, hi, sp):
    toks = ds.tokens()
    for a in range(0, hi, 256):
        b = min(a + 256, hi)
        sp.decode([toks[s:s + ln].astype(np.int32) for s, ln in zip(ds.starts[a:b], ds.lengths[a:b])])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=500_000_000)
    p.add_argument("--test-examples", type=int, default=5000)
    p.add_argument("--slice-tokens", type=int, default=300_000, help="tokens for the plain-Python baselines")
    p.add_argument("--words-tokens", type=int, default=20_000_000, help="tokens for the words-mode measurement")
    p.add_argument("--workers", type=int, default=2, help="processes for the end-to-end run")
    p.add_argument("--repeats", type=int, default=2, help="floor and token-mode scans, best of")
    p.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "overlap_bench"))
    args = p.parse_args(argv)

    tok = os.path.join(REPO, "data", "toy", "tokenizer.model")
    if not os.path.isfile(tok):
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_toy_data.py")], check=True, cwd=REPO)
    sp = spm.SentencePieceProcessor(model_file=tok)  # the Python baselines' tokenizer
    tk = overlap.open_tokenizer(tok)  # what the check itself uses (neox.data.tokenizer)
    os.makedirs(args.work_dir, exist_ok=True)
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    prefix, test_file, planted = make_data(args.work_dir, args.tokens, args.test_examples, sp)
    make_s = time.perf_counter() - t0
    keys = ["problem", "solution"]
    tests, _, (ds,) = overlap.prepare(test_file, keys, [prefix], tok, N, "tokens")
    total = ds.num_tokens

    t0 = time.perf_counter()
    index = overlap.build_index(tests, N, "tokens", tk)
    index_s = time.perf_counter() - t0
    floor, ours = [], []
    for _ in range(args.repeats):  # alternating, best of: the machine is shared, noise hits both alike
        floor.append(timed(read_floor, ds)[:2])
        wall, cpu, groups = timed(overlap.scan_tokens, ds, 0, ds.num_docs, index, tk, tok)
        ours.append((wall, cpu))
    (floor_s, floor_cpu), (ours_s, ours_cpu) = (tuple(map(min, zip(*x))) for x in (floor, ours))
    found = {(d, tests.line_numbers[e], index.keys[k]) for d, e, k, _, _ in groups}

    hi, docs = slice_docs(ds, args.slice_tokens)
    slice_tokens = sum(map(len, docs))
    grams = test_grams(index, tests, sp)
    llemma_s, llemma_cpu, llemma_hits = timed(llemma_python, docs, grams)
    plain_s, plain_cpu, plain_hits = plain_set_python(docs, grams)
    ours_slice = {h for h in found if h[0] < hi}

    whi = min(ds.num_docs, int(np.searchsorted(np.cumsum(ds.lengths), args.words_tokens)) + 1)
    words_tokens = int(ds.lengths[:whi].sum())
    windex = overlap.build_index(tests, N, "words", tk)
    words_s, words_cpu, wgroups = timed(overlap.scan_words, ds, 0, whi, windex, tk, tok)
    words_found = {(d, tests.line_numbers[e], windex.keys[k]) for d, e, k, _, _ in wgroups}
    words_expected = llemma_words_planted(ds, tests, sp, [x for x in planted if x[0] < whi])
    decode_s, decode_cpu, _ = timed(decode_all, ds, whi, sp)

    out = os.path.join(args.work_dir, f"run_{os.getpid()}")
    t0 = time.perf_counter()
    summary = overlap.run(test_file, keys, [prefix], tok, out, n=N, workers=args.workers, progress=False,
                          log=lambda m: None)
    run_s = time.perf_counter() - t0
    run_found = {(r["doc"], r["test_id"], r["key"]) for r in map(json.loads, open(os.path.join(out, "hits.jsonl")))}

    rates = {  # tokens per second: wall clock, and per CPU-second of the (single) process
        "floor_read": (total / floor_s, total / floor_cpu),
        "ours_tokens_mode": (total / ours_s, total / ours_cpu),
        "llemma_python": (slice_tokens / llemma_s, slice_tokens / llemma_cpu),
        "plain_set_python": (slice_tokens / plain_s, slice_tokens / plain_cpu),
        "ours_words_mode": (words_tokens / words_s, words_tokens / words_cpu),
        "decode_only": (words_tokens / decode_s, words_tokens / decode_cpu),
    }
    ours_rate, ours_cpu_rate = rates["ours_tokens_mode"]
    result = {
        "date": time.strftime("%Y-%m-%d"), "tokens": total, "documents": ds.num_docs, "dtype": "uint16",
        "test_examples": tests.size, "test_ngrams": index.num_ngrams, "n": N, "make_data_s": round(make_s, 1),
        "index_build_s": round(index_s, 3), "slice_tokens": slice_tokens, "words_tokens": words_tokens,
        "tok_per_s_wall": {k: v[0] for k, v in rates.items()},
        "tok_per_s_cpu": {k: v[1] for k, v in rates.items()},
        "ours_over_floor_cpu": ours_cpu_rate / rates["floor_read"][1],
        "ours_over_llemma_python_cpu": ours_cpu_rate / rates["llemma_python"][1],
        "ours_over_llemma_python_wall": ours_rate / rates["llemma_python"][0],
        "ours_over_plain_set_python_cpu": ours_cpu_rate / rates["plain_set_python"][1],
        "words_over_decode_only_cpu": rates["ours_words_mode"][1] / rates["decode_only"][1],
        "slice_hits_equal_llemma": ours_slice == llemma_hits == plain_hits,
        "slice_hits": len(llemma_hits),
        "planted": len(planted), "planted_found": len(set(planted) & found), "hit_rows": len(groups),
        "words_hit_rows": len(wgroups),
        "words_planted": sum(d < whi for d, _, _ in planted),
        "words_hits_equal_llemma_on_planted": words_found == words_expected,
        "run_workers": args.workers, "run_wall_s": round(run_s, 2), "run_tok_per_s": total / run_s,
        "run_hits_equal_scan": run_found == found and summary["tokens_scanned"] == total,
        # one worker per core, each at its measured per-CPU-second rate
        "projected_55b_hours_one_32_core_node": PROOF_PILE_2_TOKENS / (ours_cpu_rate * NODE_CORES) / 3600,
        "projected_55b_hours_one_32_core_node_words":
            PROOF_PILE_2_TOKENS / (rates["ours_words_mode"][1] * NODE_CORES) / 3600,
        "target_10m_per_worker_met": ours_cpu_rate >= 10e6,
        "target_100x_llemma_met": ours_cpu_rate / rates["llemma_python"][1] >= 100,
        "cpu_cores": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()[0],
    }
    print(json.dumps(_rounded(result)))
    if not (result["slice_hits_equal_llemma"] and result["planted_found"] == len(planted)
            and result["run_hits_equal_scan"] and result["words_hits_equal_llemma_on_planted"]):
        sys.exit("error: results differ between implementations (see the JSON above)")


def _rounded(obj):
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, float):
        return round(obj, 3) if abs(obj) < 1e3 else round(obj)
    return obj


if __name__ == "__main__":
    main()
