"""The run's tokenizer: one interface, two implementations.

- ``SentencePieceTokenizer``: a SentencePiece ``.model`` (Llama 1/2, Code Llama, Llemma).
  GPT-NeoX's ``tokenizer_type: SPMTokenizer``.
- ``HFTokenizer``: a Hugging Face ``tokenizer.json`` (byte-level BPE of Llama 3.x, Qwen2.5,
  Mistral Tekken), with the ``tokenizer_config.json`` beside it for the special tokens.
  GPT-NeoX's ``tokenizer_type: HFTokenizer``.

Both give ``vocab_size`` (largest id + 1), ``eod`` (= ``eos``, the model's end-of-document id),
``bos`` (or None), ``add_bos`` (whether the model's own tokenizer starts a text with BOS),
``encode`` / ``encode_batch`` (ids without any special token added), ``decode`` /
``decode_batch`` and ``unique_identifiers`` (megatron-core keys its index caches on it).
Special tokens are never looked up by a guessed name: EOS and BOS come from the model's files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from neox.errors import NeoxError
from neox.exit_status import BAD_INPUT
from neox.paths import sha256_of

SPM, HF = "SPMTokenizer", "HFTokenizer"
KINDS = {"SPMTokenizer": SPM, "SentencePieceTokenizer": SPM, "HFTokenizer": HF}


class TokenizerError(NeoxError, ValueError):
    """A tokenizer file that cannot be used; the message is one line naming the file."""


class VocabFileError(TokenizerError):
    """The configured vocab_file cannot be used (a config's error: its status is bad input)."""

    exit_status = BAD_INPUT


def kind_of_file(path: str) -> str:
    """SPMTokenizer or HFTokenizer, by content: a tokenizer.json is a JSON object, a SentencePiece
    model a protobuf (whose first byte is never '{')."""
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    return HF if head.startswith(b"{") else SPM


class SentencePieceTokenizer:
    """Llama-style SentencePiece tokenizer. End of document is ``</s>``: the id comes from the
    model (``eos_id``), never from a guessed piece name (GPT-NeoX looked up ``<|endoftext|>``,
    which Llama lacks, and silently used ``<unk>``). SentencePiece's ``encode`` adds no BOS, so
    ``add_bos`` is False (the data tools' default: no BOS unless ``--prepend-bos``)."""

    kind = SPM

    def __init__(self, model_file: str, require_eos: bool = True):
        import sentencepiece as spm

        self.path = model_file
        self.sp = spm.SentencePieceProcessor(model_file=model_file)
        self.vocab_size = self.sp.get_piece_size()
        self.eod = self.sp.eos_id()
        self.bos = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        if self.eod < 0 and require_eos:
            raise ValueError(f"tokenizer {model_file} has no end-of-sentence token (</s>)")
        self.pad = -1  # Llama has no pad token; -1 never matches a real id
        self.eos = self.eod
        self.add_bos = False
        self.sha256 = sha256_of(model_file)  # megatron keys its index caches on this
        self.unique_identifiers = {"class": "SentencePieceTokenizer", "model_sha256": self.sha256}

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str], threads: int = 1) -> list[np.ndarray]:
        try:  # sentencepiece >= 0.2.1 returns numpy arrays: no Python int lists to convert
            return self.sp.encode(texts, num_threads=threads, return_type="numpy")
        except (TypeError, ValueError):
            return [np.asarray(ids, dtype=np.int64) for ids in self.sp.encode(texts, num_threads=threads)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.sp.decode(list(ids))

    def decode_batch(self, batch: Sequence[Sequence[int] | np.ndarray]) -> list[str]:
        # the stub's decode takes no numpy arrays, which sentencepiece does take
        return self.sp.decode(batch)  # type: ignore[arg-type]  # lists or numpy arrays of ids


def _token_content(value, config_path: str, key: str):
    """A special token of tokenizer_config.json: a string, an AddedToken dict or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise TokenizerError(f"{config_path}: {key} is neither a string nor a token object: {value!r}")


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` with its ``tokenizer_config.json``.

    EOS is tokenizer_config.json's ``eos_token`` (required). BOS is its ``bos_token`` (may be
    null, as Qwen2.5's). ``add_bos``: tokenizer_config.json's ``add_bos_token`` where it is set
    (transformers' Llama-family tokenizers rebuild the post-processor from it), else whether
    tokenizer.json's post-processor puts BOS first (``encode(..., add_special_tokens=True)``).

    Text is encoded with ``encode_special_tokens``: a document that contains the characters
    ``<|end_of_text|>`` gets the ids of those characters, not the EOS id (as SentencePiece and
    Meta's Llama 3 tokenizer do), so only the separators the data tools add are special."""

    kind = HF

    def __init__(self, path: str, config_path: str | None = None):
        from tokenizers import Tokenizer

        self.path = path
        self.config_path = config_path or os.path.join(os.path.dirname(os.path.abspath(path)),
                                                       "tokenizer_config.json")
        try:
            self.tok = Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a plain Exception
            raise TokenizerError(f"{path}: cannot load the Hugging Face tokenizer ({e})") from None
        if not os.path.isfile(self.config_path):
            raise TokenizerError(f"{self.config_path}: not found (needed beside {os.path.basename(path)} "
                                 "for the EOS/BOS tokens)")
        try:
            with open(self.config_path) as f:
                config = json.load(f)
        except ValueError as e:
            raise TokenizerError(f"{self.config_path}: not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise TokenizerError(f"{self.config_path}: not a JSON object")
        self.tok.encode_special_tokens = True
        self.vocab_size = max(self.tok.get_vocab(with_added_tokens=True).values()) + 1
        eos = _token_content(config.get("eos_token"), self.config_path, "eos_token")
        if eos is None:
            raise TokenizerError(f"{self.config_path}: no eos_token (the end-of-document token)")
        self.eos = self.eod = self._id(eos, "eos_token")
        bos = _token_content(config.get("bos_token"), self.config_path, "bos_token")
        self.bos = self._id(bos, "bos_token") if bos is not None else None
        pad = _token_content(config.get("pad_token"), self.config_path, "pad_token")
        self.pad_token_id = self._id(pad, "pad_token") if pad is not None else None  # for config.json
        self.pad = -1  # samples are packed, never padded; -1 never matches a real id (Qwen2.5's pad is its EOS)
        first = self.post_processor_prefix()
        if "add_bos_token" in config:
            self.add_bos = bool(config["add_bos_token"])
        else:
            self.add_bos = self.bos is not None and first == [self.bos]
        if self.add_bos and self.bos is None:
            raise TokenizerError(f"{self.config_path}: add_bos_token is true but there is no bos_token")
        self.sha256 = sha256_of(path)
        self.config_sha256 = sha256_of(self.config_path)
        self.unique_identifiers = {"class": "HFTokenizer", "tokenizer_sha256": self.sha256,
                                   "config_sha256": self.config_sha256}

    def _id(self, content: str, key: str) -> int:
        i = self.tok.token_to_id(content)
        if i is None:
            raise TokenizerError(f"{self.config_path}: {key} {content!r} is not a token of {self.path}")
        return i

    def post_processor_prefix(self) -> list[int]:
        """The ids tokenizer.json's post-processor puts before a text's own (e.g. [BOS])."""
        plain = self.tok.encode("a", add_special_tokens=False).ids
        full = self.tok.encode("a", add_special_tokens=True).ids
        for i in range(len(full) - len(plain) + 1):
            if full[i:i + len(plain)] == plain:
                return full[:i]
        return []

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], threads: int = 1) -> list[np.ndarray]:
        """The Rust library's own threads (RAYON_NUM_THREADS, set by the data tools before the first
        batch, decides how many; ``threads`` is accepted for the interface). ``encode_batch_fast``
        (no offsets) measured no faster here (bench/preprocess_throughput.py --tokenizer hf)."""
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.tok.decode(np.asarray(ids, dtype=np.int64).tolist(), skip_special_tokens=True)

    def decode_batch(self, batch: Sequence[Sequence[int] | np.ndarray]) -> list[str]:
        return self.tok.decode_batch([np.asarray(ids, dtype=np.int64).tolist() for ids in batch],
                                     skip_special_tokens=True)


