#!/usr/bin/env python
"""Tokenize jsonl / jsonl.zst documents into a megatron-core indexed dataset (.bin/.idx).

One json line is one document. Outputs, with GPT-NeoX naming (PREFIX_<key>_document):

    PREFIX_text_document.bin / .idx        MMIDIDX files, readable by megatron IndexedDataset
    PREFIX_text_document.manifest.json     tokenizer hash, eod policy, inputs, counts

Paths inside the manifest are relative to the manifest's directory, so a tokenized
tree can be moved as a whole.
"""

import argparse
import glob
import hashlib
import io
import json
import multiprocessing
import os
import sys
import time
import warnings

import numpy
import sentencepiece as spm
import zstandard
from tqdm import tqdm

with warnings.catch_warnings():
    # megatron.core warns about missing Apex/Transformer Engine, irrelevant here.
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder


class PreprocessError(Exception):
    """A user-facing error; the CLI prints it as a single `error: ...` line."""


def resolve_inputs(paths):
    """Expand files, directories (recursive *.jsonl / *.jsonl.zst, sorted) and globs, in order."""
    files = []
    for path in paths:
        if os.path.isfile(path):
            found = [path]
        elif os.path.isdir(path):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                if name.endswith((".jsonl", ".jsonl.zst"))
            )
            if not found:
                raise PreprocessError(f"{path}: directory contains no *.jsonl or *.jsonl.zst files")
        else:
            found = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
            if not found:
                raise PreprocessError(f"{path}: no such file, directory or glob match")
        files.extend(p for p in found if p not in files)
    return files


def iter_lines(path):
    """Yield (line_number, raw bytes) for every non-blank line of a jsonl or jsonl.zst file."""
    with open(path, "rb") as raw:
        stream = zstandard.ZstdDecompressor().stream_reader(raw) if path.endswith(".zst") else raw
        try:
            for lineno, line in enumerate(io.BufferedReader(stream) if stream is not raw else raw, 1):
                if line.strip():
                    yield lineno, line
        except zstandard.ZstdError as e:
            raise PreprocessError(f"{path}: cannot decompress: {e}") from None


# ---- worker side: each pool process loads its own tokenizer once.
_worker = {}


def _init_worker(model_path, key, append_eod, prepend_bos, dtype):
    sp = spm.SentencePieceProcessor(model_file=model_path)
    _worker.update(sp=sp, key=key, append_eod=append_eod, prepend_bos=prepend_bos, dtype=dtype)


