"""A data mixture from today's corpora in one command: a YAML recipe of sources (paths in any format
neox.data.readers reads, text keys, weights) -> near-duplicates removed per source -> tokenized ->
decontaminated against benchmark test sets -> the data_mixture-style config the trainer reads.

The recipe (docs/data.md, "A mixture in one command"):

    out: data/mix                         # everything goes under here
    tokenizer: path/to/tokenizer.model    # or a tokenizer.json
    dedup: {ngram: 5, threshold: 0.8}     # the defaults of neox.data.dedup; false: no dedup
    decontaminate:                        # optional: 13-gram filter against these test sets
      test_files: [MATH/test.jsonl, gsm8k/test.jsonl=question,answer]
      keys: [problem, solution]
      n: 13
    sources:
      - {name: finemath-4plus, paths: [/data/finemath/finemath-4plus], weight: 4}
      - {name: arxiv, paths: ["/data/proof-pile-2/arxiv/train/*.jsonl.zst"], weight: 2,
         validation: ["/data/proof-pile-2/arxiv/validation"]}   # validation_text_key: text_key's default

Each step is skipped when its output is complete (a rerun after a crash continues), and its
tool's own resumption applies inside it. Writes OUT/data_mixture.yml.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from neox.data import decontaminate, dedup, preprocess
from neox.data.readers import resolve_inputs
from neox.data.tokenizer import HF, kind_of_file
from neox.errors import NeoxError


class RecipeError(NeoxError):
    """A recipe problem; the message is one line naming the file and key."""


@dataclass(frozen=True)
class Source:
    name: str
    paths: list[str]
    weight: float
    text_key: str = "text"
    validation: list[str] = field(default_factory=list)
    validation_text_key: str = "text"


@dataclass(frozen=True)
class Recipe:
    out: str
    tokenizer: str
    sources: list[Source]
    dedup: dedup.Params | None
    test_files: list[str]
    test_keys: list[str]
    n: int


SOURCE_KEYS = {"name", "paths", "weight", "text_key", "validation", "validation_text_key"}


def load_recipe(path: str) -> Recipe:
    """The recipe, checked whole before any work: keys, weights, inputs found, test sets readable."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError(f"{path}: cannot read the recipe ({e})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping with out, tokenizer and sources")
    unknown = set(raw) - {"out", "tokenizer", "dedup", "decontaminate", "sources"}
    if unknown:
        raise RecipeError(f"{path}: unknown key {sorted(unknown)[0]!r} (known: out, tokenizer, dedup, decontaminate, "
                          "sources)")
    for key in ("out", "tokenizer", "sources"):
        if not raw.get(key):
            raise RecipeError(f"{path}: key {key!r} is required")
    if not os.path.isfile(raw["tokenizer"]):
        raise RecipeError(f"{path}: tokenizer {raw['tokenizer']} not found")
    sources = [_source(path, i, s) for i, s in enumerate(raw["sources"])]
    if len({s.name for s in sources}) != len(sources):
        raise RecipeError(f"{path}: two sources have the same name")
    dd = raw.get("dedup", True)
    params = None if dd is False else dedup.Params(**({} if dd is True else dd))
    if params:
        params.check()
    dc = raw.get("decontaminate") or {}
    recipe = Recipe(out=raw["out"], tokenizer=raw["tokenizer"], sources=sources, dedup=params,
                    test_files=list(dc.get("test_files", [])), test_keys=list(dc.get("keys", ["problem", "solution"])),
                    n=int(dc.get("n", decontaminate.DEFAULT_N)))
    if recipe.test_files:  # read now, not after hours of work
        decontaminate.read_test_files(decontaminate.parse_test_files(recipe.test_files, recipe.test_keys))
    return recipe


