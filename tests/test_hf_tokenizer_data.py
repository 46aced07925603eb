"""Hugging Face (byte-level BPE) tokenizers through the data path: preprocessing token-exact
against `tokenizers` itself, int32 token files for a vocabulary above 65,535 ids (as Llama 3's),
read by the trainer's dataset, the data check and the overlap scanner; BOS/EOS from the model's
files; bad tokenizer files refused in one line; the export copies the files byte for byte."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import zstandard
from conftest import REPO, tiny_cfg
from megatron.core.datasets.indexed_dataset import IndexedDataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from neox.cli import preprocess_data
from neox.config import ConfigError
from neox.data import overlap
from neox.data.check import DataError, check_data, check_tokenizer
from neox.data.dataset import build_train_dataset
from neox.data.preprocess import preprocess
from neox.data.tokenizer import HFTokenizer, TokenizerError, load_tokenizer
from neox.interop import export_hf

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)

FILLER = 64_500  # unused pieces first, so the trained ones get ids around and above 65,535
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
COMPONENTS = ("arxiv", "open-web-math", "algebraic-stack")


def texts_of(path):
    with open(path, "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read()
    return [json.loads(line)["text"] for line in data.splitlines() if line.strip()]


def write_config(d, **keys):
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", **keys}, f)


@pytest.fixture(scope="module")
def corpus(toy_data):
    return os.path.join(toy_data, "corpus")


@pytest.fixture(scope="module")
def bpe(corpus, tmp_path_factory):
    """A Llama-3-like tokenizer.json: byte-level BPE trained on the toy corpus, renumbered after
    64,500 filler pieces, BOS and EOS added last, a post-processor that puts BOS first."""
    d = tmp_path_factory.mktemp("bpe")
    texts = [t for c in COMPONENTS for t in texts_of(os.path.join(corpus, c, "train", "part-000.jsonl.zst"))][::4]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=4000, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    spec = json.loads(tok.to_str())
    trained = spec["model"]["vocab"]
    spec["model"]["vocab"] = {**{f"<|filler_{i}|>": i for i in range(FILLER)},
                              **{piece: i + FILLER for piece, i in trained.items()}}
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens([BOS, EOS])
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos)])
    path = str(d / "tokenizer.json")
    tok.save(path)
    write_config(str(d), bos_token=BOS, eos_token=EOS, model_max_length=131072)
    (d / "special_tokens_map.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS}))
    assert (bos, eos) == (FILLER + len(trained), FILLER + len(trained) + 1)
    return {"path": path, "dir": str(d), "vocab": FILLER + len(trained) + 2, "bos": bos, "eos": eos,
            "trained": len(trained)}


def direct(bpe):
    """The tokenizer called directly, as the data tools use it (special-token text is text)."""
    tok = Tokenizer.from_file(bpe["path"])
    tok.encode_special_tokens = True
    return tok


@pytest.fixture(scope="module")
def tokenized(bpe, corpus, tmp_path_factory):
    """The three validation files preprocessed with the BPE tokenizer (2 workers, --append-eod)."""
    out = tmp_path_factory.mktemp("tokenized")
    files = [os.path.join(corpus, c, "validation", "part-000.jsonl.zst") for c in COMPONENTS]
    m = preprocess(files, str(out / "val"), bpe["path"], append_eod=True, workers=2, progress=False)
    return {"prefix": str(out / "val_text_document"), "manifest": m, "files": files}


def test_special_tokens_come_from_the_models_files(bpe, tmp_path):
    tok = HFTokenizer(bpe["path"])
    assert bpe["vocab"] > 65_536 and FILLER + bpe["trained"] > 66_500  # trained pieces reach ids above 65,535
    assert (tok.vocab_size, tok.bos, tok.eos, tok.eod, tok.pad) == (bpe["vocab"], bpe["bos"], bpe["eos"], bpe["eos"], -1)
    assert tok.add_bos and tok.post_processor_prefix() == [bpe["bos"]]  # Llama 3: no add_bos_token key
    # the text "<|end_of_text|>" inside a document is text, not the EOS id
    ids = tok.encode(f"a {EOS} b")
    assert bpe["eos"] not in ids and tok.decode(ids) == f"a {EOS} b"
    assert [list(a) for a in tok.encode_batch(["x + y", "\\frac{1}{2}"])] == [tok.encode("x + y"),
                                                                             tok.encode("\\frac{1}{2}")]
    # add_bos_token, where set, decides (as transformers' Llama tokenizers rebuild the post-processor)
    d = tmp_path / "no_bos"
    d.mkdir()
    shutil.copy(bpe["path"], d / "tokenizer.json")
    write_config(str(d), bos_token=BOS, eos_token={"content": EOS, "special": True}, add_bos_token=False)
    assert (HFTokenizer(str(d / "tokenizer.json")).add_bos, HFTokenizer(str(d / "tokenizer.json")).eos) == \
        (False, bpe["eos"])
    # Qwen2.5's kind: no BOS token, no post-processor
    spec = json.loads(open(bpe["path"]).read())
    spec["post_processor"] = None
    (d / "tokenizer.json").write_text(json.dumps(spec))
    write_config(str(d), bos_token=None, eos_token=EOS)
    qwen = HFTokenizer(str(d / "tokenizer.json"))
    assert (qwen.bos, qwen.add_bos, qwen.eos) == (None, False, bpe["eos"])


def test_preprocess_is_token_exact_in_int32(bpe, tokenized):
    m, prefix = tokenized["manifest"], tokenized["prefix"]
    tok = direct(bpe)
    texts = [t for f in tokenized["files"] for t in texts_of(f)]
    expected = [tok.encode(t).ids + [bpe["eos"]] for t in texts]  # add_special_tokens=True: BOS first
    assert all(e[0] == bpe["bos"] for e in expected)
    ds = IndexedDataset(prefix)
    assert ds[0].dtype == np.int32 and len(ds) == len(texts) == m["documents"] == 17 + 39 + 34
    assert [ds[i].tolist() for i in range(len(ds))] == expected
    flat = np.fromfile(prefix + ".bin", dtype=np.int32)  # 4 bytes a token, no copy needed to read
    assert flat.size == m["tokens"] == sum(map(len, expected))
    high = sum(i > 65_535 for e in expected for i in e)
    assert int((flat > 65_535).sum()) == high > 2 * len(texts) + 1000  # ids above 16 bits survive, not only BOS/EOS
    assert (m["dtype"], m["prepend_bos"], m["append_eod"], m["eod_id"]) == ("int32", True, True, bpe["eos"])
    t = m["tokenizer"]
    assert (t["kind"], t["vocab_size"], t["bos_id"], t["eos_id"], t["add_bos"]) == \
        ("HFTokenizer", bpe["vocab"], bpe["bos"], bpe["eos"], True)
    assert t["sha256"] == HFTokenizer(bpe["path"]).sha256
    assert os.path.normpath(os.path.join(os.path.dirname(prefix), t["config_path"])) == \
        os.path.join(bpe["dir"], "tokenizer_config.json")


def test_bos_follows_the_flag_and_special_text_stays_text(bpe, tmp_path):
    src = tmp_path / "d.jsonl"
    docs = ["1 + 1 = 2", f"before {EOS} after", "\\int_0^1 x\\,dx"]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    tok = direct(bpe)
    preprocess([str(src)], str(tmp_path / "nobos"), bpe["path"], append_eod=True, prepend_bos=False, progress=False)
    ds = IndexedDataset(str(tmp_path / "nobos_text_document"))
    assert [ds[i].tolist() for i in range(3)] == [tok.encode(t, add_special_tokens=False).ids + [bpe["eos"]]
                                                  for t in docs]
    assert ds[1].tolist().count(bpe["eos"]) == 1  # only the separator


def test_trainer_dataset_and_data_check_read_int32(bpe, tokenized, tmp_path, single_process_group):
    prefix = tokenized["prefix"]
    cfg = tiny_cfg(seq_length=64, train_iters=5, vocab_size=None, data_cache_dir=str(tmp_path),
                   train_data_paths=[prefix], vocab_file=bpe["path"], tokenizer_type="HFTokenizer")
    assert cfg.model.vocab_size == bpe["vocab"]  # taken from tokenizer.json
    assert check_data(cfg) == []  # the index (int32) and the manifest's tokenizer (kind, hash, vocabulary)
    with pytest.raises(DataError, match="tokenized with a HFTokenizer .* but tokenizer_type is SPMTokenizer"):
        check_tokenizer(prefix, bpe["path"], bpe["vocab"], False, "SPMTokenizer")
    ds = build_train_dataset(cfg, load_tokenizer(bpe["path"], "HFTokenizer"))
    flat = np.fromfile(prefix + ".bin", dtype=np.int32).astype(np.int64)
    pairs = set((flat[:-1] * bpe["vocab"] + flat[1:]).tolist())
    pairs.add(bpe["eos"] * bpe["vocab"] + bpe["bos"])  # a document boundary in the shuffled order
    top = 0
    for i in range(cfg.batch.train_batch_size * 5):
        s = ds[i]
        seq = np.concatenate([s["tokens"].numpy(), s["labels"].numpy()[-1:]])
        assert seq.shape == (65,) and (s["tokens"][1:] == s["labels"][:-1]).all()
        assert set((seq[:-1] * bpe["vocab"] + seq[1:]).tolist()) <= pairs  # real neighbours of the .bin
        top = max(top, int(seq.max()))
    assert 65_535 < top < bpe["vocab"]


def test_config_checks_tokenizer_type_against_the_file(bpe):
    with pytest.raises(ConfigError, match=r"is a tokenizer.json, but tokenizer_type is SPMTokenizer \(use HFTokenizer\)"):
        tiny_cfg(vocab_size=None, vocab_file=bpe["path"], tokenizer_type="SPMTokenizer")
    with pytest.raises(ConfigError, match="key 'tokenizer_type' must be SPMTokenizer .* or HFTokenizer"):
        tiny_cfg(vocab_file=bpe["path"], tokenizer_type="GPT2BPETokenizer")
    with pytest.raises(ConfigError, match=rf"key 'vocab_size' \(65536\) is smaller than the vocabulary .*\({bpe['vocab']}\)"):
        tiny_cfg(vocab_size=65536, vocab_file=bpe["path"], tokenizer_type="HFTokenizer")


def test_overlap_scanner_reads_int32(bpe, tokenized, tmp_path):
    doc_texts = [t for f in tokenized["files"] for t in texts_of(f)]
    target = max(range(len(doc_texts)), key=lambda i: len(doc_texts[i]) * (i % 7 == 3))
    passage = " ".join(doc_texts[target].split(" ")[20:120])
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(json.dumps({"problem": passage, "solution": "no such text anywhere"}) + "\n")
    for mode in ("tokens", "words"):
        out = str(tmp_path / mode)
        summary = overlap.run(str(test_file), ["problem", "solution"], [tokenized["prefix"]], bpe["path"], out,
                              n=10, mode=mode, progress=False, log=lambda m: None)
        rows = [json.loads(line) for line in open(os.path.join(out, "hits.jsonl"))]
        assert {(r["doc"], r["key"]) for r in rows} >= {(target, "problem")}, mode
        assert all(r["key"] == "problem" for r in rows)
        assert summary["tokens_scanned"] == tokenized["manifest"]["tokens"]
        if mode == "words":
            hit = next(r for r in rows if r["doc"] == target)
            assert hit["ngram"] in " ".join(passage.split())


def test_tokenizer_config_without_eos_is_one_line_naming_the_file(bpe, tmp_path, capsys):
    d = tmp_path / "tok"
    d.mkdir()
    shutil.copy(bpe["path"], d / "tokenizer.json")
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps({"text": "hello"}) + "\n")
    argv = ["--input", str(src), "--output-prefix", str(tmp_path / "out" / "x"), "--tokenizer-model",
            str(d / "tokenizer.json"), "--append-eod"]
    for config, what in ((None, "not found"), ({"bos_token": BOS}, "no eos_token"),
                         ({"eos_token": "<|eot|>"}, f"eos_token '<|eot|>' is not a token of {d}/tokenizer.json")):
        if config is not None:
            write_config(str(d), **config)
        with pytest.raises(SystemExit) as e:
            preprocess_data.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.count("\n") == 1, err
        assert err.startswith(f"error: {d}/tokenizer_config.json: {what}"), err
    assert not os.path.exists(tmp_path / "out")
    with pytest.raises(TokenizerError, match="is a Hugging Face tokenizer.json, but tokenizer_type is SPMTokenizer"):
        load_tokenizer(bpe["path"], "SPMTokenizer")


def test_export_copies_the_hf_tokenizer_byte_for_byte(bpe, tmp_path):
    ckpt = tmp_path / "ckpt"  # a trained run's checkpoint: no <ckpt>/tokenizer/, vocab_file = tokenizer.json
    ckpt.mkdir()
    model, hf_dir = export_hf.find_tokenizer(str(ckpt), {"vocab_file": bpe["path"]})
    assert (model, hf_dir) == (None, bpe["dir"])
    out = tmp_path / "out"
    out.mkdir()
    ids = export_hf.write_tokenizer(model, hf_dir, str(out), {"max_position_embeddings": 128})
    assert ids == {"bos_token_id": bpe["bos"], "eos_token_id": bpe["eos"]}
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / f).read_bytes() == open(os.path.join(bpe["dir"], f), "rb").read(), f
    assert sorted(os.listdir(out)) == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]


def test_smoke_training_on_bpe_data_then_export(bpe, tokenized, tmp_path):
    """One short deepy.py launch (TP=2, 4 steps) on the int32 data; the export's tokenizer is the input's."""
    prefix, run = tokenized["prefix"], tmp_path
    cmd = [sys.executable, "deepy.py", "train.py", "llemma_configs/smoke.yml"]
    for o in (f"train_data_paths=[{prefix}]", "train_data_weights=[1]", f"valid_data_paths=[{prefix}]",
              f"vocab_file={bpe['path']}", "tokenizer_type=HFTokenizer", "train_iters=4", "warmup_iters=1",
              "lr_decay_iters=4", "checkpoint_factor=4", "eval_interval=4", f"log_dir={run}/logs",
              f"save={run}/ckpt", f"data_cache_dir={run}/cache"):
        cmd += ["-o", o]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    rows = [json.loads(line) for line in open(run / "logs" / "metrics.jsonl")]
    train = [row for row in rows if "loss" in row]
    assert [row["step"] for row in train] == [1, 2, 3, 4]
    # a fresh model predicts about uniformly over the 67k-id vocabulary: loss near ln(V)
    assert abs(train[0]["loss"] - np.log(bpe["vocab"])) < 0.5, train[0]
    mixture = json.load(open(run / "logs" / "mixture.json"))
    assert mixture[0]["tokens_available"] == tokenized["manifest"]["tokens"]
    assert export_hf.main(["--ckpt", str(run / "ckpt"), "--out", str(run / "hf")]) == 0
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (run / "hf" / f).read_bytes() == open(os.path.join(bpe["dir"], f), "rb").read(), f
    config = json.load(open(run / "hf" / "config.json"))
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"]) == \
        (bpe["vocab"], bpe["bos"], bpe["eos"])
