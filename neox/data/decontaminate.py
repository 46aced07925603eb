"""Decontamination before training: write new `.bin/.idx` prefixes without the documents that share
an n-gram with a benchmark test set, and without exact duplicate documents.

The n-gram search is the overlap check's (neox.data.overlap: the same index, scanners and shards); this
module adds what a filter needs on top of it:
- every document's identity for exact deduplication: its length and a 64-bit polynomial hash
  of its tokens (overlap's hashing), confirmed token by token before a drop;
- the decision (a document goes if it has a hit, or if an identical document came before it, in
  the order of the --data prefixes, then of documents) and the writing of the kept documents;
- the record: DIR/decontamination.json (test files with their sha256, n, mode, sources, per-prefix
  counts, per-test-file drops), DIR/dropped.jsonl (one line per dropped document with its reason:
  the test example and the n-gram, or the document it duplicates) and DIR/report.md.

Shards (--shard I/K) scan contiguous, token-balanced document ranges into DIR/parts/ (a finished
part is never redone); the merge decides and writes. Outputs are written under DIR/.writing/ and
moved into place one prefix at a time, its manifest last; decontamination.json, written after every
prefix, marks a finished run. A killed run leaves no prefix that the trainer could read half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from neox.data import overlap
from neox.data.tokenizer import HFTokenizer, SentencePieceTokenizer
from neox.paths import sha256_of

DEFAULT_N = 13  # decontamination (Qwen2-Math, MathCoder2, MegaMath); the overlap report keeps Llemma's 30
RUN_FILE = "decontamination.json"
FORMAT_VERSION = 2  # 2: one document hash per document (parts of 1 are not mixed in)


class CombinedExamples(overlap.Examples):
    """The examples of several test files as one set; example i came from sources[i] = (file, line)."""

    sources: list


def parse_test_files(specs: list[str], default_keys: list[str]) -> list[tuple[str, list[str]]]:
    """`F.jsonl` (the --test-key fields) or `F.jsonl=question,answer` (this file's own fields)."""
    out = []
    for spec in specs:
        path, keys = spec, list(default_keys)
        if "=" in spec and not os.path.isfile(spec):
            path, _, fields = spec.rpartition("=")
            keys = [k for k in fields.split(",") if k]
            if not keys:
                raise overlap.OverlapError(f"--test-file {spec!r}: no field names after '='")
        out.append((path, keys))
    if len({p for p, _ in out}) != len(out):
        raise overlap.OverlapError("--test-file names the same file twice")
    return out


def read_test_files(files: list[tuple[str, list[str]]]) -> CombinedExamples:
    """All examples as one set, under the union of the files' fields (a field a file does not use is
    empty there); example i came from sources[i] = (file number, line)."""
    parts = [overlap.read_test_file(p, keys) for p, keys in files]
    union = list(dict.fromkeys(k for _, keys in files for k in keys))
    texts = {k: [t for part in parts for t in (part.texts[k] if k in part.texts else [""] * part.size)]
             for k in union}
    lines = [ln for part in parts for ln in part.line_numbers]
    ex = CombinedExamples(",".join(p for p, _ in files), union, texts, lines)
    ex.sources = [(fi, ln) for fi, part in enumerate(parts) for ln in part.line_numbers]
    return ex


def output_prefix(out: str, prefix: str) -> str:
    return os.path.join(out, os.path.basename(prefix))


def check_outputs(out: str, data: list[str], force: bool) -> None:
    """Distinct output names; none existing unless --force (checked before any scanning)."""
    names = [os.path.basename(p) for p in data]
    if len(set(names)) != len(names):
        raise overlap.OverlapError(f"--data prefixes share a base name ({', '.join(names)}): their filtered "
                                   f"prefixes would collide in {out}")
    for p in data:
        target = output_prefix(out, p)
        if os.path.abspath(target) == os.path.abspath(p):
            raise overlap.OverlapError(f"--out {out}: the filtered {p} would overwrite its input")
        existing = [target + ext for ext in (".bin", ".idx", ".manifest.json") if os.path.exists(target + ext)]
        if existing and not force:
            raise overlap.OverlapError(f"{existing[0]}: output prefix exists (--force replaces it)")


def check_tokenizer_of(ds: overlap.Dataset, tok: HFTokenizer | SentencePieceTokenizer, tokenizer: str) -> None:
    """The data's manifest must name this tokenizer (hash), else the test n-grams mean other tokens."""
    try:
        with open(ds.prefix + ".manifest.json") as f:
            recorded = json.load(f).get("tokenizer", {})
    except FileNotFoundError:
        return  # no manifest: the vocabulary check of every scanned id still applies
    except ValueError as e:
        raise overlap.OverlapError(f"{ds.prefix}.manifest.json: not valid JSON ({e})") from None
    if recorded.get("sha256") not in (None, tok.sha256):
        raise overlap.OverlapError(
            f"{ds.prefix}.bin was tokenized with {recorded.get('path')} (sha256 {recorded['sha256'][:12]}) per "
            f"{ds.prefix}.manifest.json, but --tokenizer-model {tokenizer} is another tokenizer (sha256 "
            f"{tok.sha256[:12]}): the test texts would be tokenized differently from the data")


def doc_hashes(ds: overlap.Dataset, lo: int, hi: int, chunk: int = overlap.CHUNK_TOKENS) -> np.ndarray:
    """(hi - lo,) uint64: a polynomial hash of each document's tokens (whole documents per batch). With
    the length it only finds candidates: exact_duplicates confirms each one token by token."""
    out = np.zeros(hi - lo, dtype=np.uint64)
    tokens, d0, inverse = ds.tokens(), lo, overlap.inverse_mod(overlap.HASH_BASE)
    while d0 < hi:
        d1 = min(hi, max(d0 + 1, int(np.searchsorted(ds.starts, ds.starts[d0] + chunk, side="left"))))
        a = int(ds.starts[d0])
        v = np.asarray(tokens[a:int(ds.starts[d1 - 1] + ds.lengths[d1 - 1])]).astype(np.uint64)
        np.multiply(v, overlap.powers(inverse, v.size), out=v)  # v[k] * B^-k, in place
        c = np.zeros(v.size + 1, dtype=np.uint64)
        np.cumsum(v, out=c[1:])
        s = ds.starts[d0:d1] - a
        e = s + ds.lengths[d0:d1]
        ne = e > s  # an empty document keeps hash 0
        out[d0 - lo:d1 - lo][ne] = (c[e[ne]] - c[s[ne]]) * overlap.powers(overlap.HASH_BASE, v.size + 1)[e[ne] - 1]
        d0 = d1
    return out


def _filter_piece(piece):
    """Worker: the overlap scan of documents [lo, hi) of dataset di, plus their hashes."""
    di, lo, hi = piece
    di, docs, tokens, groups = overlap.scan_piece(piece)
    return di, lo, hi, tokens, groups, doc_hashes(overlap.WORK["datasets"][di], lo, hi)


def fingerprint(test_files: Iterable[tuple[str, list[str]]], n: int, mode: str, tokenizer: str,
                datasets: Iterable[overlap.Dataset], shards: int) -> dict:
    files = [{"path": os.path.abspath(p), "keys": keys, "sha256": sha256_of(p)} for p, keys in test_files]
    return {"version": FORMAT_VERSION, "test_files": files,
            "n": n, "mode": mode, "tokenizer_sha256": sha256_of(tokenizer),
            "data": [{"prefix": os.path.abspath(d.prefix), "documents": d.num_docs, "tokens": d.num_tokens,
                      "bin_bytes": os.path.getsize(d.prefix + ".bin")} for d in datasets],
            "shards": shards}


def prepare(test_files: list[tuple[str, list[str]]], data: list[str], tokenizer: str, n: int, mode: str, out: str,
            force: bool) -> tuple[CombinedExamples, HFTokenizer | SentencePieceTokenizer, list[overlap.Dataset]]:
    """Everything cheap that can be wrong, before any scanning."""
    if n < 1:
        raise overlap.OverlapError(f"--n {n}: must be at least 1")
    if mode not in overlap.MODES:
        raise overlap.OverlapError(f"--mode {mode!r}: expected one of {', '.join(overlap.MODES)}")
    if len(set(data)) != len(data):
        raise overlap.OverlapError("--data names the same prefix twice")
    check_outputs(out, data, force)
    tests = read_test_files(test_files)
    if not os.path.isfile(tokenizer):
        raise overlap.OverlapError(f"{tokenizer}: tokenizer model not found")
    tok = overlap.open_tokenizer(tokenizer)
    datasets = [overlap.open_dataset(p) for p in data]
    for ds in datasets:
        overlap.check_vocab(ds, tok.vocab_size, tokenizer)
        check_tokenizer_of(ds, tok, tokenizer)
    return tests, tok, datasets


def scan_shard(test_files: list[Any], keys: list[str], data: list[str], tokenizer: str, out: str, n: int = DEFAULT_N,
               mode: str = "tokens", workers: int = 1, shard: tuple[int, int] = (0, 1), force: bool = False,
               progress: bool = True, piece_tokens: int = overlap.PIECE_TOKENS,
               log: Callable[[str], None] = print) -> dict:
    """Scan shard (I, K) into out/parts/ (skipped when done); returns the part's metadata.
    test_files: paths, or `path=field,field` for a file's own fields (else `keys`)."""
    from tqdm import tqdm

    test_files = parse_test_files(test_files, keys)
    tests, tok, datasets = prepare(test_files, data, tokenizer, n, mode, out, force)
    fp = fingerprint(test_files, n, mode, tokenizer, datasets, shard[1])
    parts_dir = os.path.join(out, "parts")
    base = os.path.join(parts_dir, overlap.part_name(*shard))
    meta = _load_part(base, fp)
    if meta is not None:
        log(f"{base}.json: shard {shard[0]}/{shard[1]} already done, not redone")
        return meta
    t0 = time.monotonic()
    index = overlap.build_index(tests, n, mode, tok)
    log(f"test side: {tests.size} examples from {len(test_files)} file(s), fields {', '.join(tests.keys)}, "
        f"{index.num_ngrams} {n}-grams, mode {mode}")
    ranges = [overlap.split_range(ds.starts, 0, ds.num_docs, shard[1], shard[0]) for ds in datasets]
    pieces = [(di, a, b) for di, (ds, (lo, hi)) in enumerate(zip(datasets, ranges))
              for a, b in overlap.piece_ranges(ds, lo, hi, piece_tokens)]
    total = sum(int(ds.lengths[lo:hi].sum()) for ds, (lo, hi) in zip(datasets, ranges))
    overlap.WORK.clear()
    overlap.WORK.update(index=index, datasets=datasets, tokenizer=tokenizer, chunk={})
    groups: list[list[tuple[int, int, int, int, str]]] = [[] for _ in datasets]
    hashes = [np.zeros(hi - lo, dtype=np.uint64) for lo, hi in ranges]
    pool = overlap.worker_pool(workers, len(pieces))  # forked before tqdm starts its monitor thread
    try:
        results = pool.imap_unordered(_filter_piece, pieces) if pool else map(_filter_piece, pieces)
        with tqdm(total=total, unit="tok", unit_scale=True, desc=f"decontaminate {shard[0]}/{shard[1]}",
                  disable=not progress, mininterval=1.0) as bar:
            for di, lo, hi, tokens, g, h in results:
                groups[di] += g
                hashes[di][lo - ranges[di][0]:hi - ranges[di][0]] = h
                bar.update(tokens)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    hits = [{"data": di, "doc": d, "example": e, "key": k, "ngram": g}
            for di in range(len(datasets)) for d, e, k, _, g in sorted(groups[di])]
    meta = {"fingerprint": fp, "shard": shard[0], "shards": shard[1], "doc_ranges": [list(r) for r in ranges],
            "tokens_scanned": total, "hits": len(hits), "seconds": round(time.monotonic() - t0, 3)}
    os.makedirs(parts_dir, exist_ok=True)
    overlap.write_lines_atomic(base + ".jsonl", hits)
    tmp = f"{base}.npz.tmp-{os.getpid()}.npz"
    np.savez(tmp, *hashes)
    os.replace(tmp, base + ".npz")
    overlap.write_json_atomic(base + ".json", meta)  # last: its presence marks the part done
    return meta


def _load_part(base, fp):
    meta = overlap.load_part(base, fp)  # same rules as the overlap check's parts
    if meta is not None and not os.path.isfile(base + ".npz"):
        raise overlap.OverlapError(f"{base}.npz: missing next to its .json (remove the .json to redo the part)")
    return meta


def load_parts(out: str) -> tuple[dict, list[dict], list[list[dict]], list[np.ndarray]]:
    """Every part of out/parts/: (fingerprint, metas, hits per part, document hashes per prefix)."""
    parts_dir = os.path.join(out, "parts")
    names = sorted(f for f in os.listdir(parts_dir) if f.endswith(".json")) if os.path.isdir(parts_dir) else []
    if not names:
        raise overlap.OverlapError(f"{parts_dir}: no finished parts")
    found = {}
    for name in names:
        meta = json.load(open(os.path.join(parts_dir, name)))
        found[meta["shard"]] = (os.path.join(parts_dir, name[:-len(".json")]), meta)
    first = next(iter(found.values()))[1]
    for base, meta in found.values():
        if meta["fingerprint"] != first["fingerprint"]:
            raise overlap.OverlapError(f"{base}.json: made by a different run than the other parts in {parts_dir}")
    missing = sorted(set(range(first["shards"])) - set(found))
    if missing:
        raise overlap.OverlapError(f"shards {', '.join(map(str, missing))} of {first['shards']} are not finished "
                                   f"(no {overlap.part_name(missing[0], first['shards'])}.json in {parts_dir})")
    metas = [found[i][1] for i in range(first["shards"])]
    hits = [[json.loads(line) for line in open(found[i][0] + ".jsonl") if line.strip()] for i in range(len(metas))]
    num = len(first["fingerprint"]["data"])
    hashes = [np.zeros(d["documents"], dtype=np.uint64) for d in first["fingerprint"]["data"]]
    for i, meta in enumerate(metas):
        with np.load(found[i][0] + ".npz") as z:
            for di in range(num):
                lo, hi = meta["doc_ranges"][di]
                hashes[di][lo:hi] = z[f"arr_{di}"]
    return first["fingerprint"], metas, hits, hashes


def exact_duplicates(datasets: Sequence[overlap.Dataset],
                     hashes: Sequence[np.ndarray]) -> dict[tuple[int, int], tuple[int, int]]:
    """{(prefix number, doc): (prefix number, doc) of the first identical document before it}."""
    keys = np.concatenate([np.column_stack([ds.lengths.astype(np.uint64), h]) for ds, h in zip(datasets, hashes)])
    if not len(keys):
        return {}
    prefix_of = np.repeat(np.arange(len(datasets)), [ds.num_docs for ds in datasets])
    doc_of = np.concatenate([np.arange(ds.num_docs) for ds in datasets])
    order = np.lexsort(keys.T[::-1])  # by length, then hash; stable: earlier documents first
    k = keys[order]
    same = np.concatenate(([False], (k[1:] == k[:-1]).all(axis=1)))
    group_start = np.maximum.accumulate(np.where(same, 0, np.arange(len(order))))
    dups = {}
    for i in np.flatnonzero(same):  # only the (few) documents whose key repeats an earlier one
        a, b = int(order[group_start[i]]), int(order[i])
        first, dup = (int(prefix_of[a]), int(doc_of[a])), (int(prefix_of[b]), int(doc_of[b]))
        if np.array_equal(_doc_tokens(datasets[first[0]], first[1]), _doc_tokens(datasets[dup[0]], dup[1])):
            dups[dup] = first  # confirmed token by token: a hash collision never drops a document
    return dups


def _doc_tokens(ds, d):
    s = int(ds.starts[d])
    return np.asarray(ds.tokens()[s:s + int(ds.lengths[d])])


def merge(out: str, force: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Decide which documents go, write the filtered prefixes and the record; returns the record."""
    from tqdm import tqdm

    fp, metas, part_hits, hashes = load_parts(out)
    datasets = [overlap.open_dataset(d["prefix"]) for d in fp["data"]]
    for d, ds in zip(fp["data"], datasets):
        if (ds.num_docs, ds.num_tokens, os.path.getsize(ds.prefix + ".bin")) != \
                (d["documents"], d["tokens"], d["bin_bytes"]):
            raise overlap.OverlapError(f"{ds.prefix}: changed since it was scanned (rerun the scan)")
    check_outputs(out, [d.prefix for d in datasets], force)
    test_files = [t["path"] for t in fp["test_files"]]
    tests = read_test_files([(t["path"], t["keys"]) for t in fp["test_files"]])
    dropped: list[dict[int, dict]] = [dict() for _ in datasets]  # doc -> reason
    for hits in part_hits:
        for h in hits:
            fi, line = tests.sources[h["example"]]
            dropped[h["data"]].setdefault(h["doc"], {"reason": "overlap", "test_file": test_files[fi],
                                                     "test_id": line, "key": tests.keys[h["key"]],
                                                     "ngram": h["ngram"]})
    for (di, d), (dj, e) in exact_duplicates(datasets, hashes).items():
        dropped[di].setdefault(d, {"reason": "duplicate", "duplicate_of": {"data": fp["data"][dj]["prefix"],
                                                                           "doc": e}})
    staging = os.path.join(out, ".writing")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    record = {"version": FORMAT_VERSION, "test_files": fp["test_files"], "n": fp["n"], "mode": fp["mode"],
              "tokenizer_sha256": fp["tokenizer_sha256"], "shards": fp["shards"], "dropped_file": "dropped.jsonl",
              "outputs": []}
    rows = []
    total = sum(ds.num_tokens for ds in datasets)
    with tqdm(total=total, unit="tok", unit_scale=True, desc="write filtered", disable=not progress,
              mininterval=1.0) as bar:
        for di, ds in enumerate(datasets):
            keep = np.ones(ds.num_docs, dtype=bool)
            keep[list(dropped[di])] = False
            name = os.path.basename(ds.prefix)
            manifest = write_filtered(ds, keep, os.path.join(staging, name), fp, bar)
            counts = summary_counts(ds, keep, dropped[di])
            record["outputs"].append({"source": ds.prefix, "prefix": output_prefix(out, ds.prefix),
                                      "source_manifest_sha256": _sha_or_none(ds.prefix + ".manifest.json"),
                                      **counts, "documents_kept": int(keep.sum()),
                                      "tokens_kept": manifest["tokens"]})
            rows += [{"data": ds.prefix, "doc": d, **why} for d, why in sorted(dropped[di].items())]
    record["dropped_by_test_file"] = by_test_file(rows, test_files)
    overlap.write_lines_atomic(os.path.join(staging, "dropped.jsonl"), rows)
    old_record = os.path.join(out, RUN_FILE)
    if os.path.exists(old_record):
        os.remove(old_record)  # until the new one is written, the directory is not a finished run
    for ds in datasets:  # each prefix: old files out, new in, manifest last
        final, new = output_prefix(out, ds.prefix), os.path.join(staging, os.path.basename(ds.prefix))
        for ext in (".manifest.json", ".idx", ".bin"):
            if os.path.exists(final + ext):
                os.remove(final + ext)
        for ext in (".bin", ".idx", ".manifest.json"):
            os.replace(new + ext, final + ext)
    os.replace(os.path.join(staging, "dropped.jsonl"), os.path.join(out, "dropped.jsonl"))
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(report_markdown(record) + "\n")
    overlap.write_json_atomic(old_record, record)
    shutil.rmtree(staging, ignore_errors=True)
    log(report_markdown(record))
    return record


def _sha_or_none(path):
    return sha256_of(path) if os.path.isfile(path) else None


def write_filtered(ds: overlap.Dataset, keep: np.ndarray, target: str, fp: dict, bar: Any) -> dict:
    """target.{bin,idx,manifest.json}: the kept documents, in order, as megatron-core writes them."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(target + ".bin", dtype=ds.dtype.type)
    tokens = ds.tokens()
    edges = np.flatnonzero(np.diff(np.concatenate(([0], keep.astype(np.int8), [0]))))
    for a, b in zip(edges[0::2], edges[1::2]):  # runs of kept documents, copied in slices
        lo, hi = int(ds.starts[a]), int(ds.starts[b - 1] + ds.lengths[b - 1])
        for c in range(lo, hi, 1 << 24):
            builder.data_file.write(np.asarray(tokens[c:min(hi, c + (1 << 24))]).tobytes())
        bar.update(hi - lo)
    bar.update(int(ds.lengths[~keep].sum()))
    lengths = ds.lengths[keep]
    builder.sequence_lengths = lengths.tolist()
    builder.document_indices = list(range(len(builder.sequence_lengths) + 1))
    builder.finalize(target + ".idx")
    manifest = _source_manifest(ds)
    manifest.update({"bin": os.path.basename(target) + ".bin", "idx": os.path.basename(target) + ".idx",
                     "documents": int(keep.sum()), "tokens": int(lengths.sum()),
                     "decontaminated": {"source": ds.prefix, "record": RUN_FILE, "n": fp["n"], "mode": fp["mode"],
                                        "test_files": fp["test_files"],
                                        "documents_dropped": int((~keep).sum()),
                                        "tokens_dropped": int(ds.lengths[~keep].sum())}})
    if "tokenizer" in manifest and "path" in manifest["tokenizer"]:  # paths are relative to the manifest
        src_dir = os.path.dirname(os.path.abspath(ds.prefix))
        path = os.path.normpath(os.path.join(src_dir, manifest["tokenizer"]["path"]))
        manifest["tokenizer"]["path"] = os.path.relpath(path, os.path.dirname(os.path.abspath(target)))
    with open(target + ".manifest.json", "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return manifest


def _source_manifest(ds) -> dict:
    try:
        with open(ds.prefix + ".manifest.json") as f:
            m = json.load(f)
    except FileNotFoundError:
        return {"format": "megatron-core MMIDIDX (.bin/.idx)", "paths_relative_to": "this manifest's directory",
                "dtype": ds.dtype.name}
    m.pop("inputs", None)  # the source's input files describe the source, not this subset
    return m


def summary_counts(ds: overlap.Dataset, keep: np.ndarray, dropped: dict) -> dict:
    overlap_docs = [d for d, w in dropped.items() if w["reason"] == "overlap"]
    dup_docs = [d for d, w in dropped.items() if w["reason"] == "duplicate"]
    return {"documents": ds.num_docs, "tokens": ds.num_tokens,
            "documents_dropped_overlap": len(overlap_docs),
            "tokens_dropped_overlap": int(ds.lengths[overlap_docs].sum()) if overlap_docs else 0,
            "documents_dropped_duplicate": len(dup_docs),
            "tokens_dropped_duplicate": int(ds.lengths[dup_docs].sum()) if dup_docs else 0}


def by_test_file(rows: list[dict], test_files: list[str]) -> dict:
    """Per test file: documents dropped because of it and the test examples (lines) that caused drops."""
    out = {}
    for path in test_files:
        mine = [r for r in rows if r.get("test_file") == path]
        out[path] = {"documents_dropped": len(mine), "examples": sorted({r["test_id"] for r in mine})}
    return out


def report_markdown(record: dict) -> str:
    lines = [f"decontamination: {record['n']}-grams ({record['mode']}) against "
             f"{', '.join(os.path.basename(t['path']) for t in record['test_files'])}", "",
             "| component | documents | kept | dropped (overlap) | dropped (duplicate) | tokens kept | tokens dropped |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for o in record["outputs"]:
        dropped_tokens = o["tokens_dropped_overlap"] + o["tokens_dropped_duplicate"]
        lines.append(f"| {os.path.basename(o['source'])} | {o['documents']:,} | {o['documents_kept']:,} | "
                     f"{o['documents_dropped_overlap']:,} | {o['documents_dropped_duplicate']:,} | "
                     f"{o['tokens_kept']:,} | {dropped_tokens:,} |")
    lines.append("")
    for path, d in record["dropped_by_test_file"].items():
        lines.append(f"- {os.path.basename(path)}: {d['documents_dropped']} documents dropped, caused by "
                     f"{len(d['examples'])} test examples")
    return "\n".join(lines)


def run(test_files: list[str], keys: list[str], data: list[str], tokenizer: str, out: str, n: int = DEFAULT_N,
        mode: str = "tokens", workers: int = 1, shard: tuple[int, int] = (0, 1), force: bool = False,
        progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """One shard's scan; with one shard (K = 1) also the merge that writes the filtered prefixes."""
    meta = scan_shard(test_files, keys, data, tokenizer, out, n, mode, workers, shard, force, progress, log=log)
    if shard[1] == 1:
        return merge(out, force=force, progress=progress, log=log)
    return meta
