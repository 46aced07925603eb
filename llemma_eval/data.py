"""The benchmarks' files, from --data-dir as downloaded or (without it) the HF datasets cache.

lm-eval calls these as `custom_dataset` with the task metadata, where evaluate puts data_dir.
--data-dir layout (each is the benchmark's own release, unpacked):
    MATH/test/<subject>/<n>.json      Hendrycks et al.'s tarball   (or MATH/test.jsonl)
    gsm8k/test.jsonl                  grade-school-math's data/test.jsonl
    proof-pile-2/<component>/test/*.jsonl(.zst)   Proof-Pile-2 as published
"""

import glob
import io
import json
import os
from typing import Any

from neox.errors import NeoxError

MATH_SUBJECTS = ["algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus"]

PROOF_PILE_2 = ["arxiv", "open-web-math", "algebraic-stack"]


class DataError(NeoxError, ValueError):
    pass


def _dataset(rows: list[dict], source: str):
    import datasets

    if not rows:
        raise DataError(f"no documents found in {source}")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def read_jsonl(path: str) -> list[dict]:
    """A .jsonl or .jsonl.zst file."""
    if path.endswith(".zst"):
        import zstandard

        with open(path, "rb") as raw:
            text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8")
            return [json.loads(line) for line in text if line.strip()]
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _require(row: dict, fields, path: str):
    missing = [k for k in fields if k not in row]
    if missing:
        raise DataError(f"{path}: record lacks field(s) {missing}")
    return row


def math_rows(data_dir: str) -> list[dict]:
    fields = ("problem", "level", "type", "solution")
    flat = os.path.join(data_dir, "MATH", "test.jsonl")
    if os.path.isfile(flat):
        return [_require(r, fields, flat) for r in read_jsonl(flat)]
    files = sorted(glob.glob(os.path.join(data_dir, "MATH", "test", "*", "*.json")),
                   key=lambda p: (os.path.dirname(p), int(os.path.basename(p)[:-5]) if os.path.basename(p)[:-5].isdigit() else 0))
    if not files:
        raise DataError(f"no MATH test set under {data_dir}: expected MATH/test/<subject>/*.json or MATH/test.jsonl")
    return [_require(json.load(open(p)), fields, p) for p in files]


def missing_data(kind: str, data_dir: str) -> str | None:
    """What --data-dir lacks for a task of this kind (checked before any model is loaded)."""
    if kind == "math" and not (os.path.isfile(os.path.join(data_dir, "MATH", "test.jsonl"))
                               or glob.glob(os.path.join(data_dir, "MATH", "test", "*", "*.json"))):
        return f"{data_dir}/MATH/test/<subject>/*.json (or MATH/test.jsonl)"
    if kind == "gsm8k" and not os.path.isfile(os.path.join(data_dir, "gsm8k", "test.jsonl")):
        return f"{data_dir}/gsm8k/test.jsonl"
    if kind == "ppl" and not glob.glob(os.path.join(data_dir, "proof-pile-2", "*", "test", "*.jsonl*")):
        return f"{data_dir}/proof-pile-2/<component>/test/*.jsonl(.zst)"
    return None


LAYOUTS = {"math": "MATH/test/<subject>/<n>.json (or MATH/test.jsonl)", "gsm8k": "gsm8k/test.jsonl",
           "ppl": "proof-pile-2/<component>/test/*.jsonl(.zst)"}


def from_hub(kind: str, dataset_id: str, *args: Any, **kwargs: Any) -> Any:
    """datasets.load_dataset, or one line naming --data-dir and the file layout it expects."""
    import datasets

    try:
        return datasets.load_dataset(dataset_id, *args, **kwargs)
    except Exception as e:  # offline without a cached copy: ConnectionError, FileNotFoundError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise DataError(f"{dataset_id} is neither reachable on the Hugging Face hub nor in the local datasets "
                        f"cache ({type(e).__name__}: {first}); offline, give --data-dir D with the benchmark "
                        f"files as downloaded: D/{LAYOUTS.get(kind, kind)}") from None


def math_test(data_dir: str | None = None, **_: Any) -> Any:
    if data_dir:
        return _dataset(math_rows(data_dir), os.path.join(data_dir, "MATH"))
    import datasets  # from the HF cache (HF_DATASETS_OFFLINE=1 on offline clusters)

    parts = [from_hub("math", "EleutherAI/hendrycks_math", s, split="test") for s in MATH_SUBJECTS]
    return datasets.DatasetDict({"test": datasets.concatenate_datasets(parts)})


def gsm8k_test(data_dir: str | None = None, **_: Any) -> Any:
    if data_dir:
        path = os.path.join(data_dir, "gsm8k", "test.jsonl")
        if not os.path.isfile(path):
            raise DataError(f"GSM8k test set not found: {path}")
        return _dataset([_require(r, ("question", "answer"), path) for r in read_jsonl(path)], path)
    import datasets

    return datasets.DatasetDict({"test": from_hub("gsm8k", "openai/gsm8k", "main", split="test")})


def proof_pile_2_test(data_dir: str | None = None, **_: Any) -> Any:
    """Held-out documents of each component present, tagged with their component."""
    if data_dir:
        root = os.path.join(data_dir, "proof-pile-2")
        rows = []
        for comp in PROOF_PILE_2:
            for path in sorted(glob.glob(os.path.join(root, comp, "test", "*.jsonl*"))):
                rows += [{"text": _require(r, ("text",), path)["text"], "component": comp} for r in read_jsonl(path)]
        return _dataset(rows, f"{root}/<component>/test/*.jsonl(.zst)")
    import datasets

    parts = [from_hub("ppl", "EleutherAI/proof-pile-2", c, split="test").map(lambda d, c=c: {"component": c})
             for c in PROOF_PILE_2]
    return datasets.DatasetDict({"test": datasets.concatenate_datasets(parts).select_columns(["text", "component"])})
