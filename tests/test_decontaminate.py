"""tools/check_overlap.py filter: planted passages and duplicates removed exactly as an independent
reference filter (pure Python sets) removes them, shards merge to the same bytes, a crash leaves no
readable partial prefix, bad input is one line naming the file, and the filtered data trains."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, job_submitted_by, sbatch, wait_for_sacct
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from neox.data import decontaminate, overlap
from neox.data.overlap import OverlapError

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)

N = 13
WORDS = ("let prove that the sum of two even integers is even suppose x and y are real numbers with "
         "square root triangle area angle degrees find value compute answer polynomial roots equal "
         "therefore hence since because function derivative integral limit prime divides remainder").split()


def write_test_file(path, rng, count, keys=("problem", "solution")):
    with open(path, "w") as f:
        for _ in range(count):
            f.write(json.dumps({keys[0]: " ".join(rng.choice(WORDS, 30)), keys[1]: " ".join(rng.choice(WORDS, 40))})
                    + "\n")
    return str(path)


def write_tokens(prefix, docs):
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for d in docs:
        builder.add_document(np.asarray(d, dtype=np.uint16), [len(d)])
    builder.finalize(prefix + ".idx")
    return prefix


def read_docs(prefix):
    ds = IndexedDataset(prefix)
    return [ds[i].tolist() for i in range(len(ds))]


def reference_filter(components, test_units, n):
    """Independent of the code under test: a document goes if one of its windows is a test n-gram, or
    if an identical document came before it (in component order, then document order)."""
    grams = {tuple(u[i:i + n]) for u in test_units for i in range(len(u) - n + 1)}
    seen, kept = set(), []
    for docs in components:
        mine = []
        for d in docs:
            windows = {tuple(d[i:i + n]) for i in range(len(d) - n + 1)}
            if not windows & grams and tuple(d) not in seen:
                mine.append(d)
            seen.add(tuple(d))
        kept.append(mine)
    return kept


@pytest.fixture(scope="module")
def planted(tmp_path_factory, sp):
    """Three components of random documents with test passages and duplicates planted at known places."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(5)
    # two test sets with their own fields (GSM8k's are question and answer): F.jsonl=question,answer
    files = [write_test_file(root / "math.jsonl", rng, 6), write_test_file(root / "gsm.jsonl", rng, 3, ("question", "answer"))]
    tests = [json.loads(line) for f in files for line in open(f)]
    units = {(i, k): sp.encode(t[k]) for i, t in enumerate(tests) for k in t}

    def rand(length):
        return [int(x) for x in rng.integers(3, 3001, length)]

    a = [rand(int(rng.integers(80, 200))) for _ in range(8)]
    b = [rand(int(rng.integers(80, 200))) for _ in range(4)]
    c = [rand(int(rng.integers(80, 200))) for _ in range(3)]
    a[0][10:10 + N + 4] = units[(0, "problem")][:N + 4]  # whole passage in a document
    a[1][-7:] = units[(1, "problem")][:7]  # split across documents 1 and 2: kept
    a[2][:N - 7] = units[(1, "problem")][7:N]
    a[3][20:20 + N - 1] = units[(2, "solution")][:N - 1]  # n - 1 tokens only: kept
    a[3][20 + N - 1] = 3 if units[(2, "solution")][N - 1] != 3 else 4
    a[4][5:5 + N] = units[(3, "solution")][:N]  # repeated: twice here, and in component b
    a[4][60:60 + N] = units[(3, "solution")][:N]
    b[0][40:40 + N] = units[(3, "solution")][:N]
    a[6] = list(a[5])  # exact duplicate within a component
    b[2] = list(a[5])  # and in another component
    c[1][30:30 + N] = units[(7, "question")][:N]  # from the second test file
    c[2] = list(c[1])  # a duplicate of a dropped document: dropped for overlap (found first)
    comps = {"arxiv": a, "open-web-math": b, "algebraic-stack": c}
    prefixes = [write_tokens(str(root / f"{name}_train_text_document"), docs) for name, docs in comps.items()]
    expected = reference_filter(list(comps.values()), list(units.values()), N)
    return [files[0], files[1] + "=question,answer"], prefixes, list(comps.values()), expected


