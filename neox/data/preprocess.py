"""Tokenizing documents (JSON lines, Parquet, save_to_disk datasets, hub snapshots: neox.data.readers)
into megatron-core indexed datasets (.bin/.idx) with a manifest: in worker processes, one shard per
input file, merged in input order (byte-identical whatever the worker count or the input format),
resumable. The program is neox.cli.preprocess_data (tools/preprocess_data.py).
"""

import gc
import glob
import json
import multiprocessing
import os
import shutil
import time
import warnings
from collections.abc import Iterable, Iterator
from multiprocessing.queues import SimpleQueue
from typing import Any

import numpy
from tqdm import tqdm

from neox.data.readers import ReadError, batches, check_readable, resolve_inputs
from neox.data.tokenizer import HF, TokenizerError, describe, kind_of_file, load_tokenizer
from neox.errors import NeoxError

with warnings.catch_warnings():
    # megatron.core warns about missing Apex/Transformer Engine, irrelevant here.
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder


BATCH_DOCS = 1000  # documents per batched encode call ...


BATCH_BYTES = 4 << 20  # ... or this much text, whichever comes first


SHARD_VERSION = 1  # bump when the shard contents change for the same inputs


class PreprocessError(NeoxError):
    """A user-facing error; the CLI prints it as a single `error: ...` line."""


# ---- worker side: one input file -> one shard. Each process loads its own tokenizer once.
_worker: dict[str, Any] = {}


def _init_worker(model_path, report, threads, options):
    if kind_of_file(model_path) == HF:  # the Rust library's thread pool, sized before its first use
        os.environ["RAYON_NUM_THREADS"] = str(threads)
    _worker.update(tok=load_tokenizer(model_path, require_eos=False), report=report, threads=threads, **options)


def _encode(texts, path, numbers):
    w = _worker
    try:
        return w["tok"].encode_batch(texts, w["threads"])
    except Exception:  # e.g. a lone surrogate from "\ud800" in the JSON; find the document
        for text, n in zip(texts, numbers):
            try:
                w["tok"].encode(text)
            except Exception as e:
                raise PreprocessError(f"{path}:{n}: cannot tokenize: {e}") from None
        raise


def _add_batch(builder, arrays, numbers, path):
    """Append one encoded batch to `builder`; returns (documents, tokens, skipped)."""
    w = _worker
    lengths = numpy.fromiter((a.size for a in arrays), numpy.int64, len(arrays))
    kept = lengths > 0  # a text that tokenizes to nothing is skipped, not stored as a lone EOD
    if not kept.any():
        return 0, 0, len(arrays)
    flat = numpy.concatenate(arrays)
    if flat.max() >= w["vocab_size"] or flat.min() < 0:
        bad = int(numpy.flatnonzero((flat >= w["vocab_size"]) | (flat < 0))[0])
        doc = int(numpy.searchsorted(numpy.cumsum(lengths), bad, side="right"))
        raise PreprocessError(f"{path}:{numbers[doc]}: token id {int(flat[bad])} out of range "
                              f"for vocab size {w['vocab_size']}")
    # Lay out [bos] ids [eos] per document in one array, then write document by document.
    lengths = lengths[kept] + w["prepend_bos"] + w["append_eod"]
    ends = numpy.cumsum(lengths)
    starts = ends - lengths
    out = numpy.empty(int(ends[-1]), dtype=w["dtype"])
    body = numpy.ones(out.size, dtype=bool)
    if w["prepend_bos"]:
        out[starts], body[starts] = w["bos_id"], False
    if w["append_eod"]:
        out[ends - 1], body[ends - 1] = w["eos_id"], False
    out[body] = flat
    for s, e in zip(starts.tolist(), ends.tolist()):
        builder.add_document(out[s:e], [e - s])
    return len(lengths), out.size, len(arrays) - len(lengths)


