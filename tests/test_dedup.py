"""Near-duplicate removal (neox.data.dedup): planted copies found, distinct documents kept, the same
kept set from one run and from four shards, outputs in their input's own format."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rensa
import zstandard
from conftest import REPO, job_submitted_by, sbatch, wait_for_sacct

from neox.data import dedup
from neox.data.readers import ReadError

WORDS = [f"w{i}" for i in range(20000)]


def corpus(seed=0, distinct=600, copies=1000, words=300):
    """Distinct random documents, then copies of some of them with 1% to 40% of their words replaced
    (log-uniform). Returns the texts and, per copy, (its index, its source's index)."""
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(distinct)]
    planted = []
    for _ in range(copies):
        source = rng.randrange(distinct)
        text = docs[source].split()
        fraction = 10 ** rng.uniform(np.log10(0.01), np.log10(0.40))
        for i in rng.sample(range(words), max(1, round(fraction * words))):
            text[i] = rng.choice(WORDS)
        planted.append((len(docs), source))
        docs.append(" ".join(text))
    return docs, planted


def estimated_jaccard(a: str, b: str, params=dedup.Params()) -> float:
    sets = [dedup.shingles(a, params.ngram), dedup.shingles(b, params.ngram)]
    m = np.asarray(rensa.RMinHash.digest_matrix_from_token_sets(sets, num_perm=params.num_perm, seed=params.seed)
                   .to_rows())
    return float((m[0] == m[1]).mean())


def write_inputs(root, docs, parts=5):
    """The documents split over Parquet (with FineMath's other columns), .jsonl.zst and .jsonl files."""
    files, bounds = [], np.linspace(0, len(docs), parts + 1).astype(int)
    for k in range(parts):
        rows = [{"text": t, "url": f"https://x.example/{bounds[k] + i}", "score": 3.5}
                for i, t in enumerate(docs[bounds[k]:bounds[k + 1]])]
        sub = root / f"src{k // 3}"  # sorted paths are in document order: the originals come first
        sub.mkdir(parents=True, exist_ok=True)
        if k % 3 == 0:
            path = sub / f"part{k}.parquet"
            pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=50)
        else:
            lines = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
            path = sub / (f"part{k}.jsonl.zst" if k % 3 == 1 else f"part{k}.jsonl")
            path.write_bytes(zstandard.ZstdCompressor().compress(lines) if k % 3 == 1 else lines)
        files.append(str(path))
    return files


