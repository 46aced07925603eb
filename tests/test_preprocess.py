"""tools/preprocess_data.py: lossless, worker-count independent, loud on bad input, resumable."""

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import tarfile

import lm_dataformat
import numpy as np
import pytest
import sentencepiece as spm
import zstandard
from megatron.core.datasets.indexed_dataset import IndexedDataset

from neox.cli import preprocess_data
from neox.data import preprocess as preprocess_lib
from neox.data.preprocess import PreprocessError, preprocess


def texts_of(path):
    with open(path, "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read()
    return [json.loads(line)["text"] for line in data.splitlines() if line.strip()]


def outputs(prefix):
    """Bytes of the .bin and .idx written for `prefix`."""
    return [open(f"{prefix}_text_document{ext}", "rb").read() for ext in (".bin", ".idx")]


def write_jsonl(path, docs):
    path.write_bytes(b"".join(json.dumps({"text": d}).encode() + b"\n" for d in docs))
    return str(path)


@pytest.fixture(scope="module")
def corpus(toy_data):
    return os.path.join(toy_data, "corpus")


@pytest.mark.processes
def test_round_trip_several_files_workers_2(corpus, tok, sp, tmp_path):
    # a glob (sorted) then a directory (recursive): 3 + 3 files, in that order
    inputs = [os.path.join(corpus, "*", "validation", "*.jsonl.zst"), os.path.join(corpus, "arxiv")]
    m = preprocess(inputs, str(tmp_path / "rt"), tok, append_eod=True, workers=2, progress=False)
    files = [os.path.join(corpus, c, "validation", "part-000.jsonl.zst")
             for c in ("algebraic-stack", "arxiv", "open-web-math")]
    files += [os.path.join(corpus, "arxiv", s, "part-000.jsonl.zst") for s in ("test", "train", "validation")]
    files = list(dict.fromkeys(files))  # arxiv/validation is named twice, kept once
    assert [os.path.normpath(os.path.join(tmp_path, i["path"])) for i in m["inputs"]] == files
    texts = [t for f in files for t in texts_of(f)]
    ds = IndexedDataset(str(tmp_path / "rt_text_document"))
    assert len(ds) == len(texts) == m["documents"] == 17 + 34 + 39 + 18 + 329
    assert ds[0].dtype == np.uint16
    for i, text in enumerate(texts):
        ids = ds[i].tolist()
        assert ids == sp.encode(text) + [2]
        assert sp.decode(ids[:-1]) == text
    assert m["tokens"] == sum(len(ds[i]) for i in range(len(ds))) == sum(i["tokens"] for i in m["inputs"])
    assert [i["documents"] for i in m["inputs"]] == [34, 17, 39, 18, 329]
    with open(tok, "rb") as f:
        assert m["tokenizer"]["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert (m["tokenizer"]["vocab_size"], m["eod_id"], m["tokenizer"]["bos_id"]) == (3001, 2, 1)
    assert m["inputs"][0]["bytes"] == os.path.getsize(files[0])
    assert not os.path.exists(tmp_path / "rt_text_document.shards")  # merged, then removed


@pytest.mark.processes
def test_output_is_identical_for_any_worker_count(corpus, tok, tmp_path):
    inputs = [os.path.join(corpus, "open-web-math"), os.path.join(corpus, "*", "test")]  # a glob of directories
    for workers in (1, 2, 3):
        preprocess(inputs, str(tmp_path / f"w{workers}" / "x"), tok, workers=workers, progress=False)
    assert outputs(tmp_path / "w1" / "x") == outputs(tmp_path / "w2" / "x") == outputs(tmp_path / "w3" / "x")
    manifests = [open(tmp_path / f"w{w}" / "x_text_document.manifest.json").read() for w in (1, 2, 3)]
    assert manifests[0] == manifests[1] == manifests[2]
    assert [i["path"].split("corpus/")[1] for i in json.loads(manifests[0])["inputs"]] == [
        f"{c}/{s}/part-000.jsonl.zst" for c, s in [("open-web-math", "test"), ("open-web-math", "train"),
                                                    ("open-web-math", "validation"), ("algebraic-stack", "test"),
                                                    ("arxiv", "test")]]
    # one file and 2 workers: one process with 2 encode threads, same bytes
    one = [os.path.join(corpus, "open-web-math", "train")]
    preprocess(one, str(tmp_path / "a"), tok, workers=1, progress=False)
    preprocess(one, str(tmp_path / "b"), tok, workers=2, progress=False)
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")


@pytest.mark.processes
def test_bos_and_eod_policy(corpus, tok, sp, tmp_path):
    src = os.path.join(corpus, "arxiv", "test", "part-000.jsonl.zst")
    m = preprocess([src], str(tmp_path / "b"), tok, append_eod=False, prepend_bos=True, progress=False)
    ds = IndexedDataset(str(tmp_path / "b_text_document"))
    assert [ds[i].tolist() for i in range(len(ds))] == [[1] + sp.encode(t) for t in texts_of(src)]
    assert (m["append_eod"], m["prepend_bos"]) == (False, True)


def test_tokenizer_without_bos_or_eos_is_refused(tmp_path):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["hello world foo bar"] * 50), model_writer=model,
                                   vocab_size=20, bos_id=-1, eos_id=-1, hard_vocab_limit=False, minloglevel=2)
    (tmp_path / "nobos.model").write_bytes(model.getvalue())
    src = write_jsonl(tmp_path / "a.jsonl", ["hello"])
    with pytest.raises(PreprocessError, match="nobos.model: tokenizer has no EOS id"):
        preprocess([src], str(tmp_path / "o"), str(tmp_path / "nobos.model"), append_eod=True, progress=False)
    with pytest.raises(PreprocessError, match="nobos.model: tokenizer has no BOS id"):
        preprocess([src], str(tmp_path / "o"), str(tmp_path / "nobos.model"), append_eod=False,
                   prepend_bos=True, progress=False)


