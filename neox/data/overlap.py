"""Test-set overlap: Llemma's n-gram contamination check on tokenized `.bin/.idx` training data.

A test example (one key of one line of a jsonl file) *hits* a training document when they share an
n-gram (n = 30 in Llemma). Units are token ids of our tokenizer (`tokens` mode) or whitespace-split
words of the decoded text (`words` mode, Llemma's definition).

How it is fast without a Python loop per token:
- every n-gram is a 64-bit polynomial hash  sum_j v[s+j] * B^(n-1-j)  (mod 2^64), computed for all
  windows of an array at once from one prefix sum: B is odd, so it has an inverse mod 2^64 and
  H(s) = (C[s+n] - C[s]) * B^(s+n-1) with C the prefix sum of v[k] * B^-k;
- the test side's hashes sit in a sorted array, behind two bitsets (one small enough for the L2
  cache, on the top bits; one on the low bits) that let through ~0.1% of training windows;
- survivors are looked up with `np.searchsorted`, then each candidate is confirmed by comparing
  the actual n-gram with every test n-gram of that hash, and windows that cross a document
  boundary are dropped. A hash collision therefore never counts.

A hit row's `count` is the number of window positions in the document whose n-gram occurs in that
test example's text (under that key).
"""

from __future__ import annotations

import json
import math
import os
import struct
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from typing import Any, cast

import numpy as np

from neox.data import readers
from neox.data.tokenizer import HFTokenizer, SentencePieceTokenizer
from neox.errors import NeoxError
from neox.paths import sha256_of

HASH_BASE = 0x9E3779B97F4A7C15  # odd, so invertible mod 2^64
BYTE_BASE = 0xC2B2AE3D27D4EB4F  # another odd base for hashing the bytes of one word
MODES = ("tokens", "words")
CHUNK_TOKENS = 1 << 17  # tokens per numpy pass in tokens mode (arrays stay in cache)
WORDS_CHUNK_TOKENS = 1 << 18  # tokens decoded per batch in words mode
PIECE_TOKENS = 1 << 24  # unit of work handed to a worker process
FORMAT_VERSION = 1


class OverlapError(NeoxError):
    """A user-facing error; the CLI prints it as one `error: ...` line."""


# ---------------------------------------------------------------- hashing

_POWERS: dict[int, np.ndarray] = {}


def powers(base: int, m: int) -> np.ndarray:
    """base^0 .. base^(m-1) mod 2^64 (cached, grown by doubling)."""
    have = _POWERS.get(base)
    if have is None or have.size < m:
        size = max(m, 2 * (0 if have is None else have.size), 1024)
        p = np.full(size, base, dtype=np.uint64)
        p[0] = 1
        _POWERS[base] = have = np.cumprod(p)  # uint64 products wrap: arithmetic mod 2^64
    return have[:m]


def inverse_mod(base: int) -> int:
    return pow(base, -1, 1 << 64)


def _prefix_sums(values: np.ndarray, base: int) -> np.ndarray:
    """C with C[0] = 0 and C[k+1] = sum_{i<=k} values[i] * base^-i (mod 2^64)."""
    m = values.size
    x = np.multiply(values.astype(np.uint64, copy=False), powers(inverse_mod(base), m))
    c = np.empty(m + 1, dtype=np.uint64)
    c[0] = 0
    np.cumsum(x, out=c[1:])
    return c


def window_hashes(values: np.ndarray, n: int, base: int = HASH_BASE) -> np.ndarray:
    """Hash of values[s:s+n] for every s in [0, len - n], one uint64 each (empty if too short)."""
    m = values.size
    if m < n:
        return np.empty(0, dtype=np.uint64)
    c = _prefix_sums(values, base)
    h = c[n:] - c[:-n]
    h *= powers(base, m)[n - 1:]
    return h


def span_hashes(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, base: int) -> np.ndarray:
    """Hash of values[starts[i]:ends[i]] for variable-length spans (used for the bytes of words)."""
    c = _prefix_sums(values, base)
    return (c[ends] - c[starts]) * powers(base, values.size + 1)[ends - 1]


