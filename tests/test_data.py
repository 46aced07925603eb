"""Tokenized data: lossless preprocessing, clear errors, deterministic sample order."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm
import zstandard
from conftest import REPO, tiny_cfg
from megatron.core.datasets.indexed_dataset import IndexedDataset

from neox.data.dataset import SentencePieceTokenizer, build_train_dataset, micro_batch_indices
from neox.data.preprocess import preprocess


def read_jsonl_zst(path):
    with open(path, "rb") as f:
        text = zstandard.ZstdDecompressor().stream_reader(f).read().decode()
    return [json.loads(line)["text"] for line in text.splitlines() if line.strip()]


@pytest.mark.processes
def test_round_trip_is_lossless(toy_data, tmp_path):
    src = os.path.join(toy_data, "corpus", "algebraic-stack", "validation")
    tok = os.path.join(toy_data, "tokenizer.model")
    manifest = preprocess([src], str(tmp_path / "as"), tok, append_eod=True, progress=False)
    texts = read_jsonl_zst(os.path.join(src, "part-000.jsonl.zst"))
    ds = IndexedDataset(str(tmp_path / "as_text_document"))
    sp = spm.SentencePieceProcessor(model_file=tok)
    assert len(ds) == len(texts) == manifest["documents"]
    assert ds[0].dtype == np.uint16
    for i, text in enumerate(texts):
        ids = ds[i].tolist()
        assert ids == sp.encode(text) + [2]  # </s> appended, its id from the tokenizer
        assert sp.decode(ids[:-1]) == text
    assert manifest["tokens"] == sum(len(ds[i]) for i in range(len(ds)))
    assert manifest["eod_id"] == 2


@pytest.mark.processes
@pytest.mark.parametrize("content,needle", [
    (b"", "input file is empty"),
    (b'{"text": "ok"}\nnot json\n', "bad.jsonl:2: line is not valid JSON"),
    (b'{"text": "ok"}\n{"body": "x"}\n', "bad.jsonl:2: line has no 'text' key"),
])
def test_bad_input_is_one_error_line_and_no_output(toy_data, tmp_path, content, needle):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input",
                        str(bad), "--output-prefix", str(tmp_path / "out"), "--tokenizer-model",
                        os.path.join(toy_data, "tokenizer.model"), "--append-eod"],
                       capture_output=True, text=True)
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], r.stderr
    assert not [p for p in os.listdir(tmp_path) if p.startswith("out")]


@pytest.mark.processes
def test_sample_order_is_deterministic_and_independent_of_dp(toy_data, tmp_path, single_process_group):
    d = os.path.join(toy_data, "tokenized")
    cfg = tiny_cfg(seq_length=64, train_iters=5, train_micro_batch_size_per_gpu=2,
                   gradient_accumulation_steps=2, vocab_size=3001, data_cache_dir=str(tmp_path),
                   train_data_paths=[f"{d}/arxiv_train_text_document", f"{d}/open-web-math_train_text_document"],
                   train_data_weights=[1, 3], vocab_file=os.path.join(toy_data, "tokenizer.model"))
    tok = SentencePieceTokenizer(cfg.data.vocab_file)
    a, b = build_train_dataset(cfg, tok), build_train_dataset(cfg, tok)
    G = cfg.batch.train_batch_size  # 4
    for i in range(G * 5):
        assert a[i]["tokens"].shape == (64,)
        assert (a[i]["tokens"] == b[i]["tokens"]).all()  # rebuilt (from cache) = same order
        assert (a[i]["tokens"][1:] == a[i]["labels"][:-1]).all()  # seq_length + 1 tokens
    # one update's samples: DP=1 x accum 2 and DP=2 x accum 1 cover the same global indices
    for step in range(5):
        dp1 = sorted(i for j in range(2) for i in micro_batch_indices(step, j, 0, 2, 1, G))
        dp2 = sorted(i for r in range(2) for i in micro_batch_indices(step, 0, r, 2, 2, G))
        assert dp1 == dp2 == list(range(step * G, (step + 1) * G))


def test_data_identity_follows_content_not_mtime(tmp_path):
    import os
    import shutil

    from neox.data.dataset import data_identity

    prefix = tmp_path / "a" / "x_text_document"
    prefix.parent.mkdir()
    (tmp_path / "a" / "x_text_document.idx").write_bytes(b"index" * 100)
    (tmp_path / "a" / "x_text_document.bin").write_bytes(bytes(range(256)) * 20000)  # 5 MB
    before = data_identity([str(prefix)])
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # a copy (new mtimes) is the same data
    copied = data_identity([str(tmp_path / "b" / "x_text_document")])
    assert list(copied.values()) == list(before.values())
    os.utime(tmp_path / "a" / "x_text_document.bin", (1, 1))
    assert data_identity([str(prefix)]) == before
    with open(tmp_path / "a" / "x_text_document.bin", "r+b") as f:  # one byte in the middle
        f.seek(2_560_000)
        f.write(b"\xaa")
    after = data_identity([str(prefix)])
    assert after[str(prefix) + ".bin"]["sha256"] != before[str(prefix) + ".bin"]["sha256"]
    assert after[str(prefix) + ".idx"] == before[str(prefix) + ".idx"]


def test_prefetcher_returns_what_a_direct_fetch_returns():
    import threading

    import torch

    from neox.data.dataset import Prefetcher, get_micro_batch

    class Samples:  # sample i: tokens all equal to i; records which thread built it
        threads = set()

        def __getitem__(self, i):
            self.threads.add(threading.current_thread().name)
            t = torch.full((4,), i)
            return {"tokens": t, "labels": t + 1, "loss_mask": torch.ones(4)}

    data = Samples()
    p = Prefetcher(data, dp_rank=1, micro=2, dp=2, global_batch=8)
    keys = [(0, 0), (0, 1), (1, 0), (1, 1), (5, 0), (5, 1)]  # (5, 0): a jump, as after a rollback
    wanted = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (5, 1)]  # (2, 0) was prefetched, (5, 0) is asked
    for key, nxt in zip(keys, wanted[1:] + [None]):
        got = p.get(key, nxt)
        direct = get_micro_batch(data, key[0], key[1], 1, 2, 2, 8)
        assert all(torch.equal(got[k], direct[k]) for k in ("tokens", "labels", "loss_mask")), key
    p.close()
    assert any(name.startswith("prefetch") for name in data.threads)