def load_tokenizer(path: str, kind: str | None = None,
                   require_eos: bool = True) -> HFTokenizer | SentencePieceTokenizer:
    """The tokenizer in ``path``; ``kind`` (a config's tokenizer_type) must match the file's content.
    ``require_eos=False`` lets a SentencePiece model without ``</s>`` load (eos -1); a
    tokenizer.json always needs its eos_token."""
    found = kind_of_file(path)
    if kind is not None and KINDS.get(kind) != found:
        raise TokenizerError(f"{path} is a {'Hugging Face tokenizer.json' if found == HF else 'SentencePiece model'}, "
                             f"but tokenizer_type is {kind} (use {found})")
    return HFTokenizer(path) if found == HF else SentencePieceTokenizer(path, require_eos)


def describe(tok: Any) -> dict:
    """What a manifest records about the tokenizer (and the data check compares)."""
    out = {"kind": tok.kind, "sha256": tok.sha256, "vocab_size": tok.vocab_size,
           "bos_id": -1 if tok.bos is None else tok.bos, "eos_id": tok.eos}
    if tok.kind == HF:
        out["config_sha256"] = tok.config_sha256
        out["add_bos"] = tok.add_bos
    return out


def tokenizer_vocab_size(path: str, kind: str | None = None) -> int:
    """Largest id + 1 of the tokenizer in ``path`` (SentencePiece model or tokenizer.json); ``kind``,
    a tokenizer_type, must match the file."""
    found = kind_of_file(path)
    if kind is not None and KINDS.get(kind) != found:
        raise VocabFileError(f"key 'vocab_file': {path} is a {'tokenizer.json' if found == HF else 'SentencePiece model'}, "
                          f"but tokenizer_type is {kind} (use {found})")
    try:
        if found == HF:
            return HFTokenizer(path).vocab_size
        import sentencepiece as spm

        return spm.SentencePieceProcessor(model_file=path).vocab_size()
    except TokenizerError as e:
        raise VocabFileError(f"key 'vocab_file': {e}") from None
    except Exception as e:  # sentencepiece raises plain RuntimeError/OSError
        raise VocabFileError(f"key 'vocab_file': cannot read SentencePiece model {path}: {e}") from None