def test_filter_equals_the_reference_and_the_overlap_check_then_finds_nothing(planted, tok, tmp_path):
    files, prefixes, comps, expected = planted
    out = str(tmp_path / "out")
    record = decontaminate.run(files, ["problem", "solution"], prefixes, tok, out, n=N, progress=False,
                               log=lambda m: None)
    filtered = [os.path.join(out, os.path.basename(p)) for p in prefixes]
    assert [read_docs(p) for p in filtered] == expected
    assert [len(e) for e in expected] == [5, 2, 1]  # the planting did what the comments say
    rows = [json.loads(line) for line in open(os.path.join(out, "dropped.jsonl"))]
    why = {(os.path.basename(r["data"]).split("_")[0], r["doc"]): r["reason"] for r in rows}
    assert why == {("arxiv", 0): "overlap", ("arxiv", 4): "overlap", ("arxiv", 6): "duplicate",
                   ("open-web-math", 0): "overlap", ("open-web-math", 2): "duplicate",
                   ("algebraic-stack", 1): "overlap", ("algebraic-stack", 2): "overlap"}
    first = next(r for r in rows if r["doc"] == 0 and r["data"].endswith("arxiv_train_text_document"))
    assert (first["test_file"], first["test_id"], first["key"]) == (files[0], 0, "problem")
    gsm = next(r for r in rows if r["data"].endswith("algebraic-stack_train_text_document"))
    assert (gsm["test_file"], gsm["test_id"], gsm["key"]) == (files[1].split("=")[0], 1, "question")
    assert len(first["ngram"].split()) >= 5  # the decoded n-gram that caused the drop
    dup = next(r for r in rows if r["reason"] == "duplicate" and r["data"].endswith("open-web-math_train_text_document"))
    assert dup["duplicate_of"] == {"data": os.path.abspath(prefixes[0]), "doc": 5}
    assert [t["sha256"] for t in record["test_files"]] == [hashlib.sha256(open(f.split("=")[0], "rb").read()).hexdigest()
                                                         for f in files]
    assert [t["keys"] for t in record["test_files"]] == [["problem", "solution"], ["question", "answer"]]
    assert record["n"] == N and record["mode"] == "tokens"
    by_file = record["dropped_by_test_file"]
    assert by_file[os.path.abspath(files[1].split("=")[0])]["examples"] == [1]
    assert by_file[os.path.abspath(files[0])]["documents_dropped"] == 3
    arxiv = record["outputs"][0]
    assert (arxiv["documents"], arxiv["documents_kept"], arxiv["documents_dropped_overlap"],
            arxiv["documents_dropped_duplicate"]) == (8, 5, 2, 1)
    assert arxiv["tokens_kept"] == sum(map(len, expected[0]))
    assert "| arxiv_train_text_document | 8 | 5 | 2 | 1 |" in open(os.path.join(out, "report.md")).read()
    manifest = json.load(open(filtered[0] + ".manifest.json"))
    assert manifest["documents"] == 5 and manifest["decontaminated"]["documents_dropped"] == 3
    for f, keys in decontaminate.parse_test_files(files, ["problem", "solution"]):  # no hit left
        res = overlap.run(f, keys, filtered, tok, str(tmp_path / f"check-{os.path.basename(f)}"),
                          n=N, progress=False, log=lambda m: None)
        assert res["test_examples_with_hits"]["any"] == 0


