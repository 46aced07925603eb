"""Weighted mixture: shares, the mixture table, index caches, and the Proof-Pile-2 helper."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
import zstandard
from conftest import REPO, tiny_cfg

from neox.data.dataset import SentencePieceTokenizer, build_train_dataset, cache_dir, component_of_sample, mixture_table

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)

COMPONENTS = ["arxiv", "open-web-math", "algebraic-stack"]


def mixture_cfg(toy_data, tmp_path, **kw):
    d = os.path.join(toy_data, "tokenized")
    args = dict(seq_length=64, train_iters=2500, train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=1,
                vocab_size=3001, data_cache_dir=str(tmp_path / "cache"),
                train_data_paths=[f"{d}/{c}_train_text_document" for c in COMPONENTS],
                train_data_weights=[2, 4, 1], vocab_file=os.path.join(toy_data, "tokenizer.model"))
    args.update(kw)
    return tiny_cfg(**args)


def test_blend_shares_follow_the_weights(toy_data, tmp_path, single_process_group):
    cfg = mixture_cfg(toy_data, tmp_path)
    ds = build_train_dataset(cfg, SentencePieceTokenizer(cfg.data.vocab_file))
    assert len(ds) >= 10_000
    shares = np.bincount(component_of_sample(ds)[:10_000], minlength=3) / 10_000
    assert np.abs(shares - np.array([2, 4, 1]) / 7).max() < 0.01, shares
    # the samples really come from the named component: compare with that component's own data
    s = ds[0]
    assert s["tokens"].shape == (64,)
    rows = mixture_table(ds, cfg)
    assert [r["component"] for r in rows] == COMPONENTS
    assert sum(r["tokens_drawn"] for r in rows) == 2500 * 4 * 64
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    for r, c in zip(rows, COMPONENTS):
        idx = np.fromfile(os.path.join(toy_data, "tokenized", f"{c}_train_text_document.bin"), dtype=np.uint16)
        assert r["tokens_available"] == idx.size
        assert r["epochs"] == pytest.approx(r["tokens_drawn"] / idx.size)


def test_index_cache_is_reused_and_rebuilt_when_data_changes(toy_data, tmp_path, single_process_group):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(toy_data, "tokenized"), data)
    kw = dict(train_data_paths=[str(data / f"{c}_train_text_document") for c in COMPONENTS], train_iters=50)
    cfg = mixture_cfg(toy_data, tmp_path, **kw)
    tok = SentencePieceTokenizer(cfg.data.vocab_file)
    first = build_train_dataset(cfg, tok)
    where = cache_dir(cfg, cfg.data.train_data_paths)
    files = {f: os.path.getmtime(os.path.join(where, f)) for f in os.listdir(where)}
    assert any(f.endswith("dataset_index.npy") for f in files)
    again = build_train_dataset(cfg, tok)
    assert {f: os.path.getmtime(os.path.join(where, f)) for f in os.listdir(where)} == files  # loaded, not rebuilt
    assert all((first[i]["tokens"] == again[i]["tokens"]).all() for i in range(20))
    # a different seed or sequence length gets its own cache entries
    build_train_dataset(mixture_cfg(toy_data, tmp_path, seed=7, **kw), tok)
    assert len(os.listdir(where)) > len(files)
    # a changed data file gets a fresh cache directory
    os.utime(data / "arxiv_train_text_document.bin", (1, 1))
    assert cache_dir(cfg, cfg.data.train_data_paths) != where


def _write_jsonl_zst(path, texts):
    import json

    os.makedirs(os.path.dirname(path), exist_ok=True)
    raw = "".join(json.dumps({"text": t, "meta": {}}) + "\n" for t in texts).encode()
    with open(path, "wb") as f:
        f.write(zstandard.ZstdCompressor().compress(raw))


def test_prepare_proof_pile_2_writes_the_mixture_paths(toy_data, tmp_path):
    pp2 = tmp_path / "proof-pile-2"
    shutil.copytree(os.path.join(toy_data, "corpus"), pp2)
    # as published: some AlgebraicStack files are empty zstd frames (13 bytes)
    with open(pp2 / "algebraic-stack" / "train" / "empty.jsonl.zst", "wb") as f:
        f.write(zstandard.ZstdCompressor(write_content_size=True).compress(b""))
    _write_jsonl_zst(str(tmp_path / "pile" / "part-0.jsonl.zst"), ["General text sample."] * 20)
    _write_jsonl_zst(str(tmp_path / "github" / "part-0.jsonl.zst"), ["def f(x):\n    return x\n"] * 20)
    out = tmp_path / "llemma"
    # decontaminated against a "test set" holding a passage of an OpenWebMath training document
    first = zstandard.ZstdDecompressor().stream_reader(open(pp2 / "open-web-math" / "train" / "part-000.jsonl.zst",
                                                            "rb")).read().decode().splitlines()[0]
    leak = tmp_path / "gsm8k_test.jsonl"
    passage = max(json.loads(first)["text"].splitlines(), key=len)  # one line: tokenized as in the document
    leak.write_text(json.dumps({"question": passage, "answer": "#### 1"}) + "\n")
    r = subprocess.run([sys.executable, "tools/prepare_proof_pile_2.py", "--proof-pile-2", str(pp2),
                        "--tokenizer-model", os.path.join(toy_data, "tokenizer.model"), "--out", str(out),
                        "--pile-sample", str(tmp_path / "pile"), "--redpajama-github", str(tmp_path / "github"),
                        "--workers", "2", "--decontaminate-against", f"{leak}=question,answer"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("data_mixture.yml", "data_mixture_decontaminated.yml"):
        mixture = yaml.safe_load(open(os.path.join(REPO, "llemma_configs", name)))
        for key in ("train_data_paths", "valid_data_paths", "test_data_paths"):
            for prefix in mixture[key]:
                mine = prefix.replace("data/llemma", str(out))
                assert os.path.getsize(mine + ".bin") > 0 and os.path.isfile(mine + ".idx"), mine
    original, clean = (yaml.safe_load(open(os.path.join(REPO, "llemma_configs", n)))
                       for n in ("data_mixture.yml", "data_mixture_decontaminated.yml"))
    assert clean["train_data_weights"] == original["train_data_weights"]  # only the training paths differ
    assert {k: v for k, v in clean.items() if k != "train_data_paths"} == \
        {k: v for k, v in original.items() if k != "train_data_paths"}
    record = json.load(open(out / "decontaminated" / "decontamination.json"))
    owm = next(o for o in record["outputs"] if "open-web-math" in o["source"])
    assert owm["documents_dropped_overlap"] >= 1  # the leaked document (and any sharing its 13-grams)
    assert "| open-web-math_train_text_document |" in r.stdout + r.stderr  # the report table