def _tokenize_file(task):
    """Tokenize one input file into `<shard>.bin/.idx/.json`; returns the shard json dict."""
    index, path, shard, info = task
    w, report, pid = _worker, _worker["report"], os.getpid()
    report(("start", index, pid))
    tmp = f"{shard}.tmp-{pid}"
    counts = dict(records=0, documents=0, tokens=0, skipped_empty_documents=0, skipped_null_texts=0)
    builder = IndexedDatasetBuilder(tmp + ".bin", dtype=numpy.dtype(w["dtype"]).type)
    done_bytes = 0
    try:
        for numbers, texts, pos in batches(path, w["json_key"], w["batch_docs"], w["batch_bytes"]):
            counts["records"] += len(texts)
            counts["skipped_null_texts"] += texts.count(None)  # Parquet and Arrow rows without a text
            if None in texts:
                numbers, texts = [n for n, t in zip(numbers, texts) if t is not None], [t for t in texts if t is not None]
            if texts:
                docs, tokens, skipped = _add_batch(builder, _encode(texts, path, numbers), numbers, path)
                counts["documents"] += docs
                counts["tokens"] += tokens
                counts["skipped_empty_documents"] += skipped
            else:
                docs = tokens = 0
            read, done_bytes = (pos - done_bytes, pos) if pos else (0, done_bytes)  # lm_dataformat: pos 0
            report(("progress", docs, read, tokens))
        builder.finalize(tmp + ".idx")
        info = dict(info, **counts)
        if counts["records"]:  # an empty file is not worth a shard (and fails without --allow-empty)
            with open(tmp + ".json", "w") as f:
                json.dump(info, f, indent=1)
            if os.path.exists(shard + ".json"):
                os.remove(shard + ".json")  # never let an old json describe the new .bin/.idx
            for ext in (".bin", ".idx", ".json"):  # json last: it marks the shard complete
                os.replace(tmp + ext, shard + ext)
    finally:
        builder.data_file.close()
        for ext in (".bin", ".idx", ".json"):
            if os.path.exists(tmp + ext):
                os.remove(tmp + ext)
    report(("progress", 0, info["bytes"] - done_bytes, 0))
    report(("done", index, pid))
    return info


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return True


def _remove_stale_temps(final):
    """Remove `<final>.tmp-<pid>.*` left by a run that was killed (its pid is gone)."""
    for p in glob.glob(glob.escape(final) + ".tmp-*"):
        pid = p[len(final) + 5:].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            os.remove(p)


def _missing_parents(path):
    """The directories above `path` that do not exist yet, innermost first."""
    missing, d = [], os.path.dirname(os.path.abspath(path))
    while not os.path.exists(d):
        missing.append(d)
        d = os.path.dirname(d)
    return missing


def _load_shard(shard, identity, itemsize):
    """The shard's json if it was made from the same input with the same options, else None."""
    try:
        with open(shard + ".json") as f:
            info = json.load(f)
        if {k: info.get(k) for k in identity} == identity and \
                os.path.getsize(shard + ".bin") == info["tokens"] * itemsize and os.path.isfile(shard + ".idx"):
            return info
    except (OSError, ValueError, KeyError):
        pass
    return None


class _Progress:
    """Turns worker reports into a tqdm bar (input bytes, docs/s, tokens/s); tracks live workers."""

    running: dict[int, int]  # pid -> input file number of each worker busy with a file

    def __init__(self, total_bytes: int, done_bytes: int, desc: str, enabled: bool):
        self.bar = tqdm(total=total_bytes, initial=done_bytes, unit="B", unit_scale=True, desc=desc,
                        disable=not enabled, mininterval=1.0, smoothing=0.1)
        self.start, self.docs, self.tokens, self.running = time.monotonic(), 0, 0, {}

    def __call__(self, msg):
        kind, *rest = msg
        if kind == "start":
            self.running[rest[1]] = rest[0]
        elif kind == "done":
            self.running.pop(rest[1], None)
        else:
            docs, nbytes, tokens = rest
            self.docs += docs
            self.tokens += tokens
            dt = max(time.monotonic() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.docs / dt:.0f} docs/s, {self.tokens / dt / 1e6:.2f}M tok/s",
                                     refresh=False)
            self.bar.update(nbytes)


def _drain(reports, progress):
    while not reports.empty():
        progress(reports.get())


def _next_result(results, reports, progress, files):
    """Next in-order shard from the pool, showing progress meanwhile; fails if a worker died."""
    while True:
        _drain(reports, progress)
        try:
            result = results.next(timeout=0.2)
            _drain(reports, progress)
            return result
        except multiprocessing.TimeoutError:
            for pid, index in progress.running.items():
                if not _alive(pid):  # the pool replaces a killed worker but loses its task
                    raise PreprocessError(f"{files[index]}: worker process {pid} died while "
                                          f"tokenizing this file (out of memory?)")


def preprocess(inputs: Iterable[str], output_prefix: str, tokenizer_model: str, append_eod: bool = True,
               prepend_bos: bool | None = None, key: str = "text", workers: int = 1, progress: bool = True,
               allow_empty: bool = False, batch_docs: int = BATCH_DOCS, batch_bytes: int = BATCH_BYTES) -> dict:
    """Tokenize `inputs` (files, folders, globs of any format neox.data.readers reads; `key` the
    text key or column) into `<output_prefix>_<key>_document.{bin,idx,manifest.json}`.

    `tokenizer_model`: a SentencePiece .model or a Hugging Face tokenizer.json. `prepend_bos`
    None: BOS exactly when the tokenizer adds it (HFTokenizer.add_bos; never for SentencePiece).
    Returns the manifest dict. Raises PreprocessError on bad input; then no final output
    exists, but finished shards are kept for the next run.
    """
    try:
        return _preprocess(inputs, output_prefix, tokenizer_model, append_eod, prepend_bos, key, workers, progress,
                           allow_empty, batch_docs, batch_bytes)
    except ReadError as e:  # an input that cannot be read, found by a worker or before any work
        raise PreprocessError(str(e)) from None