def _source(path: str, i: int, s: Any) -> Source:
    if not isinstance(s, dict) or not {"name", "paths", "weight"} <= set(s):
        raise RecipeError(f"{path}: sources[{i}] needs name, paths and weight")
    unknown = set(s) - SOURCE_KEYS
    if unknown:
        raise RecipeError(f"{path}: sources[{i}] ({s['name']}): unknown key {sorted(unknown)[0]!r}")
    weight = s["weight"]
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise RecipeError(f"{path}: sources[{i}] ({s['name']}): weight must be a positive number, got {weight!r}")
    paths = [s["paths"]] if isinstance(s["paths"], str) else list(s["paths"])
    validation = [s["validation"]] if isinstance(s.get("validation"), str) else list(s.get("validation") or [])
    resolve_inputs(paths + validation)  # every input exists and is readable as documents
    key = str(s.get("text_key", "text"))
    return Source(name=str(s["name"]), paths=paths, weight=float(weight), text_key=key, validation=validation,
                  validation_text_key=str(s.get("validation_text_key", key)))


def prepare(recipe: Recipe, workers: int = 1, log: Callable[[str], None] = print) -> str:
    """Every step of the recipe; returns the path of the mixture config written."""
    train = [_train_prefix(recipe, s, workers, log) for s in recipe.sources]
    if recipe.test_files:
        train = _decontaminated(recipe, train, workers, log)
    valid = [_tokenized(recipe, s.validation, s.validation_text_key, f"{s.name}_validation", workers, log)
             for s in recipe.sources if s.validation]
    config = {
        "train_data_paths": train,
        "train_data_weights": [s.weight for s in recipe.sources],
        **({"valid_data_paths": valid} if valid else {}),
        "vocab_file": recipe.tokenizer,
        "tokenizer_type": "HFTokenizer" if kind_of_file(recipe.tokenizer) == HF else "SPMTokenizer",
    }
    path = os.path.join(recipe.out, "data_mixture.yml")
    with open(path + ".tmp", "w") as f:
        f.write("# written by tools/prepare_mixture.py: the mixture's data keys; give it to deepy.py beside a "
                "model config\n")
        yaml.safe_dump(config, f, sort_keys=False)
    os.replace(path + ".tmp", path)
    log(f"mixture: {len(train)} sources -> {path}")
    return path


def _train_prefix(recipe: Recipe, s: Source, workers: int, log: Callable[[str], None]) -> str:
    inputs = s.paths
    if recipe.dedup is not None:
        out = os.path.join(recipe.out, "dedup", s.name)
        if not os.path.isfile(os.path.join(out, dedup.RUN_FILE)):
            dedup.run(s.paths, out, dataclasses.replace(recipe.dedup, key=s.text_key), workers=workers, log=log)
        else:
            log(f"mixture: {s.name}: deduplicated already ({out})")
        with open(os.path.join(out, dedup.RUN_FILE)) as f:  # the kept files, in the inputs' order
            inputs = [os.path.join(out, source["path"]) for source in json.load(f)["sources"]]
    return _tokenized(recipe, inputs, s.text_key, f"{s.name}_train", workers, log)


def _tokenized(recipe: Recipe, inputs: list[str], key: str, name: str, workers: int,
               log: Callable[[str], None]) -> str:
    prefix = os.path.join(recipe.out, "tokens", name)
    final = f"{prefix}_{key}_document"
    if os.path.isfile(final + ".manifest.json"):
        log(f"mixture: {final}: tokenized already")
        return final
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    preprocess.preprocess(inputs, prefix, recipe.tokenizer, append_eod=True, key=key, workers=workers,
                          allow_empty=True, progress=False)
    log(f"mixture: {final}")
    return final


def _decontaminated(recipe: Recipe, train: list[str], workers: int, log: Callable[[str], None]) -> list[str]:
    out = os.path.join(recipe.out, "decontaminated")
    if not os.path.isfile(os.path.join(out, decontaminate.RUN_FILE)):
        decontaminate.run(recipe.test_files, recipe.test_keys, train, recipe.tokenizer, out, n=recipe.n,
                          workers=workers, force=True, progress=False, log=log)
    return [decontaminate.output_prefix(out, p) for p in train]