ZSTD = zstandard.ZstdCompressor(write_checksum=True)
GOOD = b'{"text": "a = b"}\n'
BAD_INPUTS = [
    ("bad.jsonl", b"", "bad.jsonl: input file is empty"),
    ("bad.jsonl", b"\n  \n", "bad.jsonl: input file is empty"),
    ("bad.jsonl.zst", ZSTD.compress(b""), "bad.jsonl.zst: input file is empty"),  # 13 bytes, as in AlgebraicStack
    ("bad.jsonl.zst", b"this is not zstd", "bad.jsonl.zst:1: cannot decompress: .*Unknown frame descriptor"),
    # two complete lines in frame 1, then frame 2 cut short
    ("bad.jsonl.zst", ZSTD.compress(GOOD * 2) + ZSTD.compress(GOOD * 50)[:-9], "bad.jsonl.zst:3: .*truncated"),
    ("bad.jsonl.gz", b"\x1f\x8b\x08\x00garbage", "bad.jsonl.gz:1: cannot decompress"),
    ("bad.jsonl.gz", gzip.compress(GOOD * 9)[:-12], "bad.jsonl.gz:1: cannot decompress: .*end-of-stream"),
    ("bad.jsonl", GOOD + b"\n" + b"not json\n", "bad.jsonl:3: line is not valid JSON"),
    ("bad.jsonl", GOOD + b'{"body": "x"}\n', "bad.jsonl:2: line has no 'text' key"),
    ("bad.jsonl", GOOD + b'["text"]\n', "bad.jsonl:2: line has no 'text' key"),
    ("bad.jsonl", GOOD * 3 + b'{"text": 7}\n', "bad.jsonl:4: 'text' is not a string but int"),
    ("bad.jsonl", b'{"text": "caf\xe9"}\n', "bad.jsonl:1: line is not valid UTF-8"),
    ("bad.jsonl", GOOD + b'{"text": "\\ud800"}\n', "bad.jsonl:2: cannot tokenize"),
    ("bad.jsonl", b'{"text": ""}\n' * 3, "no documents written from 1 input file"),
    ("bad.json.zst", zstandard.ZstdCompressor().compress(b'["ok", 5]'), "bad.json.zst:2: document 'text'"),
]


@pytest.mark.processes
@pytest.mark.parametrize("name,content,message", BAD_INPUTS)
def test_bad_input_is_refused_with_file_and_line(tok, tmp_path, name, content, message):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(content)
    with pytest.raises(PreprocessError, match=message):
        preprocess([str(tmp_path / "in" / name)], str(tmp_path / "out"), tok, workers=1, progress=False)
    assert os.listdir(tmp_path) == ["in"]  # no output, no temp files, no empty shard dir