def test_shards_merge_to_the_same_bytes_and_parts_are_not_redone(planted, tok, tmp_path):
    files, prefixes, _, _ = planted
    one, three = str(tmp_path / "one"), str(tmp_path / "three")
    decontaminate.run(files, ["problem", "solution"], prefixes, tok, one, n=N, progress=False, log=lambda m: None)
    for i in range(3):
        decontaminate.run(files, ["problem", "solution"], prefixes, tok, three, n=N, shard=(i, 3), progress=False,
                          log=lambda m: None)
    said = []
    decontaminate.run(files, ["problem", "solution"], prefixes, tok, three, n=N, shard=(1, 3), progress=False,
                      log=said.append)
    assert said == [f"{three}/parts/part-00001-of-00003.json: shard 1/3 already done, not redone"]
    with pytest.raises(OverlapError, match="shards 2 of 3 are not finished"):
        os.rename(f"{three}/parts/part-00002-of-00003.json", f"{three}/p2")
        decontaminate.merge(three, progress=False, log=lambda m: None)
    os.rename(f"{three}/p2", f"{three}/parts/part-00002-of-00003.json")
    decontaminate.merge(three, progress=False, log=lambda m: None)
    for p in prefixes:
        for ext in (".bin", ".idx"):
            name = os.path.basename(p) + ext
            assert open(os.path.join(one, name), "rb").read() == open(os.path.join(three, name), "rb").read()


