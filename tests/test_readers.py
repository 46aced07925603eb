"""Parquet, save_to_disk datasets and hub snapshot folders in (neox.data.readers): the same documents
give byte-identical .bin/.idx whatever the format; bad input is one line naming the file."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import REPO

from neox.data.preprocess import PreprocessError, preprocess
from neox.data.readers import batches, resolve_inputs

pytestmark = pytest.mark.processes  # the toy tokenizer is built by a program

# FineMath's columns; rows with a null and an empty text, non-ASCII text, a long one
ROWS = [
    {"text": "Let $x^2 = 4$; then $x = \\pm 2$.", "url": "https://a.example/1", "token_count": 12, "score": 4.2,
     "int_score": 4},
    {"text": None, "url": "https://a.example/2", "token_count": 0, "score": 3.1, "int_score": 3},
    {"text": "", "url": "https://a.example/3", "token_count": 0, "score": 3.5, "int_score": 4},
    {"text": "Für alle ε > 0 gibt es δ > 0 — 数学 ∀x∈ℝ: |x| ≥ 0.", "url": "https://b.example/é", "token_count": 30,
     "score": 4.8, "int_score": 5},
] + [{"text": f"Problem {i}: compute {i} + {i * 7} = {i * 8}. " * (1 + i % 5), "url": f"https://c.example/{i}",
      "token_count": 10 + i, "score": 3.0 + i % 2, "int_score": 3 + i % 2} for i in range(60)]


def write_parquet(path, rows, row_group_size=16):
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return str(path)


def write_jsonl_zst(path, rows):
    lines = b"".join(json.dumps({"text": r["text"]}).encode() + b"\n" for r in rows if r["text"] is not None)
    path.write_bytes(zstandard.ZstdCompressor().compress(lines))
    return str(path)


def outputs(prefix):
    return [open(f"{prefix}_text_document{ext}", "rb").read() for ext in (".bin", ".idx")]


def test_parquet_saved_dataset_and_hub_folder_tokenize_byte_identical_to_jsonl_zst(tok, tmp_path):
    assert pq.ParquetFile(write_parquet(tmp_path / "fm.parquet", ROWS)).metadata.num_row_groups == 4
    reference = preprocess([write_jsonl_zst(tmp_path / "fm.jsonl.zst", ROWS)], str(tmp_path / "j"), tok,
                           progress=False)
    m = preprocess([str(tmp_path / "fm.parquet")], str(tmp_path / "p"), tok, progress=False)
    assert outputs(tmp_path / "p") == outputs(tmp_path / "j")
    assert m["documents"] == reference["documents"] == len(ROWS) - 2
    assert (m["skipped_null_texts"], m["skipped_empty_documents"]) == (1, 1)
    assert m["inputs"][0]["format"] == "parquet" and m["inputs"][0]["rows"] == len(ROWS)
    assert reference["inputs"][0]["format"] == "jsonl" and reference["skipped_null_texts"] == 0

    import datasets

    half = len(ROWS) // 2
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:half]),
                               "test": datasets.Dataset.from_list(ROWS[half:])})
    dd.save_to_disk(str(tmp_path / "saved"), max_shard_size="2KB")  # several Arrow files per split
    files = resolve_inputs([str(tmp_path / "saved")])
    assert len(files) > 2 and all(f.endswith(".arrow") for f in files)
    preprocess([str(tmp_path / "saved")], str(tmp_path / "s"), tok, progress=False)
    assert outputs(tmp_path / "s") == outputs(tmp_path / "j")  # train then test: the splits in their order

    hub = tmp_path / "snapshot"  # huggingface_hub's layout: config / split / shards, and its .cache
    for name, part in (("train-00000-of-00002.parquet", ROWS[:40]), ("train-00001-of-00002.parquet", ROWS[40:])):
        (hub / "finemath-4plus" / "train").mkdir(parents=True, exist_ok=True)
        write_parquet(hub / "finemath-4plus" / "train" / name, part)
    (hub / ".cache" / "huggingface").mkdir(parents=True)
    (hub / ".cache" / "huggingface" / "x.parquet").write_bytes(b"not data")
    preprocess([str(hub)], str(tmp_path / "h"), tok, progress=False)
    assert outputs(tmp_path / "h") == outputs(tmp_path / "j")


def test_parquet_is_read_by_row_group_only_the_text_column(tmp_path):
    path = write_parquet(tmp_path / "fm.parquet", ROWS, row_group_size=8)
    got = list(batches(path, "text", batch_docs=5, batch_bytes=1 << 20))
    assert [n for numbers, _, _ in got for n in numbers] == list(range(1, len(ROWS) + 1))  # ids: rows from 1
    assert [t for _, texts, _ in got for t in texts] == [r["text"] for r in ROWS]
    assert max(len(texts) for _, texts, _ in got) == 5
    positions = [pos for _, _, pos in got]
    assert positions == sorted(positions) and 0 < positions[-1] <= os.path.getsize(path)
    assert [t for _, texts, _ in batches(path, "url", 100, 1 << 20) for t in texts] == [r["url"] for r in ROWS]


def test_bad_parquet_is_one_line_naming_the_file_before_any_work(tok, tmp_path):
    good = write_parquet(tmp_path / "a.parquet", ROWS)
    no_text = write_parquet(tmp_path / "b.parquet", [{"content": "x", "url": "u"}])
    with pytest.raises(PreprocessError) as e:
        preprocess([good, no_text], str(tmp_path / "out" / "x"), tok, progress=False)
    assert str(e.value) == f"{no_text}: no column 'text' (columns: content, url); choose the text column with --text-key"
    data = open(good, "rb").read()
    truncated = tmp_path / "c.parquet"
    truncated.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(PreprocessError, match=f"^{truncated}: not a readable Parquet file \\("):
        preprocess([good, str(truncated)], str(tmp_path / "out" / "x"), tok, progress=False)
    assert not (tmp_path / "out").exists()  # nothing written, not even the output folder
    ints = write_parquet(tmp_path / "d.parquet", [{"text": 1}])
    with pytest.raises(PreprocessError, match="d.parquet: column 'text' holds int64, not text"):
        preprocess([ints], str(tmp_path / "x"), tok, progress=False)


def test_the_command_reads_parquet_and_warns_once_about_skipped_texts(tok, tmp_path):
    path = write_parquet(tmp_path / "fm.parquet", ROWS)
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", path,
                        "--output-prefix", str(tmp_path / "fm"), "--tokenizer-model", tok, "--text-key", "text"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: skipped 1 null texts and 1 empty documents (counted per input in "
                        f"{tmp_path}/fm_text_document.manifest.json)"]
    assert r.stdout.startswith(f"wrote {tmp_path}/fm_text_document.{{bin,idx}}: {len(ROWS) - 2} documents")
