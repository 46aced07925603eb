"""Near-duplicate removal before tokenization: MinHash LSH over word n-grams (the MinHash of rensa).

1. signatures (``--shard I/K``: the input files i with i % K == I; a finished part is never redone):
   each document's words (lower-cased ``\\w+`` runs), its word n-grams as the set, rensa's RMinHash
   digest of ``num_perm`` values, written to DIR/parts/<i>.npz;
2. merge: documents whose digests agree on all ``rows`` values of one of ``bands`` bands are
   candidates; a candidate pair whose estimated Jaccard similarity (the share of equal digest
   values) is at least ``threshold`` is a duplicate pair; pairs join clusters (union-find), and each
   cluster keeps its first document in input order (file, then row);
3. the kept documents are written in their input's own format under DIR with the inputs' relative
   names (JSON lines line for line, Parquet with all its columns, a save_to_disk folder's Arrow files
   with its JSON files), under DIR/.writing first, moved into place file by file, dedup.json last.

Defaults and where they come from: word 5-grams (datatrove's MinHash default, which FineMath and
MegaMath used), Jaccard 0.8 (the similarity the recent corpora removed at: MegaMath's 11 bands x 10
rows has its S-curve midpoint at 0.79), 24 bands x 5 rows = 120 values: a pair at 0.8 becomes a
candidate with probability 1 - (1 - 0.8^5)^24 > 0.9999, and the verification by estimated Jaccard
drops the candidates below 0.8. A document with no words, and a null text, is kept and never a
duplicate. Exact duplicates are the case Jaccard 1.
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rensa
import zstandard

from neox.data import readers
from neox.errors import NeoxError

RUN_FILE = "dedup.json"
FORMAT_VERSION = 1
WORD = re.compile(r"\w+")
WRITES = ("jsonl", "parquet", "arrow")  # what the kept documents can be written as (their input's format)
BUCKET_ALL_PAIRS = 64  # a band bucket up to this size has all its pairs verified


class DedupError(NeoxError):
    """A dedup problem; the message is one line naming the file or option."""


@dataclass(frozen=True)
class Params:
    ngram: int = 5
    threshold: float = 0.8
    bands: int = 24
    rows: int = 5
    seed: int = 1
    key: str = "text"

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def check(self) -> None:
        if not 0 < self.threshold <= 1:
            raise DedupError(f"--threshold must be in (0, 1], got {self.threshold}")
        for name in ("ngram", "bands", "rows"):
            if getattr(self, name) < 1:
                raise DedupError(f"--{name} must be >= 1, got {getattr(self, name)}")


def shingles(text: str, n: int) -> list[str]:
    """The word n-grams of ``text`` (all its words as one when it has fewer than n)."""
    words = WORD.findall(text.lower())
    if len(words) <= n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


# ----------------------------------------------------------------------------- 1. signatures


def fingerprint(files: Sequence[str], params: Params) -> dict:
    """What a part was made from: a part of another run is never mixed in."""
    return {"version": FORMAT_VERSION, "params": asdict(params), "rensa": version("rensa"),
            "algorithm": rensa.RMinHash.ALGORITHM_VERSION,
            "files": [{"path": os.path.abspath(f), "bytes": os.path.getsize(f)} for f in files]}


def file_signatures(path: str, params: Params) -> tuple[np.ndarray, np.ndarray]:
    """(digests [rows x num_perm] uint32, has_words [rows] bool) of every row of ``path``."""
    digests, has_words = [], []
    for _, texts, _ in readers.batches(path, params.key, 4096, 64 << 20):
        sets = [shingles(t, params.ngram) if t else [] for t in texts]
        m = rensa.RMinHash.digest_matrix_from_token_sets(sets, num_perm=params.num_perm, seed=params.seed)
        digests.append(np.asarray(m.to_rows(), dtype=np.uint32).reshape(len(sets), params.num_perm))
        has_words.append(np.array([bool(s) for s in sets]))
    if not digests:
        return np.zeros((0, params.num_perm), np.uint32), np.zeros(0, bool)
    return np.concatenate(digests), np.concatenate(has_words)


def part_path(out: str, i: int) -> str:
    return os.path.join(out, "parts", f"{i}.npz")


def _signature_part(task: tuple[int, str, Params, str]) -> tuple[str, int]:
    i, path, params, out = task
    digests, has_words = file_signatures(path, params)
    tmp = part_path(out, i) + f".tmp-{os.getpid()}.npz"
    np.savez(tmp, digests=digests, has_words=has_words)
    os.replace(tmp, part_path(out, i))
    return path, len(has_words)


def scan_shard(files: Sequence[str], params: Params, out: str, shard: tuple[int, int] = (0, 1), workers: int = 1,
               log: Callable[[str], None] = print) -> int:
    """Signatures of the input files of shard I/K into DIR/parts/ (``workers`` processes, one file
    each); returns how many were computed."""
    fp = fingerprint(files, params)
    os.makedirs(os.path.join(out, "parts"), exist_ok=True)
    _write_json(os.path.join(out, "parts", "fingerprint.json"), fp, keep_if_same=True)
    tasks = [(i, path, params, out) for i, path in enumerate(files)
             if i % shard[1] == shard[0] and not os.path.isfile(part_path(out, i))]
    if workers > 1 and len(tasks) > 1:
        with multiprocessing.Pool(min(workers, len(tasks))) as pool:
            done = list(pool.imap(_signature_part, tasks))
    else:
        done = [_signature_part(t) for t in tasks]
    for path, rows in done:
        log(f"dedup: signatures of {path}: {rows} rows")
    return len(done)


# ----------------------------------------------------------------------------- 2. clusters


def candidate_pairs(digests: np.ndarray, bands: int, rows: int, eligible: np.ndarray) -> np.ndarray:
    """Pairs (i < j) of documents whose digests agree on every value of at least one band."""
    ids = np.flatnonzero(eligible)
    pairs = []
    for b in range(bands):
        band = np.ascontiguousarray(digests[ids, b * rows:(b + 1) * rows])
        keys = band.view(np.dtype((np.void, band.dtype.itemsize * rows))).ravel()
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
            members = np.sort(ids[order[s:e]])
            if len(members) > BUCKET_ALL_PAIRS:  # many copies of one text: each with the first and its neighbour
                pairs.append(np.stack([np.full(len(members) - 1, members[0]), members[1:]], axis=1))
                pairs.append(np.stack([members[:-1], members[1:]], axis=1))
                continue
            first, rest = np.meshgrid(members, members, indexing="ij")
            upper = first < rest
            pairs.append(np.stack([first[upper], rest[upper]], axis=1))
    return np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), np.int64)


def clusters(digests: np.ndarray, has_words: np.ndarray, params: Params) -> tuple[np.ndarray, list[dict]]:
    """keep [docs] bool and the clusters ({kept, members, jaccard}) of the whole corpus."""
    pairs = candidate_pairs(digests, params.bands, params.rows, has_words)
    similarity = (digests[pairs[:, 0]] == digests[pairs[:, 1]]).mean(axis=1) if len(pairs) else np.zeros(0)
    duplicate = pairs[similarity >= params.threshold]
    parent = np.arange(len(digests))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    for a, b in duplicate.tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the root is the cluster's first document
    roots = np.array([root(i) for i in range(len(digests))], dtype=np.int64)
    keep = roots == np.arange(len(digests))
    best: dict[int, float] = {}
    for (a, b), s in zip(duplicate.tolist(), similarity[similarity >= params.threshold].tolist()):
        for member in (a, b):
            best[member] = max(best.get(member, 0.0), s)
    groups: dict[int, list[int]] = {}
    for i in np.flatnonzero(~keep).tolist():
        groups.setdefault(int(roots[i]), []).append(i)
    found = [{"kept": r, "removed": members, "jaccard": [round(best[m], 4) for m in members]}
             for r, members in sorted(groups.items())]
    return keep, found


# ----------------------------------------------------------------------------- 3. writing


def relative_names(files: Sequence[str]) -> list[str]:
    """Each input's name under DIR: its path relative to the inputs' common folder."""
    folders = [os.path.dirname(os.path.abspath(f)) for f in files]
    common = os.path.commonpath(folders) if folders else ""
    return [os.path.relpath(os.path.abspath(f), common) for f in files]


def write_kept(path: str, target: str, keep: np.ndarray) -> None:
    """The rows of ``path`` with keep[row] in the same format at ``target`` (rows from 0 here)."""
    fmt = readers.format_of(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if fmt == "jsonl":
        _write_jsonl(path, target, keep)
    elif fmt == "parquet":
        src = pq.ParquetFile(path)
        with pq.ParquetWriter(target, src.schema_arrow) as w:
            start = 0
            for g in range(src.metadata.num_row_groups):  # one row group in memory at a time
                table = src.read_row_group(g)
                w.write_table(table.filter(pa.array(keep[start:start + table.num_rows])))
                start += table.num_rows
    elif fmt == "arrow":
        with pa.memory_map(path) as source:
            reader = pa.ipc.open_stream(source)
            with pa.ipc.new_stream(target, reader.schema) as w:
                start = 0
                for rb in reader:
                    w.write_batch(rb.filter(pa.array(keep[start:start + rb.num_rows])))
                    start += rb.num_rows
    else:
        raise DedupError(f"{path}: dedup writes {', '.join(WRITES)} files; convert this {fmt} archive to "
                         ".jsonl.zst first")


def _open_text(path: str, mode: str):
    if path.endswith(".zst"):
        if "r" in mode:
            return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
        return zstandard.ZstdCompressor().stream_writer(open(path, "wb"), closefd=True)
    if path.endswith(".gz"):
        return gzip.open(path, mode + "b")
    return open(path, mode + "b")


def _write_jsonl(path: str, target: str, keep: np.ndarray) -> None:
    """Kept lines copied byte for byte (every key stays); blank lines are not rows and are dropped."""
    row = 0
    with _open_text(path, "r") as src, _open_text(target, "w") as dst:
        for line in _lines(src):
            if line.strip():
                if keep[row]:
                    dst.write(line if line.endswith(b"\n") else line + b"\n")
                row += 1


def _lines(stream) -> Iterator[bytes]:
    carry = b""
    while chunk := stream.read(1 << 20):
        parts = (carry + chunk).split(b"\n")
        carry = parts.pop()
        yield from (p + b"\n" for p in parts)
    if carry:
        yield carry


def _write_json(path: str, data: dict, keep_if_same: bool = False) -> None:
    if keep_if_same and os.path.isfile(path):
        with open(path) as f:
            if json.load(f) != data:
                raise DedupError(f"{path}: the parts under {os.path.dirname(path)} were made from other inputs or "
                                 "options; use another --out or remove it")
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the run


def prepare(inputs: Sequence[str], params: Params) -> list[str]:
    """The input files, checked before any work (format, text column)."""
    params.check()
    files = readers.resolve_inputs(inputs)
    for f in files:
        if readers.format_of(f) not in WRITES:
            raise DedupError(f"{f}: dedup writes {', '.join(WRITES)} files; convert this archive to .jsonl.zst first")
        readers.check_readable(f, params.key)
    return files


def merge(files: Sequence[str], params: Params, out: str, log: Callable[[str], None] = print) -> dict:
    """Clusters over every part, the kept documents written, DIR/dedup.json and DIR/clusters.jsonl."""
    missing = [part_path(out, i) for i in range(len(files)) if not os.path.isfile(part_path(out, i))]
    if missing:
        raise DedupError(f"{missing[0]}: part missing ({len(missing)} of {len(files)}); run the shards first")
    parts = [np.load(part_path(out, i)) for i in range(len(files))]
    sizes = [len(p["has_words"]) for p in parts]
    digests = np.concatenate([p["digests"] for p in parts]) if parts else np.zeros((0, params.num_perm), np.uint32)
    has_words = np.concatenate([p["has_words"] for p in parts]) if parts else np.zeros(0, bool)
    keep, found = clusters(digests, has_words, params)
    bounds = np.r_[0, np.cumsum(sizes)]
    names = relative_names(files)
    where = [(names[f], r) for f, n in enumerate(sizes) for r in range(n)]
    writing = os.path.join(out, ".writing")
    shutil.rmtree(writing, ignore_errors=True)
    per_source = []
    for i, path in enumerate(files):
        kept = keep[bounds[i]:bounds[i + 1]]
        write_kept(path, os.path.join(writing, names[i]), kept)
        per_source.append({"path": names[i], "input": os.path.abspath(path), "rows": int(len(kept)),
                           "kept": int(kept.sum()), "removed": int((~kept).sum())})
    _copy_dataset_json(files, names, writing)
    with open(os.path.join(writing, "clusters.jsonl"), "w") as f:
        for c in found:
            f.write(json.dumps({"kept": where[c["kept"]], "removed": [where[m] for m in c["removed"]],
                                "jaccard": c["jaccard"]}) + "\n")
    for name in sorted(os.listdir(writing)):  # outputs first, one by one; dedup.json last marks the run done
        target = os.path.join(out, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(writing, name), target)
    os.rmdir(writing)
    record = {**fingerprint(files, params), "documents": int(len(keep)), "kept": int(keep.sum()),
              "removed": int((~keep).sum()), "clusters": len(found), "sources": per_source}
    _write_json(os.path.join(out, RUN_FILE), record)
    log(f"dedup: {record['removed']} of {record['documents']} documents removed in {len(found)} clusters; "
        f"kept documents under {out}, report {os.path.join(out, RUN_FILE)}")
    return record


def _copy_dataset_json(files: Sequence[str], names: Sequence[str], writing: str) -> None:
    """A save_to_disk folder's JSON files (state, dataset info, splits) beside its kept Arrow files."""
    for path, name in zip(files, names):
        if readers.format_of(path) == "arrow":
            src, dst = os.path.dirname(path), os.path.join(writing, os.path.dirname(name))
            for meta in ("state.json", "dataset_info.json"):
                if os.path.isfile(os.path.join(src, meta)) and not os.path.exists(os.path.join(dst, meta)):
                    shutil.copy2(os.path.join(src, meta), os.path.join(dst, meta))
            parent = os.path.dirname(src)
            if os.path.isfile(os.path.join(parent, "dataset_dict.json")):
                shutil.copy2(os.path.join(parent, "dataset_dict.json"),
                             os.path.join(os.path.dirname(dst), "dataset_dict.json"))


def run(inputs: Sequence[str], out: str, params: Params = Params(), shard: tuple[int, int] | None = None,
        workers: int = 1, log: Callable[[str], None] = print) -> dict | None:
    """One shard (returns None), or everything: signatures then merge (returns the record)."""
    files = prepare(inputs, params)
    if shard is not None:
        scan_shard(files, params, out, shard, workers, log)
        return None
    scan_shard(files, params, out, (0, 1), workers, log)
    return merge(files, params, out, log)