def kept_texts(out, files):
    names = dedup.relative_names(files)
    texts = []
    for f, name in zip(files, names):
        path = os.path.join(out, name)
        if f.endswith(".parquet"):
            table = pq.read_table(path)
            assert table.column_names == ["text", "url", "score"]  # every column kept
            texts += table.column("text").to_pylist()
        else:
            raw = open(path, "rb").read()
            raw = zstandard.ZstdDecompressor().stream_reader(raw).read() if path.endswith(".zst") else raw
            texts += [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
    return texts


def test_planted_near_duplicates_are_removed_and_distinct_documents_kept(tmp_path):
    docs, planted = corpus()
    files = write_inputs(tmp_path / "in", docs)
    record = dedup.run([str(tmp_path / "in")], str(tmp_path / "out"), log=lambda m: None)
    kept = set(kept_texts(str(tmp_path / "out"), files))
    similar = [(c, s) for c, s in planted if estimated_jaccard(docs[c], docs[s]) >= 0.8]
    assert len(similar) >= 200
    recall = sum(docs[c] not in kept for c, _ in similar) / len(similar)
    distinct = docs[:600]
    false_removals = sum(t not in kept for t in distinct) / len(distinct)
    assert recall >= 0.95 and false_removals <= 0.005, (recall, false_removals)
    assert record["documents"] == len(docs) and record["kept"] == len(kept_texts(str(tmp_path / "out"), files))
    names = dedup.relative_names(files)
    assert [s["path"] for s in record["sources"]] == names and names[0] == os.path.join("src0", "part0.parquet")
    clusters = [json.loads(line) for line in open(tmp_path / "out" / "clusters.jsonl")]
    assert sum(len(c["removed"]) for c in clusters) == record["removed"]
    first = clusters[0]
    assert first["kept"][0] in names and all(j >= 0.8 for j in first["jaccard"])


def test_one_run_and_four_shards_keep_the_same_documents(tmp_path):
    docs, _ = corpus(seed=1, distinct=150, copies=150)
    files = write_inputs(tmp_path / "in", docs, parts=6)
    one = dedup.run([str(tmp_path / "in")], str(tmp_path / "one"), log=lambda m: None)
    for i in range(4):
        assert dedup.run([str(tmp_path / "in")], str(tmp_path / "four"), shard=(i, 4), log=lambda m: None) is None
    four = dedup.merge(dedup.prepare([str(tmp_path / "in")], dedup.Params()), dedup.Params(), str(tmp_path / "four"),
                       log=lambda m: None)
    assert kept_texts(str(tmp_path / "one"), files) == kept_texts(str(tmp_path / "four"), files)
    assert {k: one[k] for k in ("kept", "removed", "clusters")} == {k: four[k] for k in ("kept", "removed", "clusters")}
    assert open(tmp_path / "one" / "clusters.jsonl").read() == open(tmp_path / "four" / "clusters.jsonl").read()
    with pytest.raises(dedup.DedupError, match="made from other inputs or options"):
        dedup.run([str(tmp_path / "in")], str(tmp_path / "four"), dedup.Params(ngram=4), log=lambda m: None)


def test_exact_copies_and_texts_without_words(tmp_path):
    rows = [{"text": "a b c d e f g"}, {"text": None}, {"text": ""}, {"text": "a b c d e f g"}, {"text": "!!"},
            {"text": "A B C D E F G"}, {"text": ""}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    record = dedup.run([str(tmp_path / "t.parquet")], str(tmp_path / "out"), log=lambda m: None)
    kept = pq.read_table(tmp_path / "out" / "t.parquet").column("text").to_pylist()
    assert kept == ["a b c d e f g", None, "", "!!", ""]  # words are lower-cased: row 5 is a copy too
    assert (record["removed"], record["clusters"]) == (2, 1)
    assert [json.loads(line) for line in open(tmp_path / "out" / "clusters.jsonl")] == [
        {"kept": ["t.parquet", 0], "removed": [["t.parquet", 3], ["t.parquet", 5]], "jaccard": [1.0, 1.0]}]


def test_bad_input_is_one_line_before_any_work(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"content": "x"}]), tmp_path / "c.parquet")
    with pytest.raises(ReadError, match=r"c.parquet: no column 'text' \(columns: content\)"):
        dedup.run([str(tmp_path / "c.parquet")], str(tmp_path / "out"), log=lambda m: None)
    assert not (tmp_path / "out").exists()
    with pytest.raises(dedup.DedupError, match="--threshold must be in"):
        dedup.run([str(tmp_path / "c.parquet")], str(tmp_path / "out"), dedup.Params(threshold=1.5))


@pytest.mark.processes
def test_the_command_with_workers(tmp_path):
    docs, _ = corpus(seed=2, distinct=100, copies=60)
    write_inputs(tmp_path / "in", docs, parts=4)
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "dedup.py"), str(tmp_path / "in"), "--out",
                        str(tmp_path / "out"), "--workers", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "out" / "dedup.json").read_text())
    assert r.stderr.splitlines()[-1].startswith(f"dedup: {record['removed']} of {len(docs)} documents removed")
    one = dedup.run([str(tmp_path / "in")], str(tmp_path / "one"), log=lambda m: None)
    assert (record["kept"], record["clusters"]) == (one["kept"], one["clusters"])


@pytest.mark.processes
def test_slurm_array_and_dependent_merge_keep_what_one_run_keeps(slurm, tmp_path):
    """The real Slurm: a 2-task array computes the signatures of its files; task 0 submits the merge,
    which runs after the whole array and keeps the documents one run keeps."""
    docs, _ = corpus(seed=3, distinct=80, copies=80)
    files = write_inputs(tmp_path / "in", docs, parts=4)
    out = str(tmp_path / "out")
    env = dict(PYTHON=sys.executable, INPUTS=str(tmp_path / "in"), OUT=out, DEDUP_ARGS="--text-key text")
    job = sbatch("--array=0-1", "--cpus-per-task=1", "--mem=1G", "--time=10", "slurm/dedup.sbatch", env=env)
    assert wait_for_sacct(job, 2) == ["COMPLETED", "COMPLETED"]
    merge = job_submitted_by(job, "dedup-merge")
    assert wait_for_sacct(merge, 1) == ["COMPLETED"]
    assert "dedup: shard 1/2" in open(os.path.join(REPO, "logs", f"dedup-{job}_1.out")).read()
    dedup.run([str(tmp_path / "in")], str(tmp_path / "one"), log=lambda m: None)
    assert kept_texts(out, files) == kept_texts(str(tmp_path / "one"), files)