def test_a_crash_while_writing_leaves_no_readable_partial_prefix(planted, tok, tmp_path, monkeypatch):
    files, prefixes, _, expected = planted
    out = str(tmp_path / "out")
    decontaminate.scan_shard(files, ["problem", "solution"], prefixes, tok, out, n=N, progress=False,
                             log=lambda m: None)
    real, calls = decontaminate.write_filtered, []

    def dies_on_the_second(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed halfway through the writing
        return real(*args)

    monkeypatch.setattr(decontaminate, "write_filtered", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        decontaminate.merge(out, progress=False, log=lambda m: None)
    left = sorted(f for f in os.listdir(out) if not f.startswith((".", "parts")))
    assert left == []  # nothing where the trainer (or a reader of decontamination.json) would look
    monkeypatch.setattr(decontaminate, "write_filtered", real)
    decontaminate.merge(out, progress=False, log=lambda m: None)
    assert [read_docs(os.path.join(out, os.path.basename(p))) for p in prefixes] == expected
    assert not os.path.exists(os.path.join(out, ".writing"))


def test_bad_input_is_one_line_naming_the_file(planted, tok, tmp_path):
    files, prefixes, _, _ = planted
    keys = ["problem", "solution"]
    with pytest.raises(OverlapError, match=r"math.jsonl:1: no 'question' key"):
        decontaminate.run(files, ["question"], prefixes, tok, str(tmp_path / "a"), n=N, progress=False)
    bad = str(tmp_path / "short_train_text_document")
    write_tokens(bad, [[5] * 50, [6] * 50])
    with open(bad + ".bin", "r+b") as f:
        f.truncate(150)
    with pytest.raises(OverlapError, match=r"short_train_text_document.bin: 150 bytes, but .*\.idx describes 200"):
        decontaminate.run(files, keys, [bad], tok, str(tmp_path / "b"), n=N, progress=False)
    out = str(tmp_path / "c")
    decontaminate.run(files, keys, prefixes[:1], tok, out, n=N, progress=False, log=lambda m: None)
    with pytest.raises(OverlapError, match=r"c/arxiv_train_text_document.bin: output prefix exists \(--force"):
        decontaminate.run(files, keys, prefixes[:1], tok, out, n=N, progress=False)
    decontaminate.run(files, keys, prefixes[:1], tok, out, n=N, progress=False, force=True, log=lambda m: None)
    other = str(tmp_path / "other_train_text_document")
    write_tokens(other, [[5] * 50])
    with open(other + ".manifest.json", "w") as f:
        json.dump({"tokenizer": {"kind": "SPMTokenizer", "sha256": "ab" * 32, "path": "llama3/tokenizer.model",
                                 "vocab_size": 3001}}, f)
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "check_overlap.py"), "filter", "--test-file",
                        files[0], "--data", other, "--tokenizer-model", tok, "--out", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith(
        f"error: {other}.bin was tokenized with llama3/tokenizer.model (sha256 abababababab) per {other}.manifest.json, "
        f"but --tokenizer-model {tok} is another tokenizer"), r.stderr
    assert not os.path.exists(tmp_path / "d")


def test_filtered_toy_data_passes_the_data_check_and_trains(toy_data, tok, tmp_path):
    """The smoke config pointed at the filtered toy components: deepy's data check and 2 steps."""
    import zstandard

    texts = zstandard.ZstdDecompressor().stream_reader(
        open(os.path.join(toy_data, "corpus", "open-web-math", "train", "part-000.jsonl.zst"), "rb")).read()
    docs = [json.loads(line)["text"] for line in texts.decode().splitlines()[:3]]
    test_file = tmp_path / "leak.jsonl"
    # the longest line of each document (tokens mode: tokenized as in the document)
    test_file.write_text("".join(json.dumps({"problem": max(d.splitlines(), key=len), "solution": "-"}) + "\n"
                                 for d in docs))
    comps = ["arxiv", "open-web-math", "algebraic-stack"]
    prefixes = [os.path.join(toy_data, "tokenized", f"{c}_train_text_document") for c in comps]
    out = tmp_path / "clean"
    r = subprocess.run([sys.executable, "tools/check_overlap.py", "filter", "--test-file", str(test_file), "--data",
                        *prefixes, "--tokenizer-model", tok, "--out", str(out), "--no-progress"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.load(open(out / "decontamination.json"))
    assert record["outputs"][1]["documents_dropped_overlap"] >= 3
    paths = ",".join(str(out / f"{c}_train_text_document") for c in comps)
    cmd = [sys.executable, "deepy.py", "train.py", "llemma_configs/smoke.yml", "-o", f"train_data_paths=[{paths}]",
           "-o", "train_iters=2", "-o", "eval_iters=0", "-o", "precision=fp32", "-o", f"save={tmp_path}/ckpt",
           "-o", f"log_dir={tmp_path}/logs", "-o", f"data_cache_dir={tmp_path}/cache", "-o", "checkpoint_factor=2"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "warning" not in "".join(line for line in r.stdout.splitlines() if "manifest" in line)
    rows = [json.loads(line) for line in open(tmp_path / "logs" / "metrics.jsonl")]
    assert [x["step"] for x in rows if "loss" in x] == [1, 2]


def test_slurm_array_and_dependent_filter_merge(slurm, planted, tok, tmp_path):
    """The real Slurm: a 2-task array (its requests overridden, as on a small partition) scans a shard
    each; task 0 submits filter-merge, which runs after the whole array and writes the reference's data."""
    files, prefixes, _, expected = planted
    out = str(tmp_path / "out")
    env = dict(PYTHON=sys.executable, TEST_FILES=" ".join(files), DATA=" ".join(prefixes), TOKENIZER=tok, OUT=out,
               FILTER_ARGS=f"--n {N}", MERGE_SBATCH_ARGS="--mem=1G --time=10")
    job = sbatch("--array=0-1", "--cpus-per-task=1", "--mem=1G", "--time=10", "slurm/decontaminate.sbatch", env=env)
    assert wait_for_sacct(job, 2) == ["COMPLETED", "COMPLETED"]
    merge = job_submitted_by(job, "decontaminate-merge")  # the merge job task 0 submitted
    assert wait_for_sacct(merge, 1) == ["COMPLETED"]
    assert "shard 0/2" in open(os.path.join(REPO, "logs", f"decontaminate-{job}_0.out")).read()
    assert "wrote 3 filtered prefixes" in open(os.path.join(REPO, "logs", f"decontaminate-merge-{merge}.out")).read()
    assert [read_docs(os.path.join(out, os.path.basename(p))) for p in prefixes] == expected
    assert json.load(open(os.path.join(out, "decontamination.json")))["shards"] == 2
