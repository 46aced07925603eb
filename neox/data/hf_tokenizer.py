"""Hugging Face tokenizer files that encode and decode exactly like a Llama-style SentencePiece model.

What Code Llama's Hugging Face repository ships: tokenizer.model, tokenizer.json,
tokenizer_config.json and special_tokens_map.json. tokenizer.json is built here with the
``tokenizers`` library from the SentencePiece model itself, and tokenizer_config.json names the
plain ``PreTrainedTokenizerFast`` class, which every transformers version (4.x and 5.x) loads
verbatim from tokenizer.json. Naming ``LlamaTokenizer`` instead lets transformers 5.x rebuild the
pipeline, and its pre-tokenizer drops the dummy prefix before leading whitespace (``" 5"`` ->
``['▁', '5']`` where SentencePiece gives ``['▁▁', '5']``).

SentencePiece encodes ``<s>`` in text as plain characters (the trainer's data was tokenized so),
hence ``split_special_tokens``: transformers does not turn such text into the BOS id either.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from neox.errors import NeoxError

NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # SentencePiece piece types
BPE_MODEL = 2
# checked against SentencePiece whenever the files are written
SELF_CHECK_TEXTS = ["Let $x^2 + y^2 = z^2$.", " 5", "  two  spaces ", "\tdef f(x):\n    return x\n",
                    "héllo ∑ 🙂 日本", "a<s>b</s>", "\n\n"]


class UnsupportedTokenizer(NeoxError, ValueError):
    """A SentencePiece model whose behaviour this module does not reproduce."""


def _proto(model_path: str):
    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # protoc-generated, no stub
    with open(model_path, "rb") as f:
        proto.ParseFromString(f.read())
    spec = proto.normalizer_spec
    if proto.trainer_spec.model_type != BPE_MODEL:
        raise UnsupportedTokenizer(f"{model_path}: not a BPE model (Llama tokenizers are)")
    if spec.precompiled_charsmap or spec.remove_extra_whitespaces:
        raise UnsupportedTokenizer(f"{model_path}: normalization other than Llama's identity")
    return proto


def _merges(proto) -> list[tuple[str, str]]:
    """BPE merges ranked as SentencePiece applies them: the merged piece's score, highest first."""
    normal = {p.piece: (-p.score, i) for i, p in enumerate(proto.pieces) if p.type == NORMAL}
    ranked = sorted((rank, piece[:k], piece[k:]) for piece, rank in normal.items()
                    for k in range(1, len(piece)) if piece[:k] in normal and piece[k:] in normal)
    return [(left, right) for _, left, right in ranked]


def _user_defined(proto) -> list[str]:
    return [p.piece for p in proto.pieces if p.type == USER_DEFINED]


def build_tokenizer(model_path: str) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` equal to the SentencePiece model, BOS added like Llama's."""
    proto = _proto(model_path)
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    user_defined = _user_defined(proto)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges(proto), unk_token=proto.trainer_spec.unk_piece,
                               fuse_unk=True, byte_fallback=proto.trainer_spec.byte_fallback,
                               ignore_merges=bool(user_defined)))
    dummy_prefix = proto.normalizer_spec.add_dummy_prefix
    # Prepend adds the dummy prefix unconditionally, as SentencePiece does (Metaspace skips it
    # before a leading space)
    escape = [normalizers.Replace(" ", "▁")]
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁")] * dummy_prefix + escape)
    if user_defined:  # SentencePiece emits them whole: isolated here, looked up whole by the model
        pattern = "|".join(re.escape(piece) for piece in sorted(user_defined, key=len, reverse=True))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + [decoders.Strip(content=" ", left=1)] * dummy_prefix)
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                            for p in proto.pieces if p.type == CONTROL or p.piece == proto.trainer_spec.unk_piece])
    bos = proto.trainer_spec.bos_piece if proto.trainer_spec.bos_id >= 0 else None
    if bos:
        bos_id = proto.trainer_spec.bos_id
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    return tok


def special_tokens(model_path: str) -> dict:
    """{"bos_token": "<s>", ...} and {"bos_token_id": 1, ...} of the SentencePiece model (pad: None if none)."""
    sp = spm.SentencePieceProcessor(model_file=model_path)
    ids = {"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id(), "pad": sp.pad_id()}
    tokens = {f"{k}_token": sp.id_to_piece(i) for k, i in ids.items() if i >= 0}
    token_ids = {f"{k}_token_id": (i if i >= 0 else None) for k, i in ids.items() if k != "unk"}
    return {"tokens": tokens, "ids": token_ids}


def mismatch(model_path: str, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
             texts: Iterable[str]) -> str | None:
    """The first text on which ``encode`` (ids without BOS) or ``decode`` differs from SentencePiece."""
    sp = spm.SentencePieceProcessor(model_file=model_path)
    for text in texts:
        expected = sp.encode(text)
        got = encode(text)
        if got != expected:
            return f"{text!r}: encodes to {got[:8]} instead of {expected[:8]}"
        if decode(expected) != sp.decode(expected):
            return f"{text!r}: decodes to {decode(expected)!r} instead of {sp.decode(expected)!r}"
    return None


def write_hf_tokenizer(model_path: str, out_dir: str, model_max_length: int) -> dict:
    """Write tokenizer.model, tokenizer.json, tokenizer_config.json and special_tokens_map.json
    into ``out_dir``; returns the special-token ids. Raises UnsupportedTokenizer, before writing
    anything, for a model it cannot reproduce or one that fails the self-check."""
    tok = build_tokenizer(model_path)
    tok.encode_special_tokens = True  # what split_special_tokens sets in transformers
    texts = SELF_CHECK_TEXTS + [f"x{piece.replace('▁', ' ')}y" for piece in _user_defined(_proto(model_path))]
    bad = mismatch(model_path, lambda t: tok.encode(t, add_special_tokens=False).ids,
                   lambda ids: tok.decode(ids, skip_special_tokens=True), texts)
    if bad:
        raise UnsupportedTokenizer(f"{model_path}: the built tokenizer.json differs from SentencePiece on {bad}")
    special = special_tokens(model_path)
    shutil.copyfile(model_path, os.path.join(out_dir, "tokenizer.model"))
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special["tokens"],
              "add_bos_token": "bos_token" in special["tokens"], "add_eos_token": False,
              "split_special_tokens": True, "clean_up_tokenization_spaces": False,
              "model_max_length": model_max_length}
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), config)
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), special["tokens"])
    return special["ids"]


def _write_json(path: str, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")