@pytest.mark.processes
def test_a_failed_run_removes_the_directories_it_created(tok, tmp_path):
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "a.jsonl"
    src.write_bytes(GOOD + b"not json\n")
    (tmp_path / "kept").mkdir()  # existed before: stays, even empty
    for prefix in (tmp_path / "new" / "tokenized" / "x", tmp_path / "kept" / "x"):
        with pytest.raises(PreprocessError, match="a.jsonl:2: line is not valid JSON"):
            preprocess([str(src)], str(prefix), tok, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["in", "kept"] and os.listdir(tmp_path / "kept") == []
    src.write_bytes(GOOD)
    preprocess([str(src)], str(tmp_path / "new" / "tokenized" / "x"), tok, progress=False)
    assert sorted(os.listdir(tmp_path / "new" / "tokenized")) == [f"x_text_document.{e}" for e in
                                                                   ("bin", "idx", "manifest.json")]


@pytest.mark.processes
def test_missing_paths_are_errors(tok, tmp_path):
    with pytest.raises(PreprocessError, match="nope.jsonl: no such file"):
        preprocess([str(tmp_path / "nope.jsonl")], str(tmp_path / "o"), tok, progress=False)
    with pytest.raises(PreprocessError, match=r"\*.jsonl.zst: no such file, directory or glob match"):
        preprocess([str(tmp_path / "*.jsonl.zst")], str(tmp_path / "o"), tok, progress=False)
    (tmp_path / "d").mkdir()
    with pytest.raises(PreprocessError, match="directory contains no"):
        preprocess([str(tmp_path / "d")], str(tmp_path / "o"), tok, progress=False)
    (tmp_path / "d" / "x.csv").write_text("text\nhello\n")
    with pytest.raises(PreprocessError, match="x.csv: unsupported file type"):
        preprocess([str(tmp_path / "d" / "x.csv")], str(tmp_path / "o"), tok, progress=False)


@pytest.mark.processes
def test_cli_one_error_line_then_allow_empty(toy_data, tok, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a-empty.jsonl.zst").write_bytes(ZSTD.compress(b""))
    write_jsonl(d / "b.jsonl", ["x + y", "", "z"])
    argv = ["--input", str(d), "--output-prefix", str(tmp_path / "o"), "--tokenizer-model", tok, "--append-eod"]
    with pytest.raises(SystemExit) as e:
        preprocess_data.main(argv)
    assert e.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # + tqdm
    assert err == [f"error: {d / 'a-empty.jsonl.zst'}: input file is empty (no documents; --allow-empty skips it)"]
    assert sorted(os.listdir(tmp_path)) == ["in"]

    preprocess_data.main(argv + ["--allow-empty", "--workers", "2"])
    m = json.load(open(tmp_path / "o_text_document.manifest.json"))
    assert [(i["path"], i["documents"], i["empty"]) for i in m["inputs"]] == [
        ("in/a-empty.jsonl.zst", 0, True), ("in/b.jsonl", 2, False)]
    assert (m["documents"], m["skipped_empty_files"], m["skipped_empty_documents"]) == (2, 1, 1)
    assert "2 documents" in capsys.readouterr().out


@pytest.mark.processes
def test_lm_dataformat_archives(tok, sp, tmp_path):
    docs = [f"Let $x_{i} = {i}^2$. Then x_{i} = {i * i}." for i in range(30)]
    ar = lm_dataformat.Archive(str(tmp_path / "lmd"))
    for d in docs:
        ar.add_data(d, meta={"src": "test"})
    ar.commit()
    (jsonl_zst,) = [p for p in os.listdir(tmp_path / "lmd") if p.endswith(".jsonl.zst")]
    with tarfile.open(tmp_path / "arch.jsonl.zst.tar", "w", format=tarfile.GNU_FORMAT) as t:  # as GNU tar
        t.add(tmp_path / "lmd" / jsonl_zst, arcname="part.jsonl.zst")
    ja = lm_dataformat.JSONArchive(str(tmp_path / "ja"))
    for d in docs[:7]:
        ja.add_data(d)
    ja.commit()
    inputs = [str(tmp_path / "lmd" / jsonl_zst), str(tmp_path / "arch.jsonl.zst.tar"), str(tmp_path / "ja")]
    m = preprocess(inputs, str(tmp_path / "o"), tok, workers=2, progress=False)
    assert [i["documents"] for i in m["inputs"]] == [30, 30, 7]
    ds = IndexedDataset(str(tmp_path / "o_text_document"))
    assert [ds[i].tolist() for i in range(len(ds))] == [sp.encode(d) + [2] for d in docs + docs + docs[:7]]


@pytest.mark.processes
def test_token_id_out_of_range(corpus, tok, sp, tmp_path, monkeypatch):
    src = os.path.join(corpus, "open-web-math", "test", "part-000.jsonl.zst")
    # pretend the vocab has 200 pieces: real ids above that must be caught with file and line
    line, doc = next((n, d) for n, d in enumerate(texts_of(src), 1) if max(sp.encode(d)) >= 200)
    bad = next(i for i in sp.encode(doc) if i >= 200)
    monkeypatch.setattr(spm.SentencePieceProcessor, "get_piece_size", lambda self: 200)
    with pytest.raises(PreprocessError, match=f"part-000.jsonl.zst:{line}: token id {bad} out of range "
                                              f"for vocab size 200"):
        preprocess([src], str(tmp_path / "o"), tok, workers=1, progress=False)
    assert os.listdir(tmp_path) == []


@pytest.mark.processes
def test_resume_reuses_finished_shards(corpus, tok, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name, comp in (("a", "arxiv"), ("b", "open-web-math"), ("c", "algebraic-stack")):
        shutil.copy(os.path.join(corpus, comp, "validation", "part-000.jsonl.zst"), d / f"{name}.jsonl.zst")
    clean = preprocess([str(d)], str(tmp_path / "clean" / "x"), tok, workers=2, progress=False)
    good_c = (d / "c.jsonl.zst").read_bytes()
    (d / "c.jsonl.zst").write_bytes(good_c[:100] + b"\0" * 64)  # corrupt the last file: the run "crashes"
    run = tmp_path / "run"
    with pytest.raises(PreprocessError, match="c.jsonl.zst:1: cannot decompress"):
        preprocess([str(d)], str(run / "x"), tok, workers=2, progress=False)
    assert os.listdir(run) == ["x_text_document.shards"]  # no final output, but the finished shards
    shards = run / "x_text_document.shards"
    assert sorted(os.listdir(shards)) == ["0.bin", "0.idx", "0.json", "1.bin", "1.idx", "1.json"]
    info = json.load(open(shards / "0.json"))
    assert (info["input"], info["bytes"], info["documents"]) == (str(d / "a.jsonl.zst"),
                                                                 os.path.getsize(d / "a.jsonl.zst"), 17)
    (d / "c.jsonl.zst").write_bytes(good_c)  # fix the file; touch b so that its shard is stale
    os.utime(d / "b.jsonl.zst", ns=(info["mtime_ns"] + 10**9, info["mtime_ns"] + 10**9))
    (run / "x_text_document.tmp-999999999.bin").write_bytes(b"left by a killed run")  # removed on rerun
    m = preprocess([str(d)], str(run / "x"), tok, workers=2, progress=False)
    assert m["reused_shards"] == 1 and clean["reused_shards"] == 0  # only a's shard was still valid
    assert outputs(run / "x") == outputs(tmp_path / "clean" / "x")
    assert {**m, "reused_shards": 0} == clean
    assert sorted(os.listdir(run)) == ["x_text_document.bin", "x_text_document.idx",
                                       "x_text_document.manifest.json"]


@pytest.mark.processes
@pytest.mark.skipif(multiprocessing.get_start_method() != "fork", reason="patch reaches workers by fork")
def test_killed_worker_is_an_error_not_a_hang(corpus, tok, tmp_path, monkeypatch):
    real = preprocess_lib._add_batch

    def dies_on_b(builder, arrays, numbers, path):
        if path.endswith("b.jsonl"):
            os._exit(9)  # like the OOM killer
        return real(builder, arrays, numbers, path)

    monkeypatch.setattr(preprocess_lib, "_add_batch", dies_on_b)
    inputs = [write_jsonl(tmp_path / n, ["one two", "three"]) for n in ("a.jsonl", "b.jsonl", "c.jsonl")]

    def hung(*_):
        raise TimeoutError("preprocess hangs after a worker died")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        with pytest.raises(PreprocessError, match=r"b.jsonl: worker process \d+ died"):
            preprocess(inputs, str(tmp_path / "o"), tok, workers=2, progress=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert not os.path.exists(tmp_path / "o_text_document.bin")
