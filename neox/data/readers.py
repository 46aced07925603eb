"""Reading documents from the formats math corpora ship in, one interface for every tool.

- JSON lines (``.jsonl``, ``.jsonl.zst``, ``.jsonl.gz``), read line by line here so that an error
  names the line; other lm_dataformat archives (``.jsonl.zst.tar``, ``.json.zst``, ...) through
  lm_dataformat (their "line" is the document number);
- Parquet (``.parquet``: OpenWebMath, FineMath, MegaMath on the hub), streamed row group by row group
  with only the text column read, so memory stays flat whatever the shard size;
- a Hugging Face dataset saved with ``save_to_disk`` (a folder with ``state.json`` and its Arrow
  files; a ``DatasetDict`` folder gives its splits in order), streamed record batch by batch;
- a hub snapshot folder: its ``*.parquet`` files under config and split folders, sorted.

A document's id is (file, row): its line (JSON lines) or row (Parquet, Arrow) number, from 1. In
JSON lines the text key must hold a string (as always); in Parquet and Arrow a null or empty text
is a row to skip, counted by the caller.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence

import lm_dataformat
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from neox.errors import NeoxError

JSONL = (".jsonl", ".jsonl.zst", ".jsonl.gz")  # read line by line here
LMD = tuple(lm_dataformat.VALID_EXTENSIONS)  # anything else lm_dataformat reads
PARQUET = (".parquet",)
ARROW = (".arrow",)  # only as the files a save_to_disk folder names
IN_FOLDERS = JSONL + (".jsonl.zst.tar", ".json.zst", ".json.gz") + PARQUET  # picked up when walking a folder

# (row numbers, texts, bytes of the file read so far) per batch; a null text is None
Batch = tuple[list[int], list[str | None], int]


class ReadError(NeoxError):
    """An input that cannot be read as documents; the message is one line naming the file."""


class MissingColumn(ReadError):
    """A Parquet or Arrow file without the column asked for; the message names the columns it has."""


def format_of(path: str) -> str:
    """jsonl, lm_dataformat, parquet or arrow, by the file name."""
    if path.endswith(JSONL):
        return "jsonl"
    if path.endswith(PARQUET):
        return "parquet"
    if path.endswith(ARROW):
        return "arrow"
    return "lm_dataformat"


# ----------------------------------------------------------------------------- which files


def saved_dataset_files(folder: str) -> list[str] | None:
    """The Arrow files of a ``save_to_disk`` folder in their order (a DatasetDict: split by split),
    or None when ``folder`` is not one."""
    state, splits = os.path.join(folder, "state.json"), os.path.join(folder, "dataset_dict.json")
    try:
        if os.path.isfile(state):
            with open(state) as f:
                return [os.path.join(folder, d["filename"]) for d in json.load(f)["_data_files"]]
        if os.path.isfile(splits):
            with open(splits) as f:
                names = json.load(f)["splits"]
            return [p for name in names for p in saved_dataset_files(os.path.join(folder, name)) or []]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReadError(f"{folder}: not a readable save_to_disk dataset ({type(e).__name__}: {e})") from None
    return None


def _walk(directory: str) -> list[str]:
    saved = saved_dataset_files(directory)
    if saved is not None:
        return saved
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # e.g. .git or .cache of a hub snapshot
        for d in list(dirs):
            saved = saved_dataset_files(os.path.join(root, d))
            if saved is not None:
                found += saved
                dirs.remove(d)
        found += [os.path.join(root, n) for n in names if n.endswith(IN_FOLDERS) and not n.startswith(".")]
    if not found:
        raise ReadError(f"{directory}: directory contains no {', '.join(IN_FOLDERS)} files "
                        "(nor a save_to_disk dataset)")
    return sorted(found)  # a saved dataset's data-0000N-of-0000M.arrow files sort in their order


def resolve_inputs(paths: Iterable[str]) -> list[str]:
    """Files, folders (searched recursively, sorted; a save_to_disk folder gives its Arrow files in
    order) and globs (sorted), in argument order, each file once."""
    files, seen = [], set()
    for path in paths:
        if os.path.isfile(path):
            found = [path]
        elif os.path.isdir(path):
            found = _walk(path)
        else:
            matches = sorted(glob.glob(path, recursive=True))
            if not matches:
                raise ReadError(f"{path}: no such file, directory or glob match")
            found = [f for m in matches for f in (_walk(m) if os.path.isdir(m) else [m])]
        for p in found:
            if not p.endswith(JSONL + LMD + PARQUET + ARROW):
                raise ReadError(f"{p}: unsupported file type (expected {', '.join(IN_FOLDERS)}, a save_to_disk "
                                "folder, ...)")
            if p not in seen:
                seen.add(p)
                files.append(p)
    return files


def check_readable(path: str, key: str) -> dict:
    """Before any work: a Parquet or Arrow file opens and has the text column (its row count is
    returned); JSON lines are checked as they are read."""
    fmt = format_of(path)
    if fmt == "parquet":
        try:
            schema, rows = pq.read_schema(path), pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowException, OSError) as e:
            raise ReadError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
    elif fmt == "arrow":
        try:
            with pa.memory_map(path) as source:
                schema = pa.ipc.open_stream(source).schema
            rows = None
        except (pa.ArrowException, OSError) as e:
            raise ReadError(f"{path}: not a readable Arrow file of a save_to_disk dataset ({_first_line(e)})") from None
    else:
        return {"format": fmt}
    if key not in schema.names:
        raise MissingColumn(f"{path}: no column {key!r} (columns: {', '.join(schema.names)}); choose the text column "
                        "with --text-key")
    if not (pa.types.is_string(schema.field(key).type) or pa.types.is_large_string(schema.field(key).type)):
        raise ReadError(f"{path}: column {key!r} holds {schema.field(key).type}, not text")
    return {"format": fmt, **({"rows": rows} if rows is not None else {})}


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ----------------------------------------------------------------------------- documents


def batches(path: str, key: str, batch_docs: int, batch_bytes: int) -> Iterator[Batch]:
    """The documents of ``path`` in batches of about ``batch_docs`` documents or ``batch_bytes`` of text."""
    reader = {"jsonl": _jsonl_batches, "parquet": _parquet_batches, "arrow": _arrow_batches,
              "lm_dataformat": _lmd_batches}[format_of(path)]
    return reader(path, key, batch_docs, batch_bytes)


def _zst_blocks(raw):
    """Decompressed blocks of a zstd file that may hold several frames; raises on truncation."""
    dctx = zstandard.ZstdDecompressor()
    dobj, in_frame = dctx.decompressobj(), False
    while chunk := raw.read(1 << 20):
        while chunk:
            in_frame = True
            out = dobj.decompress(chunk)
            if out:
                yield out
            chunk = b""
            if dobj.eof:  # frame complete; the rest of the chunk starts the next frame
                chunk, dobj, in_frame = dobj.unused_data, dctx.decompressobj(), False
    if in_frame:
        raise zstandard.ZstdError("file ends in the middle of a zstd frame (truncated?)")


def _blocks(path, raw):
    if path.endswith(".zst"):
        return _zst_blocks(raw)
    stream = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
    return iter(lambda: stream.read(1 << 20), b"")


def _parse(line: bytes, key: str, path: str, lineno: int) -> str:
    try:
        doc = json.loads(line)
    except UnicodeDecodeError:
        raise ReadError(f"{path}:{lineno}: line is not valid UTF-8") from None
    except ValueError as e:
        raise ReadError(f"{path}:{lineno}: line is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or key not in doc:
        raise ReadError(f"{path}:{lineno}: line has no {key!r} key")
    text = doc[key]
    if not isinstance(text, str):
        raise ReadError(f"{path}:{lineno}: {key!r} is not a string but {type(text).__name__}")
    return text


def _jsonl_batches(path: str, key: str, batch_docs: int, batch_bytes: int) -> Iterator[Batch]:
    lineno, size, carry = 0, 0, b""
    numbers: list[int] = []
    texts: list[str | None] = []
    with open(path, "rb") as raw:
        try:
            for block in _blocks(path, raw):
                lines = (carry + block).split(b"\n")
                carry = lines.pop()  # incomplete last line, completed by the next block
                for line in lines:
                    lineno += 1
                    if line.strip():
                        texts.append(_parse(line, key, path, lineno))
                        numbers.append(lineno)
                        size += len(line)
                        if len(texts) >= batch_docs or size >= batch_bytes:
                            yield numbers, texts, raw.tell()
                            numbers, texts, size = [], [], 0
        except (zstandard.ZstdError, gzip.BadGzipFile, zlib.error, EOFError) as e:  # corrupt or truncated
            raise ReadError(f"{path}:{lineno + 1}: cannot decompress: {e}") from None
        except OSError as e:
            raise ReadError(f"{path}:{lineno + 1}: cannot read: {e}") from None
        if carry.strip():  # no newline at the end of the file
            texts.append(_parse(carry, key, path, lineno + 1))
            numbers.append(lineno + 1)
        if texts:
            yield numbers, texts, raw.tell()


def _lmd_batches(path: str, key: str, batch_docs: int, batch_bytes: int) -> Iterator[Batch]:
    reader = lm_dataformat.Reader(path)
    # Reader.stream_data() cannot pass the key to .jsonl.zst.tar (lm_dataformat 0.0.20 bug).
    docs = reader.read_jsonl_tar(path, key=key) if path.endswith(".jsonl.zst.tar") else reader.stream_data()
    n, size = 0, 0
    numbers: list[int] = []
    texts: list[str | None] = []
    try:
        for item in docs:
            n += 1
            text = item.get(key) if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise ReadError(f"{path}:{n}: document {key!r} is missing or not a string")
            numbers.append(n)
            texts.append(text)
            size += len(text)
            if len(texts) >= batch_docs or size >= batch_bytes:
                yield numbers, texts, 0
                numbers, texts, size = [], [], 0
    except ReadError:
        raise
    except Exception as e:  # lm_dataformat raises whatever its decoders raise
        raise ReadError(f"{path}:{n + 1}: cannot read document: {type(e).__name__}: {e}") from None
    if texts:
        yield numbers, texts, 0


def _record_batches(record_batches: Iterator[pa.RecordBatch], key: str, batch_docs: int, batch_bytes: int,
                    position) -> Iterator[Batch]:
    """Rows of Arrow record batches regrouped into document batches; ``position()`` is the bytes read."""
    row = 0
    for rb in record_batches:
        column = rb.column(rb.schema.get_field_index(key)).to_pylist()
        start = 0
        while start < len(column):
            end, size = start, 0
            while end < len(column) and end - start < batch_docs and size < batch_bytes:
                size += len(column[end] or "")
                end += 1
            yield list(range(row + start + 1, row + end + 1)), column[start:end], position()
            start = end
        row += len(column)


def _parquet_batches(path: str, key: str, batch_docs: int, batch_bytes: int) -> Iterator[Batch]:
    try:
        pf = pq.ParquetFile(path)
        meta, done = pf.metadata, [0]

        def groups() -> Iterator[pa.RecordBatch]:
            for g in range(meta.num_row_groups):  # one row group in memory at a time, one column of it
                table = pf.read_row_group(g, columns=[key])
                done[0] += sum(meta.row_group(g).column(c).total_compressed_size
                               for c in range(meta.row_group(g).num_columns))
                yield from table.to_batches()

        size = os.path.getsize(path)
        yield from _record_batches(groups(), key, batch_docs, batch_bytes, lambda: min(done[0], size))
    except (pa.ArrowException, OSError) as e:
        raise ReadError(f"{path}: cannot read Parquet ({_first_line(e)})") from None


def _arrow_batches(path: str, key: str, batch_docs: int, batch_bytes: int) -> Iterator[Batch]:
    try:
        with pa.memory_map(path) as source:
            reader = pa.ipc.open_stream(source)
            yield from _record_batches(iter(reader), key, batch_docs, batch_bytes, source.tell)
    except (pa.ArrowException, OSError) as e:
        raise ReadError(f"{path}: cannot read Arrow ({_first_line(e)})") from None


def table_columns(path: str, keys: Sequence[str]) -> dict[str, list]:
    """Columns ``keys`` of a Parquet or Arrow file, whole (a test set, not a corpus): key -> values;
    a missing column is one line naming the file and the columns it has."""
    fmt = format_of(path)
    try:
        if fmt == "parquet":
            schema = pq.read_schema(path)
        else:
            with pa.memory_map(path) as source:
                schema = pa.ipc.open_stream(source).schema
    except (pa.ArrowException, OSError) as e:
        raise ReadError(f"{path}: not a readable {fmt} file ({_first_line(e)})") from None
    missing = [k for k in keys if k not in schema.names]
    if missing:
        raise MissingColumn(f"{path}: no column {missing[0]!r} (columns: {', '.join(schema.names)})")
    try:
        if fmt == "parquet":
            table = pq.read_table(path, columns=list(keys))
        else:
            with pa.memory_map(path) as source:
                table = pa.ipc.open_stream(source).read_all().select(list(keys))
    except (pa.ArrowException, OSError) as e:
        raise ReadError(f"{path}: cannot read {fmt} ({_first_line(e)})") from None
    return {k: table.column(k).to_pylist() for k in keys}