def _encode(item):
    """(file_index, lineno, line) -> (file_index, lineno, token array or error string)."""
    file_index, lineno, line = item
    w = _worker
    try:
        doc = json.loads(line)
    except ValueError:  # includes invalid UTF-8
        return file_index, lineno, "line is not valid JSON"
    if not isinstance(doc, dict) or w["key"] not in doc:
        return file_index, lineno, f"line has no {w['key']!r} key"
    text = doc[w["key"]]
    if not isinstance(text, str):
        return file_index, lineno, f"{w['key']!r} is not a string"
    if not text:
        return file_index, lineno, None  # empty document: skipped, not an error
    ids = w["sp"].encode(text)
    if w["prepend_bos"]:
        ids = [w["sp"].bos_id()] + ids
    if w["append_eod"]:
        ids.append(w["sp"].eos_id())
    return file_index, lineno, numpy.asarray(ids, dtype=w["dtype"])


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def preprocess(inputs, output_prefix, tokenizer_model, append_eod=True, prepend_bos=False,
               key="text", workers=1, chunksize=64, progress=True):
    """Tokenize `inputs` into `<output_prefix>_<key>_document.{bin,idx,manifest.json}`.

    Returns the manifest dict. Raises PreprocessError on bad input.
    """
    files = resolve_inputs(inputs)
    if not os.path.isfile(tokenizer_model):
        raise PreprocessError(f"{tokenizer_model}: tokenizer model not found")
    sp = spm.SentencePieceProcessor(model_file=tokenizer_model)
    vocab_size = sp.get_piece_size()
    if append_eod and sp.eos_id() < 0:
        raise PreprocessError(f"{tokenizer_model}: tokenizer has no EOS id, cannot --append-eod")
    if prepend_bos and sp.bos_id() < 0:
        raise PreprocessError(f"{tokenizer_model}: tokenizer has no BOS id, cannot --prepend-bos")
    dtype = numpy.uint16 if vocab_size < 65500 else numpy.int32

    final = f"{output_prefix}_{key}_document"
    tmp = f"{final}.tmp-{os.getpid()}"  # everything is written here first, renamed at the end
    out_dir = os.path.dirname(os.path.abspath(final))
    os.makedirs(out_dir, exist_ok=True)

    def items():
        for file_index, path in enumerate(files):
            n = 0
            for lineno, line in iter_lines(path):
                n += 1
                yield file_index, lineno, line
            if n == 0:
                raise PreprocessError(f"{path}: input file is empty")

    docs_per_file = [0] * len(files)
    n_docs = n_tokens = n_skipped = 0
    init_args = (tokenizer_model, key, append_eod, prepend_bos, dtype)
    builder = IndexedDatasetBuilder(tmp + ".bin", dtype=dtype)
    pool = None
    try:
        if workers > 1:
            pool = multiprocessing.Pool(workers, initializer=_init_worker, initargs=init_args)
            results = pool.imap(_encode, items(), chunksize)  # imap keeps input order
        else:
            _init_worker(*init_args)
            results = map(_encode, items())
        start = time.monotonic()
        bar = tqdm(results, unit="doc", desc=os.path.basename(final), disable=not progress, mininterval=1.0)
        for file_index, lineno, tokens in bar:
            if isinstance(tokens, str):
                raise PreprocessError(f"{files[file_index]}:{lineno}: {tokens}")
            if tokens is None:
                n_skipped += 1
                continue
            builder.add_document(tokens, [len(tokens)])
            docs_per_file[file_index] += 1
            n_docs += 1
            n_tokens += len(tokens)
            if n_docs % 256 == 0:
                bar.set_postfix(tok_per_s=f"{n_tokens / max(time.monotonic() - start, 1e-9):.0f}", refresh=False)
        bar.set_postfix(tok_per_s=f"{n_tokens / max(time.monotonic() - start, 1e-9):.0f}")
        bar.close()
        if n_docs == 0:
            raise PreprocessError(f"no documents written (all {n_skipped} documents were empty)")
        builder.finalize(tmp + ".idx")

        def rel(p):
            return os.path.relpath(os.path.abspath(p), out_dir)

        manifest = {
            "format": "megatron-core MMIDIDX (.bin/.idx)",
            "paths_relative_to": "this manifest's directory",
            "bin": rel(final + ".bin"),
            "idx": rel(final + ".idx"),
            "json_key": key,
            "dtype": numpy.dtype(dtype).name,
            "tokenizer": {
                "path": rel(tokenizer_model),
                "sha256": _sha256(tokenizer_model),
                "vocab_size": vocab_size,
                "bos_id": sp.bos_id(),
                "eos_id": sp.eos_id(),
            },
            "eod_id": sp.eos_id(),
            "append_eod": append_eod,
            "prepend_bos": prepend_bos,
            "inputs": [{"path": rel(p), "bytes": os.path.getsize(p), "documents": d}
                       for p, d in zip(files, docs_per_file)],
            "documents": n_docs,
            "tokens": n_tokens,
            "skipped_empty_documents": n_skipped,
        }
        with open(tmp + ".manifest.json", "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        # Manifest last: its presence under the final name means the pair is complete.
        for ext in (".bin", ".idx", ".manifest.json"):
            os.replace(tmp + ext, final + ext)
        return manifest
    finally:
        if pool is not None:
            pool.terminate()
        builder.data_file.close()  # no-op after finalize; releases the file on errors
        for ext in (".bin", ".idx", ".manifest.json"):
            if os.path.exists(tmp + ext):
                os.remove(tmp + ext)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", nargs="+", required=True, help="files, directories or globs")
    p.add_argument("--output-prefix", required=True)
    p.add_argument("--tokenizer-model", required=True, help="SentencePiece .model file")
    p.add_argument("--append-eod", action="store_true", help="append the tokenizer's EOS id to each document")
    p.add_argument("--prepend-bos", action="store_true", help="prepend the tokenizer's BOS id to each document")
    p.add_argument("--jsonl-key", default="text")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    try:
        m = preprocess(args.input, args.output_prefix, args.tokenizer_model, append_eod=args.append_eod,
                       prepend_bos=args.prepend_bos, key=args.jsonl_key, workers=args.workers)
    except PreprocessError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {args.output_prefix}_{args.jsonl_key}_document.{{bin,idx}}: "
          f"{m['documents']} documents, {m['tokens']} tokens")


if __name__ == "__main__":
    main()
