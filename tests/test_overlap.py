"""tools/check_overlap.py: planted n-grams found exactly (and nothing else), shards merge to one run,
bad input is one error line, Llemma's accuracy-by-overlap table."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, job_submitted_by, sbatch, wait_for_sacct
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from neox.data import overlap
from neox.data.overlap import OverlapError
from neox.data.preprocess import preprocess

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)

N = 30
WORDS = ("let prove that the sum of two even integers is even suppose x and y are real numbers with "
         "square root triangle area angle degrees find value compute answer polynomial roots equal "
         "therefore hence since because function derivative integral limit prime divides remainder").split()


def random_text(rng, words):
    return " ".join(rng.choice(WORDS, words))


@pytest.fixture(scope="module")
def test_file(tmp_path_factory):
    """12 MATH-like examples; line 3 is blank, so test_id (the line number) != example number."""
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("tests") / "math_test.jsonl"
    lines = []
    for i in range(12):
        lines.append(json.dumps({"problem": random_text(rng, 45), "solution": random_text(rng, 60),
                                 "level": f"Level {1 + i % 3}", "type": "Algebra"}))
        if i == 2:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def read_lines(test_file):
    return {i: json.loads(line) for i, line in enumerate(open(test_file)) if line.strip()}


def write_tokens(prefix, docs, dtype=np.uint16):
    """.bin/.idx with exactly these documents, written by the same builder tools/preprocess_data.py uses."""
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for d in docs:
        builder.add_document(np.asarray(d, dtype=dtype), [len(d)])
    builder.finalize(prefix + ".idx")
    return prefix


def reference(docs_units, examples_units, n):
    """Brute force: for each document, each window whose n-gram occurs in an example's text."""
    grams = {ek: {tuple(u[i:i + n]) for i in range(len(u) - n + 1)} for ek, u in examples_units.items()}
    out = set()
    for d, units in enumerate(docs_units):
        windows = [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]
        for (test_id, key), g in grams.items():
            count = sum(w in g for w in windows)
            if count:
                out.add((d, test_id, key, count))
    return out


def rows_of(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "hits.jsonl"))]


def as_set(rows):
    return {(r["doc"], r["test_id"], r["key"], r["count"]) for r in rows}


# ---------------------------------------------------------------- tokens mode

@pytest.fixture(scope="module")
def planted_tokens(tmp_path_factory, test_file, sp):
    """Random documents with test token n-grams planted at known places; returns prefix and truth."""
    rng = np.random.default_rng(2)
    ex = {(tid, k): sp.encode(rec[k]) for tid, rec in read_lines(test_file).items() for k in ("problem", "solution")}
    docs = [list(rng.integers(3, 3001, int(rng.integers(120, 400)))) for _ in range(40)]
    docs[0][:N] = ex[(0, "problem")][:N]  # start of a document
    docs[1][-N:] = ex[(1, "solution")][5:5 + N]  # end of a document
    docs[2][100:100 + N + 5] = ex[(2, "problem")][:N + 5]  # middle, 6 windows
    docs[3][-15:] = ex[(4, "problem")][:15]  # across the boundary of documents 3 and 4: not a hit
    docs[4][:15] = ex[(4, "problem")][15:N]
    docs[5][50:50 + N - 1] = ex[(5, "solution")][:N - 1]  # only n-1 tokens: not a hit
    docs[5][50 + N - 1] = 3 if ex[(5, "solution")][N - 1] != 3 else 4
    docs[6][10:10 + N] = ex[(6, "problem")][:N]  # twice in one document, and in another
    docs[6][200:200 + N] = ex[(6, "problem")][:N]
    docs[7][60:60 + N] = ex[(6, "problem")][:N]
    docs[8][0:N] = ex[(7, "solution")][-N:]  # problem and solution of two examples in one document
    docs[8][-N:] = ex[(8, "problem")][10:10 + N]
    docs[9][30:30 + N] = ex[(9, "problem")][:N]
    prefix = write_tokens(str(tmp_path_factory.mktemp("tokdata") / "planted"), docs)
    truth = {(0, 0, "problem", 1), (1, 1, "solution", 1), (2, 2, "problem", 6), (6, 6, "problem", 2),
             (7, 6, "problem", 1), (8, 7, "solution", 1), (8, 8, "problem", 1), (9, 9, "problem", 1)}
    return prefix, docs, ex, truth


