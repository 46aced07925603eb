#!/usr/bin/env python
"""Train a small Llama-style SentencePiece tokenizer on the train split of the toy corpus.

Special ids follow Llama: <unk>=0, <s>=1, </s>=2, no pad. byte_fallback makes any
text encodable. The default vocab size (3001) is odd on purpose: tensor parallel 2
cannot divide it, so the trainer has to pad the embedding table.
"""

import argparse
import glob
import io
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import sentencepiece as spm
import zstandard

# Mirrors the Llama tokenizer settings that matter for round-tripping text exactly.
TRAINER_OPTIONS: dict[str, Any] = dict(
    model_type="bpe",
    byte_fallback=True,
    split_digits=True,
    allow_whitespace_only_pieces=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=True,
    character_coverage=0.99995,
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    max_sentence_length=16384,
    # Determinism: use every sentence in file order, one thread.
    input_sentence_size=0,
    shuffle_input_sentence=False,
    num_threads=1,
)


def iter_train_lines(corpus_dir: str) -> Iterator[str]:
    """Yield non-empty text lines from <corpus>/*/train/*.jsonl.zst in sorted order.

    SentencePiece treats each input item as a sentence; feeding lines (not whole
    documents) matches how Llama was trained: newlines are covered by byte fallback.
    """
    files = sorted(glob.glob(os.path.join(corpus_dir, "*", "train", "*.jsonl.zst")))
    if not files:
        raise SystemExit(f"error: no */train/*.jsonl.zst files under {corpus_dir}")
    for path in files:
        with open(path, "rb") as f:
            reader = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
            for line in reader:
                if line.strip():
                    for text_line in json.loads(line)["text"].split("\n"):
                        if text_line.strip():
                            yield text_line


def train_tokenizer(corpus_dir: str, out_path: str, vocab_size: int = 3001,
                    verbose: bool = False) -> spm.SentencePieceProcessor:
    """Train and write `out_path` (+ `.vocab` next to it); returns the loaded processor."""
    model = io.BytesIO()
    # model_writer keeps SentencePiece from writing <prefix>.model/.vocab into the cwd.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter_train_lines(corpus_dir),
        model_writer=model,
        vocab_size=vocab_size,
        minloglevel=0 if verbose else 2,
        **TRAINER_OPTIONS,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    if sp.get_piece_size() != vocab_size:
        raise SystemExit(f"error: tokenizer has {sp.get_piece_size()} pieces, expected {vocab_size}")
    ids = (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id())
    if ids != (0, 1, 2, -1):
        raise SystemExit(f"error: unexpected special ids (unk, bos, eos, pad) = {ids}")

    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    vocab_path = os.path.splitext(out_path)[0] + ".vocab"
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(vocab_size))
    # Write to temp names and rename, so a crash never leaves a truncated model behind.
    for path, data in ((vocab_path, vocab.encode("utf-8")), (out_path, model.getvalue())):
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
    return sp


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True, help="corpus dir made by make_toy_corpus.py")
    p.add_argument("--out", required=True, help="output FILE.model (FILE.vocab is written next to it)")
    p.add_argument("--vocab-size", type=int, default=3001)
    p.add_argument("--verbose", action="store_true", help="show SentencePiece trainer logs")
    args = p.parse_args(argv)
    sp = train_tokenizer(args.corpus, args.out, args.vocab_size, args.verbose)
    print(f"wrote {args.out}: vocab_size={sp.get_piece_size()} unk/bos/eos/pad="
          f"{sp.unk_id()}/{sp.bos_id()}/{sp.eos_id()}/{sp.pad_id()}")


if __name__ == "__main__":
    main()