def _preprocess(inputs: Iterable[str], output_prefix: str, tokenizer_model: str, append_eod: bool,
                prepend_bos: bool | None, key: str, workers: int, progress: bool, allow_empty: bool,
                batch_docs: int, batch_bytes: int) -> dict:
    files = resolve_inputs(inputs)
    tok, tok_info, dtype, options = _tokenizer_options(tokenizer_model, key, append_eod, prepend_bos)
    final = f"{output_prefix}_{key}_document"
    tmp = f"{final}.tmp-{os.getpid()}"  # the merged output is written here, renamed at the end
    shards_dir = final + ".shards"
    infos, tasks, sizes = _plan_shards(files, shards_dir, dict(tokenizer_sha256=tok_info["sha256"], **options),
                                       dtype.itemsize)
    created = _missing_parents(shards_dir)  # removed again if a failed run leaves them empty
    os.makedirs(shards_dir, exist_ok=True)
    _remove_stale_temps(final)

    # One process per file; with fewer files than workers, the spare cores become encode threads.
    procs = min(workers, len(tasks))
    threads = max(1, workers // max(procs, 1))
    worker_options = dict(options, batch_docs=batch_docs, batch_bytes=batch_bytes)
    pool = builder = bar = None
    try:
        if procs > 1:  # forked before the tqdm bar starts its monitor thread
            reports: SimpleQueue[tuple]
            reports = multiprocessing.SimpleQueue()  # synchronous put(): a "start" arrives even if the worker dies
            init_args = (tokenizer_model, reports.put, threads, worker_options)
            pool = multiprocessing.Pool(procs, _init_worker, init_args)
        bar = _Progress(sum(sizes), sum(s for s, i in zip(sizes, infos) if i), os.path.basename(final), progress)
        results: Iterator[dict]
        if pool is not None:
            results = pool.imap(_tokenize_file, tasks)  # in input order, so shards merge as they arrive
            next_result = lambda: _next_result(results, reports, bar, files)  # noqa: E731
        else:
            _init_worker(tokenizer_model, bar, threads, worker_options)
            results = map(_tokenize_file, tasks)
            next_result = lambda: next(results)  # noqa: E731
        builder = IndexedDatasetBuilder(tmp + ".bin", dtype=dtype.type)
        # add_index() runs gc.collect() per shard; with the heap frozen that scans only new objects.
        gc.freeze()
        for i, path in enumerate(files):
            if infos[i] is None:
                infos[i] = next_result()
            if infos[i]["records"] == 0 and not allow_empty:
                raise PreprocessError(f"{path}: input file is empty (no documents; --allow-empty skips it)")
            if infos[i]["documents"]:
                builder.add_index(os.path.join(shards_dir, str(i)))
        bar.bar.close()
        if sum(info["documents"] for info in infos) == 0:  # a rerun would fail the same way: the shards are of no use
            shutil.rmtree(shards_dir)
            raise PreprocessError(f"no documents written from {len(files)} input file(s) (all empty)")
        builder.finalize(tmp + ".idx")
        manifest = _manifest(final, tokenizer_model, tok, tok_info, options, files, sizes, infos,
                             reused=len(files) - len(tasks))
        with open(tmp + ".manifest.json", "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        # Manifest last: its presence under the final name means the pair is complete.
        for ext in (".bin", ".idx", ".manifest.json"):
            os.replace(tmp + ext, final + ext)
        shutil.rmtree(shards_dir)
        return manifest
    finally:
        gc.unfreeze()
        _clean_up(bar, pool, builder, tmp, shards_dir, created)


def _tokenizer_options(tokenizer_model: str, key: str, append_eod: bool, prepend_bos):
    """The tokenizer, its description for the manifest, the token dtype and the options that
    decide a shard's content (a shard made with other options is not reused)."""
    if not os.path.isfile(tokenizer_model):
        raise PreprocessError(f"{tokenizer_model}: tokenizer model not found")
    try:
        tok = load_tokenizer(tokenizer_model, require_eos=False)
    except TokenizerError as e:
        raise PreprocessError(str(e)) from None
    tok_info = describe(tok)
    vocab_size, bos_id, eos_id = tok_info["vocab_size"], tok_info["bos_id"], tok_info["eos_id"]
    prepend_bos = tok.add_bos if prepend_bos is None else prepend_bos
    if append_eod and eos_id < 0:
        raise PreprocessError(f"{tokenizer_model}: tokenizer has no EOS id, cannot --append-eod")
    if prepend_bos and tok.bos is None:
        raise PreprocessError(f"{tokenizer_model}: tokenizer has no BOS id, cannot --prepend-bos")
    # uint16 holds ids up to 65,535; larger vocabularies (Llama 3, Qwen2.5, Tekken) get int32 tokens
    dtype = numpy.dtype(numpy.uint16 if vocab_size < 65500 else numpy.int32)
    options = dict(json_key=key, append_eod=bool(append_eod), prepend_bos=bool(prepend_bos),
                   dtype=dtype.name, vocab_size=vocab_size, bos_id=bos_id, eos_id=eos_id)
    return tok, tok_info, dtype, options


def _plan_shards(files, shards_dir: str, options: dict, itemsize: int):
    """Per input file: its finished shard from an earlier run (its info) or None, the files still
    to tokenize (tasks) and every file's size; an unreadable file is an error here, before any work."""
    infos, tasks, sizes = [], [], []
    for i, path in enumerate(files):
        try:
            st = os.stat(path)
            with open(path, "rb"):
                pass
        except OSError as e:
            raise PreprocessError(f"{path}: cannot read: {e.strerror}") from None
        sizes.append(st.st_size)
        readable = check_readable(path, options["json_key"])  # a Parquet footer, the text column: before any work
        identity = dict(version=SHARD_VERSION, input=os.path.abspath(path), bytes=st.st_size,
                        mtime_ns=st.st_mtime_ns, format=readable["format"], **options)
        infos.append(_load_shard(os.path.join(shards_dir, str(i)), identity, itemsize))
        if infos[i] is None:
            tasks.append((i, path, os.path.join(shards_dir, str(i)), identity))
    return infos, tasks, sizes


def _manifest(final: str, tokenizer_model: str, tok, tok_info: dict, options: dict, files, sizes, infos,
              reused: int) -> dict:
    """What the output holds and how it was made; paths relative to the manifest's directory."""
    out_dir = os.path.dirname(os.path.abspath(final))

    def rel(p: str) -> str:
        return os.path.relpath(os.path.abspath(p), out_dir)

    return {
        "format": "megatron-core MMIDIDX (.bin/.idx)",
        "paths_relative_to": "this manifest's directory",
        "bin": rel(final + ".bin"),
        "idx": rel(final + ".idx"),
        "json_key": options["json_key"],
        "dtype": options["dtype"],
        "tokenizer": {**tok_info, "path": rel(tokenizer_model),
                      **({"config_path": rel(tok.config_path)} if tok.kind == HF else {})},
        "eod_id": options["eos_id"],
        "append_eod": options["append_eod"],
        "prepend_bos": options["prepend_bos"],
        "inputs": [{"path": rel(p), "format": info["format"], "bytes": size, "rows": info["records"],
                    "documents": info["documents"], "tokens": info["tokens"], "empty": info["records"] == 0,
                    "skipped_null_texts": info["skipped_null_texts"],
                    "skipped_empty_documents": info["skipped_empty_documents"]}
                   for p, size, info in zip(files, sizes, infos)],
        "documents": sum(info["documents"] for info in infos),
        "tokens": sum(info["tokens"] for info in infos),
        "skipped_null_texts": sum(info["skipped_null_texts"] for info in infos),
        "skipped_empty_documents": sum(info["skipped_empty_documents"] for info in infos),
        "skipped_empty_files": sum(info["records"] == 0 for info in infos),
        "reused_shards": reused,
    }


def _clean_up(bar, pool, builder, tmp: str, shards_dir: str, created: list):
    """After a run, finished or failed: workers and files closed, no temporary output left; the
    finished shards stay for a rerun, the directories this run created go if they are empty."""
    if bar is not None:
        bar.bar.close()
    if pool is not None:
        pool.terminate()
        pool.join()
    if builder is not None:
        builder.data_file.close()  # no-op after finalize; releases the file on errors
    for ext in (".bin", ".idx", ".manifest.json"):
        if os.path.exists(tmp + ext):
            os.remove(tmp + ext)
    if os.path.isdir(shards_dir):  # keep finished shards for a rerun, nothing else
        for p in glob.glob(os.path.join(shards_dir, "*.tmp-*")):
            os.remove(p)
        if not os.listdir(shards_dir):
            os.rmdir(shards_dir)
    for d in created:  # innermost first
        if os.path.isdir(d) and not os.listdir(d):
            os.rmdir(d)
