"""Checks of the tokenized data before step 1: each .idx against its .bin, and the data's
tokenizer against the run's. Vectorised over the index (numpy), so Proof-Pile-2's 15M documents
take seconds. Every error is one line naming the file."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

from neox.data.tokenizer import tokenizer_vocab_size
from neox.errors import NeoxError
from neox.paths import sha256_of

# megatron-core's MMIDIDX format (kept here so deepy.py need not import megatron to check data)
_INDEX_HEADER = b"MMIDIDX\x00\x00"
_DTYPE_CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
                8: np.uint16}

HEADER_BYTES = len(_INDEX_HEADER) + 8 + 1 + 8 + 8  # magic, version, dtype code, sequences, documents


class DataError(NeoxError, ValueError):
    """Bad training data; the message names the file (exit status 1, as the data tools)."""


# Set by deepy.py for the ranks it starts: the data was checked before spawning, not again on rank 0.
DATA_CHECKED_ENV = "NEOX_DATA_CHECKED"

def _header(idx: str) -> tuple[np.dtype, int, int]:
    size = os.path.getsize(idx)
    with open(idx, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[:len(_INDEX_HEADER)] != _INDEX_HEADER:
        raise DataError(f"{idx}: not a megatron .idx file (bad header; {size} bytes)")
    version, code, sequences, documents = struct.unpack("<QBQQ", head[len(_INDEX_HEADER):])
    if version != 1:
        raise DataError(f"{idx}: index version {version}, expected 1")
    if code not in _DTYPE_CODES:
        raise DataError(f"{idx}: unknown token dtype code {code}")
    dtype = np.dtype(_DTYPE_CODES[code])
    expected = HEADER_BYTES + sequences * (4 + 8) + documents * 8
    if size != expected:
        raise DataError(f"{idx}: {size} bytes, but its header promises {sequences} sequences and {documents} "
                        f"documents ({expected} bytes): the index is truncated or garbled")
    return dtype, sequences, documents


def check_index(prefix: str) -> dict:
    """<prefix>.idx against <prefix>.bin: sizes, pointers, lengths and dtype. Returns a summary."""
    idx, binf = prefix + ".idx", prefix + ".bin"
    dtype, n, d = _header(idx)
    index = np.memmap(idx, mode="r", dtype=np.uint8, offset=HEADER_BYTES)
    lengths = index[: 4 * n].view(np.int32)
    pointers = index[4 * n: 12 * n].view(np.int64)
    documents = index[12 * n:].view(np.int64)
    bin_size = os.path.getsize(binf)
    if bin_size % dtype.itemsize:
        raise DataError(f"{binf}: {bin_size} bytes is not a whole number of {dtype.name} tokens (truncated?)")
    if n and (lengths < 0).any():
        i = int(np.flatnonzero(lengths < 0)[0])
        raise DataError(f"{idx}: sequence {i} has negative length {int(lengths[i])}: the index is garbled")
    ends = pointers + lengths.astype(np.int64) * dtype.itemsize
    if n and (pointers[0] != 0 or (pointers[1:] != ends[:-1]).any()):
        bad = 0 if pointers[0] != 0 else int(np.flatnonzero(pointers[1:] != ends[:-1])[0]) + 1
        raise DataError(f"{idx}: sequence {bad} starts at byte {int(pointers[bad])}, expected "
                        f"{int(ends[bad - 1]) if bad else 0}: the index pointers are garbled")
    used = int(ends[-1]) if n else 0
    if used != bin_size:
        raise DataError(f"{binf}: {bin_size} bytes, but {idx} indexes {used} bytes "
                        f"({'truncated .bin' if used > bin_size else 'the index and .bin do not match'})")
    if d < 1 or documents[0] != 0 or documents[-1] != n or (np.diff(documents) < 0).any():
        raise DataError(f"{idx}: document boundaries are not an increasing list from 0 to {n}: the index is garbled")
    return {"sequences": n, "documents": d - 1, "tokens": used // dtype.itemsize, "dtype": dtype.name}


def check_tokenizer(prefix: str, vocab_file: str, vocab_size: int, without_manifest: bool,
                    kind: str = "SPMTokenizer") -> str | None:
    """The preprocessing manifest's tokenizer must be the run's vocab_file (kind, hash and vocabulary
    size; a manifest without a kind is from a SentencePiece-only version). Data without a manifest
    is an error unless ``data_without_manifest`` is set; then a warning is returned
    (the on-device check of every batch still stops ids >= the vocabulary)."""
    manifest = prefix + ".manifest.json"
    if not os.path.isfile(manifest):
        if without_manifest:
            return (f"{manifest} not found: the data's tokenizer is not checked against {vocab_file} "
                    "(data_without_manifest: true); batches with token ids >= the vocabulary still stop the run")
        raise DataError(f"{manifest} not found: cannot check that {prefix}.bin was tokenized with vocab_file "
                        f"{vocab_file}; re-run tools/preprocess_data.py, or set data_without_manifest: true")
    with open(manifest) as f:
        tok = json.load(f).get("tokenizer", {})
    ours = sha256_of(vocab_file)
    theirs = tok.get("kind", "SPMTokenizer")
    kind = {"SentencePieceTokenizer": "SPMTokenizer"}.get(kind, kind)
    if theirs != kind:
        raise DataError(f"{prefix}.bin was tokenized with a {theirs} ({tok.get('path')}) per {manifest}, but "
                        f"tokenizer_type is {kind} (vocab_file {vocab_file}): re-tokenize the data or fix the config")
    if tok.get("sha256") != ours or tok.get("vocab_size") != vocab_size:
        raise DataError(f"{prefix}.bin was tokenized with {tok.get('path')} (vocabulary {tok.get('vocab_size')}, "
                        f"sha256 {str(tok.get('sha256'))[:12]}) per {manifest}, but vocab_file is {vocab_file} "
                        f"(vocabulary {vocab_size}, sha256 {ours[:12]}): re-tokenize the data or fix vocab_file")
    return None


def check_data(cfg: Any) -> list[str]:
    """Every configured data prefix (train and validation): index, then tokenizer. Returns warnings."""
    d = cfg.data
    warnings = []
    vocab = tokenizer_vocab_size(d.vocab_file, d.tokenizer_type) if d.vocab_file else None
    for prefix in dict.fromkeys([*d.train_data_paths, *d.valid_data_paths]):
        check_index(prefix)
        if vocab is not None:
            w = check_tokenizer(prefix, d.vocab_file, vocab, d.data_without_manifest, d.tokenizer_type)
            warnings += [w] if w else []
    return warnings


def out_of_vocab_samples(dataset: Any, first: int, last: int, vocab_size: int) -> list[tuple[int, str]]:
    """(global sample index, data file) of the samples in [first, last) holding an id outside
    [0, vocab_size): the slow path after the on-device check found one."""
    bad = []
    for i in range(first, last):
        tokens = dataset[i]["tokens"]
        labels = dataset[i]["labels"]
        if int(max(tokens.max(), labels.max())) >= vocab_size or int(min(tokens.min(), labels.min())) < 0:
            bad.append((i, data_file_of_sample(dataset, i)))
    return bad


def data_file_of_sample(dataset: Any, i: int) -> str:
    """The .bin a global sample of the (blended) training set comes from."""
    if hasattr(dataset, "dataset_index"):  # megatron BlendedDataset
        dataset = dataset.datasets[int(dataset.dataset_index[i])]
    return dataset.dataset.path_prefix + ".bin"
