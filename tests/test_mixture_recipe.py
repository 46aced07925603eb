"""tools/prepare_mixture.py: a recipe of sources in three formats -> dedup -> tokenize -> decontaminate ->
the mixture config, and the smoke model trains on it."""

import json
import os
import random
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
import zstandard
from conftest import REPO

from neox.runs import mixture

pytestmark = pytest.mark.processes

DATA_KEYS = ("train_data_paths", "train_data_weights", "valid_data_paths", "test_data_paths", "vocab_file",
             "tokenizer_type")


def toy_texts(toy_data, component, split="train"):
    path = os.path.join(toy_data, "corpus", component, split, "part-000.jsonl.zst")
    raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb")).read()
    return [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]


def test_recipe_in_three_formats_to_a_trained_smoke_model(toy_data, tmp_path):
    import datasets

    arxiv, web, code = (toy_texts(toy_data, c) for c in ("arxiv", "open-web-math", "algebraic-stack"))
    web = web + web[:5]  # five exact copies for dedup to remove
    rng = random.Random(5)  # a benchmark problem planted in one arXiv document (the toy corpus repeats phrases)
    problem = " ".join("".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(7)) for _ in range(30))
    arxiv[3] = arxiv[3] + "\n\n" + problem
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"problem": problem, "solution": "42"}) + "\n")
    pq.write_table(pa.Table.from_pylist([{"content": t, "score": 4} for t in arxiv]), tmp_path / "arxiv.parquet",
                   row_group_size=20)
    datasets.Dataset.from_list([{"text": t} for t in web]).save_to_disk(str(tmp_path / "web"))
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in code))

    recipe = {
        "out": str(tmp_path / "mix"), "tokenizer": os.path.join(toy_data, "tokenizer.model"),
        "decontaminate": {"test_files": [str(test)], "n": 13},
        "sources": [
            {"name": "arxiv", "paths": [str(tmp_path / "arxiv.parquet")], "text_key": "content", "weight": 2,
             "validation": [os.path.join(toy_data, "corpus", "arxiv", "validation")], "validation_text_key": "text"},
            {"name": "web", "paths": [str(tmp_path / "web")], "weight": 4},
            {"name": "code", "paths": [str(tmp_path / "code")], "weight": 1},
        ]}
    (tmp_path / "recipe.yml").write_text(yaml.safe_dump(recipe))
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "prepare_mixture.py"), str(tmp_path / "recipe.yml"),
                        "--workers", "2"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    config = yaml.safe_load(open(tmp_path / "mix" / "data_mixture.yml"))
    assert config["train_data_weights"] == [2.0, 4.0, 1.0] and config["tokenizer_type"] == "SPMTokenizer"
    assert [os.path.basename(p) for p in config["train_data_paths"]] == [
        "arxiv_train_content_document", "web_train_text_document", "code_train_text_document"]
    web_dedup = json.load(open(tmp_path / "mix" / "dedup" / "web" / "dedup.json"))
    assert web_dedup["removed"] == 5 and web_dedup["sources"][0]["path"].endswith(".arrow")
    record = json.load(open(tmp_path / "mix" / "decontaminated" / "decontamination.json"))
    dropped = [json.loads(line) for line in open(tmp_path / "mix" / "decontaminated" / "dropped.jsonl")]
    assert [d["reason"] for d in dropped].count("overlap") == 1, record  # the one planted document
    again = subprocess.run([sys.executable, os.path.join(REPO, "tools", "prepare_mixture.py"),
                            str(tmp_path / "recipe.yml")], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "deduplicated already" in again.stderr  # a rerun skips finished steps

    model = {k: v for k, v in yaml.safe_load(open(os.path.join(REPO, "llemma_configs", "smoke.yml"))).items()
             if k not in DATA_KEYS}
    (tmp_path / "model.yml").write_text(yaml.safe_dump(model))
    cmd = [sys.executable, "deepy.py", "train.py", str(tmp_path / "model.yml"), str(tmp_path / "mix" / "data_mixture.yml"),
           "-o", "train_iters=4", "-o", "lr_decay_iters=4", "-o", "warmup_iters=1", "-o", "eval_interval=4",
           "-o", f"log_dir={tmp_path}/logs", "-o", f"save={tmp_path}/ckpt", "-o", "checkpoint_factor=4",
           "-o", f"data_cache_dir={tmp_path}/cache"]
    t = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert t.returncode == 0, t.stderr[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "logs" / "metrics.jsonl")]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 4 and all(0 < x < 20 for x in losses)
    assert any("val/arxiv/loss" in row for row in rows)  # the validation set, named by its source


def test_a_bad_recipe_is_one_line_before_any_work(toy_data, tmp_path):
    base = {"out": str(tmp_path / "mix"), "tokenizer": os.path.join(toy_data, "tokenizer.model"),
            "sources": [{"name": "a", "paths": [str(tmp_path / "nope.parquet")], "weight": 1}]}
    for change, message in [({}, "nope.parquet: no such file"),
                            ({"sources": [{"name": "a", "paths": ["x"], "weight": 0}]}, "weight must be a positive"),
                            ({"extra": 1}, "unknown key 'extra'"),
                            ({"tokenizer": "missing.model"}, "tokenizer missing.model not found")]:
        (tmp_path / "r.yml").write_text(yaml.safe_dump({**base, **change}))
        with pytest.raises(Exception, match=message):
            mixture.load_recipe(str(tmp_path / "r.yml"))
    assert not (tmp_path / "mix").exists()