def split_words(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Words of a normalised byte buffer (words separated by one space, documents by one newline):
    (starts, ends, document number of each word)."""
    sep = (buf == 32) | (buf == 10)
    edges = np.flatnonzero(np.diff(np.concatenate(([True], sep, [True])).astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]  # a word starts where sep goes 1 -> 0 and ends at 0 -> 1
    return starts, ends, np.searchsorted(np.flatnonzero(buf == 10), starts)


def normalise_text(text: str) -> str:
    """Llemma's words are `text.split()`; rejoined with single spaces, so n-grams compare as bytes."""
    return " ".join(text.split())


def word_values(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    starts, ends, docs = split_words(buf)
    return starts, ends, docs, span_hashes(buf, starts, ends, BYTE_BASE)


class _Bitset:
    """Membership prefilter on `bits` bits of a hash (top bits, or low bits when low=True)."""

    def __init__(self, hashes: np.ndarray, bits: int, low: bool):
        self.low, self.bits = low, bits
        self.shift = np.uint64(64 - bits)
        self.mask = np.uint64((1 << bits) - 1)
        flags = np.zeros(1 << bits, dtype=bool)
        flags[self._slot(hashes)] = True
        self.table = np.packbits(flags, bitorder="little")

    def _slot(self, h):
        return h & self.mask if self.low else h >> self.shift

    def __call__(self, h: np.ndarray) -> np.ndarray:
        i = self._slot(h)
        byte = self.table[i >> np.uint64(3)]
        return ((byte >> (i & np.uint64(7)).astype(np.uint8)) & 1).view(bool)


# ---------------------------------------------------------------- test side

@dataclass
class Examples:
    path: str
    keys: list[str]
    texts: dict[str, list[str]]  # key -> text of each example
    line_numbers: list[int]  # 0-based line of each example in the file

    @property
    def size(self) -> int:
        return len(self.line_numbers)


def read_test_file(path: str, keys: list[str]) -> Examples:
    """The test examples of a JSON lines file (one per line) or a Parquet file (one per row; a hub
    benchmark); one-line errors for a missing file, bad JSON, a missing key, no examples."""
    if not os.path.isfile(path):
        raise OverlapError(f"{path}: test file not found")
    if readers.format_of(path) in ("parquet", "arrow"):
        return _read_test_table(path, keys)
    texts: dict[str, list[str]] = {k: [] for k in keys}
    lines = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError as e:
                raise OverlapError(f"{path}:{lineno + 1}: line is not valid JSON ({e})") from None
            for k in keys:
                if not isinstance(doc, dict) or k not in doc:
                    have = ", ".join(sorted(doc)) if isinstance(doc, dict) else type(doc).__name__
                    raise OverlapError(f"{path}:{lineno + 1}: no {k!r} key (has: {have}); pick one with --test-key")
                if not isinstance(doc[k], str):
                    raise OverlapError(f"{path}:{lineno + 1}: {k!r} is not a string but {type(doc[k]).__name__}")
                texts[k].append(doc[k])
            lines.append(lineno)
    if not lines:
        raise OverlapError(f"{path}: test file is empty (no examples)")
    return Examples(path, list(keys), texts, lines)


def _read_test_table(path: str, keys: list[str]) -> Examples:
    try:
        columns = readers.table_columns(path, keys)
    except readers.MissingColumn as e:
        raise OverlapError(f"{e}; pick one with --test-key") from None
    except readers.ReadError as e:
        raise OverlapError(str(e)) from None
    rows = len(columns[keys[0]]) if keys else 0
    for k in keys:
        bad = next((i for i, v in enumerate(columns[k]) if not isinstance(v, str)), None)
        if bad is not None:
            raise OverlapError(f"{path}: row {bad + 1}: {k!r} is not a string but {type(columns[k][bad]).__name__}")
    if not rows:
        raise OverlapError(f"{path}: test file is empty (no examples)")
    return Examples(path, list(keys), {k: columns[k] for k in keys}, list(range(rows)))


@dataclass
class NgramIndex:
    """The distinct n-grams of every (example, key), hashed; entries sorted by hash."""
    n: int
    mode: str
    keys: list[str]
    num_examples: int
    uniq: np.ndarray  # sorted distinct hashes
    first: np.ndarray  # entries of uniq[u] are first[u]:first[u+1]
    ent_example: np.ndarray  # example number (0-based among examples) of each entry
    ent_key: np.ndarray  # key number of each entry
    ent_pos: np.ndarray  # where the n-gram starts in `units`
    units: np.ndarray  # tokens mode: concatenated token ids; words mode: word numbers
    word_starts: np.ndarray | None = None  # words mode: byte span of each word in `text_bytes`
    word_ends: np.ndarray | None = None
    text_bytes: bytes = b""
    filters: list = field(default_factory=list)

    @property
    def num_ngrams(self) -> int:
        return int(self.ent_pos.size)


def build_index(tests: Examples, n: int, mode: str, sp: HFTokenizer | SentencePieceTokenizer) -> NgramIndex:
    """Hash the n-grams of each example's text under each key (no n-gram crosses two examples)."""
    texts = [(ki, ei, t) for ki, k in enumerate(tests.keys) for ei, t in enumerate(tests.texts[k])]
    word_starts = word_ends = None
    text_bytes = b""
    if mode == "tokens":
        pieces = sp.encode_batch([t for _, _, t in texts])
        lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        units = np.concatenate([np.asarray(p, dtype=np.int64) for p in pieces] + [np.empty(0, np.int64)])
        hash_input = units
    elif mode == "words":
        text_bytes = "\n".join(normalise_text(t) for _, _, t in texts).encode("utf-8")
        buf = np.frombuffer(text_bytes, dtype=np.uint8)
        word_starts, word_ends, owner, hash_input = word_values(buf)
        lengths = np.bincount(owner, minlength=len(texts)).astype(np.int64)
        units = np.arange(word_starts.size, dtype=np.int64)
    else:
        raise OverlapError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    h = window_hashes(hash_input, n)
    ends = np.cumsum(lengths)
    owner_of = np.repeat(np.arange(len(texts)), lengths)[: h.size]
    pos = np.flatnonzero(np.arange(h.size) + n <= ends[owner_of])  # the window lies within one text
    h, owner_of = h[pos], owner_of[pos]
    order = np.argsort(h, kind="stable")
    h, pos, owner_of = h[order], pos[order], owner_of[order]
    # one entry per (n-gram, example, key): a text repeating an n-gram must not multiply the pairs
    # to compare (within equal hashes the owners are ascending, so repeats are adjacent)
    first_of_run = np.concatenate(([True], (h[1:] != h[:-1]) | (owner_of[1:] != owner_of[:-1])))
    h, pos, owner_of = h[first_of_run], pos[first_of_run], owner_of[first_of_run]
    key_of = np.array([k for k, _, _ in texts], dtype=np.int8)
    example_of = np.array([e for _, e, _ in texts], dtype=np.int32)
    uniq, first = np.unique(h, return_index=True)
    first = np.append(first, h.size).astype(np.int64)
    index = NgramIndex(n, mode, list(tests.keys), tests.size, uniq, first, example_of[owner_of], key_of[owner_of],
                       pos, units, word_starts, word_ends, text_bytes)
    bits = max(10, math.ceil(math.log2(max(uniq.size, 1))))
    index.filters = [_Bitset(uniq, min(bits + 3, 24), low=False), _Bitset(uniq, min(bits + 6, 32), low=True)]
    return index


def candidates(index: NgramIndex, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Window positions whose hash is a test hash, and that hash's number in index.uniq."""
    pos = np.arange(h.size)
    for f in index.filters:
        keep = f(h)
        pos, h = pos[keep], h[keep]
    if not h.size or not index.uniq.size:
        return pos[:0], pos[:0]
    u = np.minimum(np.searchsorted(index.uniq, h), index.uniq.size - 1)
    ok = index.uniq[u] == h
    return pos[ok], u[ok]


def expand_entries(index: NgramIndex, pos: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One (position, entry) pair per test n-gram that shares the window's hash."""
    lo = index.first[u]
    cnt = index.first[u + 1] - lo
    rep = np.repeat(np.arange(pos.size), cnt)
    offset = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    return pos[rep], lo[rep] + offset


# ---------------------------------------------------------------- training side

@dataclass
class Dataset:
    """One `.bin/.idx` pair: document (sequence) lengths and token offsets; the .bin memory-mapped."""
    prefix: str
    dtype: np.dtype
    lengths: np.ndarray  # int64 tokens per document
    starts: np.ndarray  # int64 token offset of each document in the .bin
    vocab_size: int | None  # from the manifest, when there is one
    _tokens: np.ndarray | None = None

    @property
    def num_docs(self) -> int:
        return int(self.lengths.size)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def tokens(self) -> np.ndarray:
        if self._tokens is None:  # opened lazily, so that forked workers map it themselves
            self._tokens = np.memmap(self.prefix + ".bin", dtype=self.dtype, mode="r")
        return self._tokens


def open_dataset(prefix: str) -> Dataset:
    """Read the .idx with megatron-core's reader and check that the .bin belongs to it."""
    for ext in (".idx", ".bin"):
        if not os.path.isfile(prefix + ext):
            raise OverlapError(f"{prefix}{ext}: not found (--data takes the prefix without .bin/.idx)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # megatron.core warns about missing Apex/Transformer Engine
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    try:
        index = IndexedDataset(prefix).index
    except (AssertionError, ValueError, struct.error) as e:
        raise OverlapError(f"{prefix}.idx: not a megatron-core MMIDIDX index ({e})") from None
    dtype = np.dtype(index.dtype)
    lengths = index.sequence_lengths.astype(np.int64)
    pointers = index.sequence_pointers.astype(np.int64)
    del index
    expected = int(pointers[-1] + lengths[-1] * dtype.itemsize) if lengths.size else 0
    actual = os.path.getsize(prefix + ".bin")
    if actual != expected or (pointers % dtype.itemsize).any():
        raise OverlapError(f"{prefix}.bin: {actual} bytes, but {prefix}.idx describes {expected} bytes of "
                           f"{dtype.name}: the .bin and .idx are not a pair")
    starts = pointers // dtype.itemsize
    if lengths.size and (starts[1:] != starts[:-1] + lengths[:-1]).any():
        raise OverlapError(f"{prefix}.idx: documents are not contiguous in {prefix}.bin")
    return Dataset(prefix, dtype, lengths, starts, _manifest_vocab(prefix))


def _manifest_vocab(prefix: str) -> int | None:
    try:
        with open(prefix + ".manifest.json") as f:
            return int(json.load(f)["tokenizer"]["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_vocab(ds: Dataset, vocab_size: int, tokenizer_path: str) -> None:
    if ds.vocab_size is not None and ds.vocab_size > vocab_size:
        raise OverlapError(f"{tokenizer_path}: vocabulary of {vocab_size} pieces, but {ds.prefix} was written with a "
                           f"vocabulary of {ds.vocab_size} ({ds.prefix}.manifest.json): wrong tokenizer")


def split_range(starts: np.ndarray, lo: int, hi: int, parts: int, part: int) -> tuple[int, int]:
    """Documents [a, b) of `part` (0-based) of `parts` contiguous, token-balanced ranges of [lo, hi)."""
    if hi <= lo:
        return lo, lo
    base, total = int(starts[lo]), int(starts[hi - 1]) - int(starts[lo]) + 1

    def cut(i: int) -> int:
        if i >= parts:
            return hi
        return lo + int(np.searchsorted(starts[lo:hi], base + total * i // parts, side="left"))

    return cut(part), cut(part + 1)


class _Hits:
    """Confirmed (document, example, key, position) matches, aggregated per (document, example, key)."""

    def __init__(self):
        self.cols = []

    def add(self, doc: np.ndarray, example: np.ndarray, key: np.ndarray, pos: np.ndarray) -> None:
        if doc.size:
            self.cols.append(np.stack([doc, example, key.astype(np.int64), pos]).astype(np.int64))

    def groups(self) -> list[tuple[int, int, int, int, int]]:
        """[(doc, example, key, count, first position)] sorted; a position counts once per group."""
        if not self.cols:
            return []
        cols = np.concatenate(self.cols, axis=1)
        rows = cols[:, np.lexsort(cols[::-1])].T  # sorted by document, example, key, position
        rows = rows[np.concatenate(([True], (np.diff(rows, axis=0) != 0).any(axis=1)))]  # distinct
        change = np.flatnonzero((np.diff(rows[:, :3], axis=0) != 0).any(axis=1)) + 1
        bounds = np.concatenate(([0], change, [len(rows)]))
        return [(int(rows[a, 0]), int(rows[a, 1]), int(rows[a, 2]), int(b - a), int(rows[a, 3]))
                for a, b in zip(bounds[:-1], bounds[1:])]


def _check_ids(ds: Dataset, toks: np.ndarray, offset: int, vocab_size: int, tokenizer_path: str):
    """toks = ds.tokens()[offset:...]: every id must be a piece of the tokenizer."""
    if toks.size and int(toks.max()) >= vocab_size:
        bad = int(np.flatnonzero(toks >= vocab_size)[0])
        doc = int(np.searchsorted(ds.starts, offset + bad, side="right")) - 1
        raise OverlapError(f"{ds.prefix}.bin: token id {int(toks[bad])} (document {doc}) is not in the "
                           f"vocabulary of {tokenizer_path} ({vocab_size} pieces): wrong tokenizer")


def scan_tokens(ds: Dataset, lo: int, hi: int, index: NgramIndex, sp: HFTokenizer | SentencePieceTokenizer,
                tokenizer_path: str, chunk: int = CHUNK_TOKENS) -> list[tuple[int, int, int, int, str]]:
    """Hit rows of documents [lo, hi) in tokens mode."""
    n, hits = index.n, _Hits()
    if hi <= lo:
        return []
    a, b = int(ds.starts[lo]), int(ds.starts[hi - 1] + ds.lengths[hi - 1])
    doc_starts = ds.starts[lo:hi]
    doc_ends = doc_starts + ds.lengths[lo:hi]
    all_tokens = ds.tokens()
    for c0 in range(a, b, chunk):
        toks = np.asarray(all_tokens[c0:min(c0 + chunk + n - 1, b)])
        _check_ids(ds, toks, c0, sp.vocab_size, tokenizer_path)
        pos, u = candidates(index, window_hashes(toks, n))
        g = pos + c0
        doc = np.searchsorted(doc_starts, g, side="right") - 1
        inside = g + n <= doc_ends[doc]  # the window lies within one document
        pos, u, doc = pos[inside], u[inside], doc[inside]
        pos_e, ent = expand_entries(index, pos, u)
        w = np.arange(n)
        same = (toks[pos_e[:, None] + w] == index.units[index.ent_pos[ent][:, None] + w]).all(axis=1)
        keep = np.searchsorted(pos, pos_e[same])  # pos is sorted: map each pair back to its window
        hits.add(doc[keep] + lo, index.ent_example[ent[same]], index.ent_key[ent[same]], pos_e[same] + c0)
    return [(d, e, k, c, sp.decode(all_tokens[p:p + n].astype(np.int64).tolist()))
            for d, e, k, c, p in hits.groups()]


def scan_words(ds: Dataset, lo: int, hi: int, index: NgramIndex, sp: HFTokenizer | SentencePieceTokenizer,
               tokenizer_path: str, chunk: int = WORDS_CHUNK_TOKENS) -> list[tuple[int, int, int, int, str]]:
    """Hit rows of documents [lo, hi) in words mode: decode, whitespace-split, hash words, then n-grams."""
    rows_text: dict[tuple[int, int, int, int], str]
    n, hits, rows_text = index.n, _Hits(), {}
    all_tokens, vocab = ds.tokens(), sp.vocab_size
    d0 = lo
    while d0 < hi:  # a batch of whole documents of about `chunk` tokens (at least one)
        d1 = max(d0 + 1, int(np.searchsorted(ds.starts, ds.starts[d0] + chunk, side="left")))
        d1 = min(d1, hi)
        a, b = int(ds.starts[d0]), int(ds.starts[d1 - 1] + ds.lengths[d1 - 1])
        toks = np.asarray(all_tokens[a:b])
        _check_ids(ds, toks, a, vocab, tokenizer_path)
        pieces = [toks[s:s + ln] for s, ln in zip((ds.starts[d0:d1] - a).tolist(), ds.lengths[d0:d1].tolist())]
        text = "\n".join(normalise_text(t) for t in sp.decode_batch(pieces)).encode("utf-8")
        buf = np.frombuffer(text, dtype=np.uint8)
        ws, we, wdoc, vals = word_values(buf)
        pos, u = candidates(index, window_hashes(vals, n))
        inside = wdoc[pos] == wdoc[pos + n - 1] if pos.size else pos.astype(bool)
        pos, u = pos[inside], u[inside]
        for p, e in zip(*expand_entries(index, pos, u)):
            tp = index.ent_pos[e]
            gram = text[ws[p]:we[p + n - 1]]
            # never None in words mode: build_index sets word_starts and word_ends
            if gram == index.text_bytes[cast(np.ndarray, index.word_starts)[tp]:
                                        cast(np.ndarray, index.word_ends)[tp + n - 1]]:
                key = (int(wdoc[p]) + d0, int(index.ent_example[e]), int(index.ent_key[e]), int(p))
                rows_text.setdefault(key, gram.decode("utf-8"))
                hits.add(*(np.array([x]) for x in key))
        d0 = d1
    # positions are word numbers within the batch; a document lies in one batch
    return [(d, e, k, c, rows_text[(d, e, k, p)]) for d, e, k, c, p in hits.groups()]


SCANNERS = {"tokens": scan_tokens, "words": scan_words}


# ---------------------------------------------------------------- identity, parts and merging


def fingerprint(test_file: str, keys: Iterable[str], n: int, mode: str, tokenizer: str, datasets: Iterable[Dataset],
                shards: int) -> dict:
    """What must be equal for parts to belong to one run (checked by resume and by merge)."""
    return {"version": FORMAT_VERSION, "test_file": os.path.abspath(test_file), "test_sha256": sha256_of(test_file),
            "test_keys": list(keys), "n": n, "mode": mode, "tokenizer_sha256": sha256_of(tokenizer),
            "data": [{"prefix": os.path.abspath(d.prefix), "documents": d.num_docs, "tokens": d.num_tokens,
                      "bin_bytes": os.path.getsize(d.prefix + ".bin")} for d in datasets],
            "shards": shards}


def part_name(shard: int, shards: int) -> str:
    return f"part-{shard:05d}-of-{shards:05d}"


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def write_lines_atomic(path: str, rows: Iterable[dict]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def hit_rows(groups: Iterable[tuple[int, int, int, int, str]], index: NgramIndex, tests: Examples,
             prefix: str) -> list[dict]:
    return [{"test_id": tests.line_numbers[e], "key": index.keys[k], "data": prefix, "doc": d, "count": c,
             "ngram": g} for d, e, k, c, g in groups]


def sort_rows(rows: list[dict], prefixes: list[str], keys: list[str]) -> list[dict]:
    order = {p: i for i, p in enumerate(prefixes)}
    korder = {k: i for i, k in enumerate(keys)}
    return sorted(rows, key=lambda r: (order[r["data"]], r["doc"], r["test_id"], korder[r["key"]]))


def summarize(parts: list[dict], rows: list[dict]) -> dict:
    """summary.json of a run from its parts' metadata and all hit rows (identical for 1 or K parts)."""
    meta = parts[0]
    keys, prefixes = meta["test_keys"], [d["prefix"] for d in meta["data"]]
    per_data = {}
    for i, p in enumerate(prefixes):
        mine = [r for r in rows if r["data"] == p]
        per_data[p] = {
            "documents": meta["data"][i]["documents"],
            "tokens": meta["data"][i]["tokens"],
            "documents_scanned": sum(pt["data"][i]["documents_scanned"] for pt in parts),
            "tokens_scanned": sum(pt["data"][i]["tokens_scanned"] for pt in parts),
            "test_examples_with_hits": _count_by_key(mine, keys, "test_id"),
            "documents_with_hits": _count_by_key(mine, keys, "doc"),
        }
    return {
        "test_file": meta["test_file"], "test_keys": keys, "n": meta["n"], "mode": meta["mode"],
        "test_examples": meta["test_examples"],
        "test_examples_with_hits": _count_by_key(rows, keys, "test_id"),
        "data": per_data,
        "documents_scanned": sum(v["documents_scanned"] for v in per_data.values()),
        "tokens_scanned": sum(v["tokens_scanned"] for v in per_data.values()),
        "seconds": round(sum(pt["seconds"] for pt in parts), 3),
        "parts": len(parts),
    }


def _count_by_key(rows, keys, field_name):
    out = {"any": len({r[field_name] for r in rows})}
    for k in keys:
        out[k] = len({r[field_name] for r in rows if r["key"] == k})
    return out


# ---------------------------------------------------------------- one run (or one shard of it)

WORK: dict = {}  # set in the parent before forking workers: the index, datasets, tokenizer path


def open_tokenizer(path: str) -> HFTokenizer | SentencePieceTokenizer:
    """The data's tokenizer (neox.data.tokenizer): a SentencePiece model or a Hugging Face tokenizer.json."""
    from neox.data.tokenizer import TokenizerError, load_tokenizer

    try:
        return load_tokenizer(path, require_eos=False)
    except TokenizerError as e:
        raise OverlapError(str(e)) from None
    except (OSError, RuntimeError) as e:
        raise OverlapError(f"{path}: cannot load the SentencePiece model ({e})") from None


def scan_piece(piece: tuple[int, int, int]) -> tuple[int, int, int, list[tuple[int, int, int, int, str]]]:
    """Worker: the hit groups of documents [lo, hi) of dataset number di."""
    di, lo, hi = piece
    w = WORK
    if w.get("sp_pid") != os.getpid():  # one tokenizer per process and run
        w["sp"], w["sp_pid"] = open_tokenizer(w["tokenizer"]), os.getpid()
    ds = w["datasets"][di]
    groups = SCANNERS[w["index"].mode](ds, lo, hi, w["index"], w["sp"], w["tokenizer"], **w["chunk"])
    tokens = int(ds.lengths[lo:hi].sum())
    return di, hi - lo, tokens, groups


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, k = (int(x) for x in text.split("/"))
    except ValueError:
        raise OverlapError(f"--shard {text!r}: expected I/K, e.g. 0/16 (I counts from 0)") from None
    if not (k >= 1 and 0 <= i < k):
        raise OverlapError(f"--shard {text!r}: need 0 <= I < K")
    return i, k


def prepare(test_file: str, keys: list[str], data: Sequence[str], tokenizer: str, n: int,
            mode: str) -> tuple[Examples, HFTokenizer | SentencePieceTokenizer, list[Dataset]]:
    """Everything cheap that can be wrong, checked before any scanning."""
    if n < 1:
        raise OverlapError(f"--n {n}: must be at least 1")
    if mode not in MODES:
        raise OverlapError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    if len(set(data)) != len(data):
        raise OverlapError("--data names the same prefix twice")
    tests = read_test_file(test_file, keys)
    if not os.path.isfile(tokenizer):
        raise OverlapError(f"{tokenizer}: tokenizer model not found")
    sp = open_tokenizer(tokenizer)
    datasets = [open_dataset(p) for p in data]
    for ds in datasets:
        check_vocab(ds, sp.vocab_size, tokenizer)
    return tests, sp, datasets


def run(test_file: str, keys: list[str], data: Sequence[str], tokenizer: str, out: str, n: int = 30,
        mode: str = "tokens", workers: int = 1, shard: tuple[int, int] = (0, 1), progress: bool = True,
        piece_tokens: int = PIECE_TOKENS, chunk: dict[str, int] | None = None,
        log: Callable[[str], None] = print) -> dict:
    """Scan shard `shard` = (I, K) into out/parts/; with K == 1 also write hits.jsonl and summary.json.

    Returns the part's metadata (K > 1) or the summary (K == 1). A finished part is not redone.
    """
    from tqdm import tqdm

    tests, sp, datasets = prepare(test_file, keys, data, tokenizer, n, mode)
    fp = fingerprint(test_file, keys, n, mode, tokenizer, datasets, shard[1])
    parts_dir = os.path.join(out, "parts")
    base = os.path.join(parts_dir, part_name(*shard))
    meta = load_part(base, fp)
    if meta is not None:
        log(f"{base}.json: shard {shard[0]}/{shard[1]} already done, not redone")
    else:
        t0 = time.monotonic()
        index = build_index(tests, n, mode, sp)
        log(f"test side: {tests.size} examples x {len(keys)} keys, {index.num_ngrams} {n}-grams "
            f"({index.uniq.size} distinct), mode {mode}")
        ranges = [split_range(ds.starts, 0, ds.num_docs, shard[1], shard[0]) for ds in datasets]
        pieces = [(di, a, b) for di, (ds, (lo, hi)) in enumerate(zip(datasets, ranges))
                  for a, b in piece_ranges(ds, lo, hi, piece_tokens)]
        total = sum(int(ds.lengths[lo:hi].sum()) for ds, (lo, hi) in zip(datasets, ranges))
        WORK.clear()  # nothing of an earlier run in this process (its tokenizer) is reused
        WORK.update(index=index, datasets=datasets, tokenizer=tokenizer, chunk=chunk or {})
        groups: list[list[tuple[int, int, int, int, str]]] = [[] for _ in datasets]
        scanned = [[0, 0] for _ in datasets]
        pool = worker_pool(workers, len(pieces))  # forked before tqdm starts its monitor thread
        try:
            results = pool.imap_unordered(scan_piece, pieces) if pool else map(scan_piece, pieces)
            with tqdm(total=total, unit="tok", unit_scale=True, desc=f"overlap {shard[0]}/{shard[1]}",
                      disable=not progress, mininterval=1.0) as bar:
                for di, docs, tokens, g in results:
                    groups[di] += g
                    scanned[di][0] += docs
                    scanned[di][1] += tokens
                    bar.update(tokens)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        rows = sort_rows([r for di, ds in enumerate(datasets) for r in hit_rows(groups[di], index, tests, data[di])],
                         list(data), list(keys))
        meta = {"fingerprint": fp, "shard": shard[0], "shards": shard[1], "test_file": test_file,
                "test_keys": list(keys), "n": n, "mode": mode, "test_examples": tests.size,
                "data": [{"prefix": p, "documents": ds.num_docs, "tokens": ds.num_tokens, "doc_range": list(r),
                          "documents_scanned": s[0], "tokens_scanned": s[1]}
                         for p, ds, r, s in zip(data, datasets, ranges, scanned)],
                "hits": len(rows), "seconds": round(time.monotonic() - t0, 3)}
        os.makedirs(parts_dir, exist_ok=True)
        write_lines_atomic(base + ".jsonl", rows)
        write_json_atomic(base + ".json", meta)  # last: its presence marks the part done
    if shard[1] == 1:  # this run's one part only, whatever else the directory holds
        return combine_parts([base + ".json"], out, where=parts_dir)
    return meta


def piece_ranges(ds: Dataset, lo: int, hi: int, piece_tokens: int) -> list[tuple[int, int]]:
    if hi <= lo:
        return []
    total = int(ds.starts[hi - 1] + ds.lengths[hi - 1] - ds.starts[lo])
    k = max(1, -(-total // piece_tokens))
    return [r for r in (split_range(ds.starts, lo, hi, k, i) for i in range(k)) if r[1] > r[0]]


def worker_pool(workers: int, pieces: int) -> Pool | None:
    if workers <= 1 or pieces <= 1:
        return None
    import multiprocessing

    return multiprocessing.get_context("fork").Pool(min(workers, pieces))


def load_part(base: str, fp: dict) -> dict | None:
    """The finished part's metadata if it was made by this same run, None if there is none."""
    try:
        with open(base + ".json") as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        raise OverlapError(f"{base}.json: not valid JSON (remove it to redo the part)") from None
    if meta.get("fingerprint") != fp:
        diff = sorted(k for k in set(fp) | set(meta.get("fingerprint", {}))
                      if fp.get(k) != meta.get("fingerprint", {}).get(k))
        raise OverlapError(f"{base}.json: made by a different run (differs in {', '.join(diff)}); "
                           f"use another --out or remove {os.path.dirname(base)}")
    if not os.path.isfile(base + ".jsonl"):
        raise OverlapError(f"{base}.jsonl: missing next to its .json (remove the .json to redo the part)")
    return meta


def merge(dirs: list[str], out: str | None = None) -> dict:
    """Combine the parts under DIR/parts/ of `dirs` into out/hits.jsonl and out/summary.json."""
    paths = []
    for d in dirs:
        parts_dir = os.path.join(d, "parts")
        names = sorted(f for f in os.listdir(parts_dir) if f.endswith(".json")) if os.path.isdir(parts_dir) else []
        if not names:
            raise OverlapError(f"{parts_dir}: no finished parts")
        paths += [os.path.join(parts_dir, name) for name in names]
    return combine_parts(paths, out or dirs[0], where=", ".join(dirs))


def combine_parts(paths: list[str], out: str, where: str) -> dict:
    found: dict[int, tuple[str, dict]] = {}
    for path in paths:
        try:
            with open(path) as f:
                meta = json.load(f)
        except ValueError:
            raise OverlapError(f"{path}: not valid JSON (remove it and rerun that shard)") from None
        found.setdefault(meta["shard"], (path, meta))
    first_path, first = next(iter(found.values()))
    for path, meta in found.values():
        if meta["fingerprint"] != first["fingerprint"]:
            raise OverlapError(f"{path}: made by a different run than {first_path}")
    missing = sorted(set(range(first["shards"])) - set(found))
    if missing:
        raise OverlapError(f"shards {', '.join(map(str, missing))} of {first['shards']} are not finished "
                           f"(no {part_name(missing[0], first['shards'])}.json under {where})")
    parts = [found[i][1] for i in range(first["shards"])]
    prefixes = [d["prefix"] for d in first["data"]]
    rows = []
    for i, meta in enumerate(parts):  # shards may spell a prefix differently: report the first's spelling
        spelling = {d["prefix"]: p for d, p in zip(meta["data"], prefixes)}
        with open(found[i][0][:-len(".json")] + ".jsonl") as f:
            rows += [dict(r, data=spelling[r["data"]]) for r in map(json.loads, f) if r]
    rows = sort_rows(rows, prefixes, first["test_keys"])
    summary = summarize(parts, rows)
    os.makedirs(out, exist_ok=True)
    write_lines_atomic(os.path.join(out, "hits.jsonl"), rows)
    write_json_atomic(os.path.join(out, "summary.json"), summary)
    return summary


# ---------------------------------------------------------------- accuracy by overlap (Llemma's table)

def _read_jsonl(path: str, what: str) -> list[tuple[int, dict]]:
    if not os.path.isfile(path):
        raise OverlapError(f"{path}: {what} not found")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f):
            if line.strip():
                try:
                    out.append((lineno, json.loads(line)))
                except ValueError as e:
                    raise OverlapError(f"{path}:{lineno + 1}: line is not valid JSON ({e})") from None
    return out


def _sample_correct(rec: dict, path: str, lineno: int) -> bool:
    """A record of tools/run_eval.py's samples/<task>.jsonl: maj@k's verdict (at k = 1: the greedy one)."""
    if "maj_correct" in rec:
        return bool(rec["maj_correct"])
    if isinstance(rec.get("correct"), list) and rec["correct"]:
        return bool(rec["correct"][0])
    raise OverlapError(f"{path}:{lineno + 1}: sample has neither 'maj_correct' nor 'correct' (not scored?)")


def join(hits_dir: str, samples: str, test_file: str | None = None, keys: list[str] | None = None) -> dict:
    """Accuracy on test examples with and without hits, overall and per MATH level.

    Samples are matched to test lines by `doc_id` (= test_id, the 0-based line); when a sample
    carries its `problem` text, it must be one of that line's values, so a samples file made from
    another test file is refused instead of silently mis-joined."""
    summary_path = os.path.join(hits_dir, "summary.json")
    if not os.path.isfile(summary_path):
        raise OverlapError(f"{summary_path}: not found (run the check, or `merge` its shards, first)")
    with open(summary_path) as f:
        summary = json.load(f)
    test_file = test_file or summary["test_file"]
    keys = keys or summary["test_keys"]
    unknown = sorted(set(keys) - set(summary["test_keys"]))
    if unknown:
        raise OverlapError(f"--key {unknown[0]!r}: the check ran on keys {', '.join(summary['test_keys'])}")
    lines = dict(_read_jsonl(test_file, "test file"))
    hit_ids = {r["test_id"] for _, r in _read_jsonl(os.path.join(hits_dir, "hits.jsonl"), "hits file")
               if r["key"] in keys}
    groups: dict[str, dict[str, list[bool]]] = {}
    for lineno, rec in _read_jsonl(samples, "samples file"):
        test_id = rec.get("doc_id")
        if test_id not in lines:
            raise OverlapError(f"{samples}:{lineno + 1}: doc_id {test_id!r} is not a line of {test_file}")
        if "problem" in rec and rec["problem"] not in lines[test_id].values():
            raise OverlapError(f"{samples}:{lineno + 1}: problem text differs from {test_file} line {test_id} "
                               f"(samples made from another test file?)")
        side = "hits" if test_id in hit_ids else "non_hits"
        for level in ("all", str(lines[test_id].get("level", "")) or None):
            if level is not None:
                groups.setdefault(level, {"hits": [], "non_hits": []})[side].append(
                    _sample_correct(rec, samples, lineno))
    if not groups:
        raise OverlapError(f"{samples}: no samples")
    table = {"hits_dir": hits_dir, "samples": samples, "keys": list(keys), "n": summary["n"],
             "mode": summary["mode"], "rows": []}
    for level in sorted(groups, key=lambda g: (g == "all", g)):
        row: dict[str, object] = {"level": level}
        for side, xs in groups[level].items():
            row[side] = {"n": len(xs), "accuracy": round(sum(xs) / len(xs), 4) if xs else None}
        table["rows"].append(row)
    return table


def accuracy_markdown(table: dict) -> str:
    def cell(x: dict) -> str:
        return "-" if x["accuracy"] is None else f"{100 * x['accuracy']:.1f}% (n={x['n']})"

    lines = [f"Accuracy by overlap ({table['mode']} {table['n']}-grams of {', '.join(table['keys'])})", "",
             "| level | hits | non-hits |", "|---|---|---|"]
    lines += [f"| {r['level']} | {cell(r['hits'])} | {cell(r['non_hits'])} |" for r in table["rows"]]
    return "\n".join(lines) + "\n"