def test_planted_tokens_found_exactly_and_equal_brute_force(planted_tokens, test_file, tok, sp, tmp_path):
    prefix, docs, ex, truth = planted_tokens
    out = str(tmp_path / "out")
    # small chunks and pieces: windows cross chunk cuts, two worker processes
    summary = overlap.run(test_file, ["problem", "solution"], [prefix], tok, out, n=N, workers=2, progress=False,
                          piece_tokens=2000, chunk={"chunk": 64}, log=lambda m: None)
    rows = rows_of(out)
    assert as_set(rows) == reference(docs, ex, N) == truth
    by_doc = {(r["doc"], r["test_id"], r["key"]): r for r in rows}
    assert by_doc[(0, 0, "problem")]["ngram"] == sp.decode(ex[(0, "problem")][:N])
    assert all(r["data"] == prefix for r in rows)
    assert summary["test_examples"] == 12
    assert summary["test_examples_with_hits"] == {"any": 7, "problem": 5, "solution": 2}
    assert summary["data"][prefix]["documents_with_hits"] == {"any": 7, "problem": 6, "solution": 2}
    assert summary["tokens_scanned"] == sum(map(len, docs)) == summary["data"][prefix]["tokens"]
    assert summary["documents_scanned"] == 40


def test_a_parquet_test_set_gives_the_same_hits(planted_tokens, test_file, tok, tmp_path):
    """A benchmark as the hub ships it (Parquet): the same examples, the same hits; its ids are rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    prefix, docs, ex, truth = planted_tokens
    examples = list(read_lines(test_file).values())
    pq.write_table(pa.Table.from_pylist(examples), tmp_path / "math_test.parquet", row_group_size=5)
    overlap.run(str(tmp_path / "math_test.parquet"), ["problem", "solution"], [prefix], tok, str(tmp_path / "p"),
                n=N, progress=False, log=lambda m: None)
    lines = sorted(read_lines(test_file))  # the JSON lines file's ids are its line numbers (line 3 is blank)
    assert {(r["doc"], lines[r["test_id"]], r["key"]) for r in rows_of(str(tmp_path / "p"))} == \
        {(d, t, k) for d, t, k, _ in truth}
    pq.write_table(pa.Table.from_pylist([{"question": "x"}]), tmp_path / "other.parquet")
    with pytest.raises(overlap.OverlapError, match="other.parquet: no column 'problem' .columns: question.; pick one "
                                                   "with --test-key"):
        overlap.read_test_file(str(tmp_path / "other.parquet"), ["problem"])


def test_hash_match_with_different_ngram_is_not_a_hit(planted_tokens, test_file, tok):
    """A collision (same hash, other tokens) is refused by the comparison of the actual n-gram."""
    prefix, docs, ex, truth = planted_tokens
    sp = overlap.open_tokenizer(tok)  # the data's tokenizer, as the scanner loads it (neox.data.tokenizer)
    tests = overlap.read_test_file(test_file, ["problem", "solution"])
    index = overlap.build_index(tests, N, "tokens", sp)
    ds = overlap.open_dataset(prefix)
    assert {(d, e, k, c) for d, e, k, c, _ in overlap.scan_tokens(ds, 0, 1, index, sp, tok)} == {(0, 0, 0, 1)}
    index.units = index.units.copy()
    index.units[:] = 0  # every stored test n-gram changes; the hashes (what the lookup sees) do not
    assert overlap.scan_tokens(ds, 0, 40, index, sp, tok) == []


def test_sharded_and_merged_equals_one_run_and_parts_are_not_redone(planted_tokens, test_file, tok, tmp_path,
                                                                     capsys):
    prefix, docs, _, _ = planted_tokens
    prefix2 = write_tokens(str(tmp_path / "second"), docs[::-1])  # a second dataset: rows per prefix
    from neox.cli import check_overlap

    check_overlap.main(["--test-file", test_file, "--data", prefix, prefix2, "--tokenizer-model", tok,
                        "--out", str(tmp_path / "cli"), "--no-progress"])
    assert "12 test examples, 7 with hits (problem: 5, solution: 2)" in capsys.readouterr().out
    keys, data = ["problem", "solution"], [prefix, prefix2]
    one = overlap.run(test_file, keys, data, tok, str(tmp_path / "one"), n=N, progress=False, log=lambda m: None)
    for i in range(3):  # shards into two directories, merged together
        d = tmp_path / ("sa" if i < 2 else "sb")
        overlap.run(test_file, keys, data, tok, str(d), n=N, shard=(i, 3), progress=False, log=lambda m: None)
    with pytest.raises(OverlapError, match=r"shards 2 of 3 are not finished"):
        overlap.merge([str(tmp_path / "sa")], str(tmp_path / "merged"))
    merged = overlap.merge([str(tmp_path / "sa"), str(tmp_path / "sb")], str(tmp_path / "merged"))
    assert rows_of(tmp_path / "merged") == rows_of(tmp_path / "one") == rows_of(tmp_path / "cli")
    assert {r["data"] for r in rows_of(tmp_path / "one")} == {prefix, prefix2}
    assert {k: v for k, v in merged.items() if k not in ("seconds", "parts")} == \
        {k: v for k, v in one.items() if k not in ("seconds", "parts")}
    assert (merged["parts"], one["parts"]) == (3, 1)
    ranges = [json.load(open(tmp_path / d / "parts" / f"part-0000{i}-of-00003.json"))["data"][0]["doc_range"]
              for d, i in (("sa", 0), ("sa", 1), ("sb", 2))]
    assert ranges[0][0] == 0 and ranges[0][1] == ranges[1][0] and ranges[1][1] == ranges[2][0] and ranges[2][1] == 40
    # a finished part is not redone; a part of another run (different n) is refused, not overwritten
    logs = []
    again = overlap.run(test_file, keys, data, tok, str(tmp_path / "one"), n=N, progress=False, log=logs.append)
    assert "already done, not redone" in logs[0] and again["seconds"] == one["seconds"]
    with pytest.raises(OverlapError, match=r"part-00000-of-00001.json: made by a different run \(differs in n\)"):
        overlap.run(test_file, keys, data, tok, str(tmp_path / "one"), n=N - 1, progress=False, log=lambda m: None)
    assert rows_of(tmp_path / "one") == rows_of(tmp_path / "merged")


# ---------------------------------------------------------------- words mode

def test_planted_words_found_exactly_and_equal_llemma_reference(test_file, tok, sp, tmp_path):
    """Documents written by tools/preprocess_data.py; words of the decoded text, as Llemma split them."""
    rng = np.random.default_rng(3)
    ex = {(tid, k): rec[k].split() for tid, rec in read_lines(test_file).items() for k in ("problem", "solution")}
    docs = [random_text(rng, int(rng.integers(80, 200))).split() for _ in range(12)]
    docs[0][:N] = ex[(0, "problem")][:N]
    docs[1][-N:] = ex[(1, "solution")][-N:]
    docs[2][40:40 + N + 2] = ex[(2, "problem")][:N + 2]  # 3 windows
    docs[3][-15:] = ex[(4, "problem")][:15]  # across a document boundary
    docs[4][:15] = ex[(4, "problem")][15:N]
    docs[5][20:20 + N - 1] = ex[(5, "solution")][:N - 1]  # n-1 words
    docs[5][20 + N - 1] = next(w for w in WORDS if w != ex[(5, "solution")][N - 1])
    texts = [" ".join(d) for d in docs]
    texts[2] = texts[2].replace(" ", "\n\t ", 50)  # other whitespace: the same words
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    preprocess([str(src)], str(tmp_path / "w"), tok, append_eod=True, progress=False)
    prefix = str(tmp_path / "w_text_document")
    out = str(tmp_path / "out")
    overlap.run(test_file, ["problem", "solution"], [prefix], tok, out, n=N, mode="words", progress=False,
                chunk={"chunk": 300}, log=lambda m: None)
    rows = rows_of(out)
    ds = IndexedDataset(prefix)  # kept alive: its items are views of its memory map
    decoded = [sp.decode(ds[i].tolist()).split() for i in range(len(docs))]
    assert as_set(rows) == reference(decoded, ex, N) == \
        {(0, 0, "problem", 1), (1, 1, "solution", 1), (2, 2, "problem", 3)}
    assert rows[0]["ngram"] == " ".join(ex[(0, "problem")][:N])


# ---------------------------------------------------------------- bad input

def test_bad_input_one_line_errors_naming_the_file(planted_tokens, test_file, tok, tmp_path):
    prefix, docs, _, _ = planted_tokens
    keys, out = ["problem", "solution"], str(tmp_path / "out")

    def fails(match, test=test_file, data=(prefix,), keys=keys):
        with pytest.raises(OverlapError, match=match):
            overlap.run(test, keys, list(data), tok, out, n=N, progress=False, log=lambda m: None)
        assert not os.path.exists(out)  # refused before anything is written

    fails(rf"{test_file}:1: no 'answer' key \(has: level, problem, solution, type\)", keys=["answer"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    fails(rf"{empty}: test file is empty", test=str(empty))
    other = write_tokens(str(tmp_path / "other"), docs[:3])
    shutil.copy(other + ".bin", tmp_path / "mixed.bin")
    shutil.copy(prefix + ".idx", tmp_path / "mixed.idx")
    fails(rf"{tmp_path}/mixed.bin: \d+ bytes, but {tmp_path}/mixed.idx describes \d+ bytes of uint16: "
          r"the .bin and .idx are not a pair", data=[str(tmp_path / "mixed")])
    # ids beyond the tokenizer's 3,001 pieces: found while scanning when there is no manifest ...
    big = write_tokens(str(tmp_path / "big"), [[5] * 40, [3000, 4999] * 20])
    fails(rf"{big}.bin: token id 4999 \(document 1\) is not in the vocabulary of {tok} \(3001 pieces\)",
          data=[big])
    # ... and before any work from the manifest tools/preprocess_data.py writes
    with open(big + ".manifest.json", "w") as f:
        json.dump({"tokenizer": {"vocab_size": 32000}}, f)
    with pytest.raises(OverlapError, match=rf"{tok}: vocabulary of 3001 pieces, but {big} was written with a "
                                           r"vocabulary of 32000"):
        overlap.prepare(test_file, keys, [big], tok, N, "tokens")


def test_cli_bad_key_is_one_error_line_exit_1(test_file, tok, tmp_path):
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "check_overlap.py"), "--test-file", test_file,
                        "--test-key", "question", "--data", str(tmp_path / "x"), "--tokenizer-model", tok,
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"error: {test_file}:1: no 'question' key (has: level, problem, "
                                             f"solution, type); pick one with --test-key"]
    from neox.cli import check_overlap  # a usage error is exit status 2, before anything is read

    with pytest.raises(SystemExit) as e:
        check_overlap.main(["--test-file", test_file, "--data", "x", "--tokenizer-model", tok, "--out",
                            str(tmp_path / "o"), "--shard", "5/4"])
    assert e.value.code == 2 and not os.path.exists(tmp_path / "o")


# ---------------------------------------------------------------- Slurm array + merge, accuracy by overlap

def test_slurm_array_and_dependent_merge_then_join(slurm, planted_tokens, test_file, tok, tmp_path):
    """The real Slurm: a 2-task array (its CPU and memory requests overridden on sbatch's command
    line, as on a small partition) scans one shard each; task 0 submits the merge, which runs
    after the whole array and finds every planted hit."""
    prefix, _, _, truth = planted_tokens
    out = str(tmp_path / "out")
    env = dict(PYTHON=sys.executable, TEST_FILE=test_file, DATA=prefix, TOKENIZER=tok, OUT=out,
               CHECK_ARGS="--n 30")
    job = sbatch("--array=0-1", "--cpus-per-task=1", "--mem=1G", "--time=10", "slurm/check_overlap.sbatch", env=env)
    assert wait_for_sacct(job, 2) == ["COMPLETED", "COMPLETED"]
    merge = job_submitted_by(job, "check-overlap-merge")  # the merge job task 0 submitted
    assert wait_for_sacct(merge, 1) == ["COMPLETED"]
    assert "shard 0/2" in open(os.path.join(REPO, "logs", f"check-overlap-{job}_0.out")).read()
    assert as_set(rows_of(out)) == truth
    from neox.cli import check_overlap

    # join: samples as tools/run_eval.py writes them (doc_id = line, problem text, maj_correct)
    lines = read_lines(test_file)
    hit_ids = {t for _, t, _, _ in truth}
    samples = tmp_path / "math.jsonl"
    correct = {t: (t in hit_ids) == (t % 2 == 0) for t in lines}
    samples.write_text("".join(json.dumps({"doc_id": t, "problem": lines[t]["problem"], "correct": [correct[t]],
                                           "maj_correct": correct[t]}) + "\n" for t in lines))
    check_overlap.main(["join", "--hits", out, "--samples", str(samples)])
    table = json.load(open(os.path.join(out, "accuracy_by_overlap.json")))
    assert "| Level 1 |" in open(os.path.join(out, "accuracy_by_overlap.md")).read()
    rows = {r["level"]: r for r in table["rows"]}
    for level in ("all", "Level 1", "Level 2", "Level 3"):
        ids = [t for t in lines if level == "all" or lines[t]["level"] == level]
        for side, members in (("hits", [t for t in ids if t in hit_ids]), ("non_hits", [t for t in ids if t not in hit_ids])):
            assert rows[level][side]["n"] == len(members)
            assert rows[level][side]["accuracy"] == round(sum(correct[t] for t in members) / len(members), 4)
    assert list(rows) == ["Level 1", "Level 2", "Level 3", "all"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"doc_id": 0, "problem": "something else", "maj_correct": True}) + "\n")
    with pytest.raises(OverlapError, match=r"bad.jsonl:1: problem text differs from .* line 0"):
        overlap.join(out, str(bad))
