"""Config loading, merging, overrides and every validation rule, each with its message."""

import glob
import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, tiny_flat

from neox.config import ConfigError, load_config

BASE = {
    "num_layers": 2, "hidden_size": 64, "num_attention_heads": 8, "num_kv_heads": 4,
    "intermediate_size": 128, "seq_length": 32, "rotary_emb_base": 10000, "vocab_size": 100,
    "model_parallel_size": 2, "num_gpus": 4, "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 3, "train_batch_size": 12, "train_iters": 100,
    "warmup_iters": 10, "lr_decay_iters": 100, "min_lr": 1e-5,
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8}},
}


@pytest.fixture
def env(tmp_path):
    """Writes YAML files and a data prefix with real (empty) .bin/.idx files and a tokenizer file."""
    prefix = tmp_path / "data_text_document"
    for ext in (".bin", ".idx"):
        (tmp_path / f"data_text_document{ext}").write_bytes(b"")
    (tmp_path / "tok.model").write_bytes(b"x")

    def write(name="a.yml", drop=(), **changes):
        cfg = {**BASE, "train_data_paths": [str(prefix)], "vocab_file": str(tmp_path / "tok.model")}
        cfg.update(changes)
        for k in drop:
            cfg.pop(k)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    write.dir = tmp_path
    return write


def error_of(paths, overrides=(), dry_run=False) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(paths, overrides, dry_run=dry_run)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_valid_config_and_derived_values(env):
    cfg = load_config([env()])
    assert cfg.data_parallel_size == 2 and cfg.batch.train_batch_size == 12
    assert cfg.model.num_kv_heads == 4 and cfg.schedule.lr_decay_iters == 100
    assert cfg.lr == 3e-4 and cfg.optim.precision == "bf16"


def test_dash_and_underscore_are_the_same_key(env, tmp_path):
    p = tmp_path / "dash.yml"
    data = yaml.safe_load(open(env()))
    data["num-layers"] = data.pop("num_layers")
    p.write_text(yaml.safe_dump(data))
    assert load_config([str(p)]).model.num_layers == 2
    assert load_config([env()], ["num-layers=3"]).model.num_layers == 3


def test_files_merge_and_duplicate_key_is_error(env, tmp_path):
    main = env(drop=("seq_length",))
    extra = tmp_path / "extra.yml"
    extra.write_text("seq_length: 64\n")
    assert load_config([main, str(extra)]).model.seq_length == 64
    extra.write_text("seq_length: 64\nnum_layers: 4\n")
    msg = error_of([main, str(extra)])
    assert "num_layers" in msg and "a.yml" in msg and "extra.yml" in msg


def test_overrides_reach_nested_values(env):
    cfg = load_config([env()], ["optimizer.params.lr=5e-4", "train_iters=7", "lr_decay_iters=7",
                                "warmup_iters=1", "zero_optimization.stage=0"])
    assert cfg.lr == 5e-4 and isinstance(cfg.lr, float)
    assert cfg.optim.optimizer["params"]["betas"] == [0.9, 0.95]  # siblings kept
    assert cfg.schedule.train_iters == 7 and cfg.optim.zero_optimization["stage"] == 0
    assert "'bogus'" in error_of([env()], ["bogus=1"])


def test_unknown_key_with_did_you_mean(env):
    msg = error_of([env(num_layer=3)])
    assert "unknown key 'num_layer'" in msg and "did you mean 'num_layers'" in msg


@pytest.mark.parametrize("changes,needle", [
    ({"hidden_size": 66}, "'hidden_size' (66) must be divisible by 'num_attention_heads' (8)"),
    ({"num_attention_heads": 3, "num_kv_heads": 3, "hidden_size": 60},
     "'num_attention_heads' (3) must be divisible by 'model_parallel_size' (2)"),
    ({"num_kv_heads": 1}, "'num_kv_heads' (1) must be divisible by 'model_parallel_size' (2)"),
    ({"num_kv_heads": 3}, "'num_attention_heads' (8) must be divisible by 'num_kv_heads' (3)"),
    ({"num_gpus": 3}, "'num_gpus' (3) must be divisible by 'model_parallel_size' (2)"),
    ({"train_batch_size": 16}, "'train_batch_size' (16) != train_micro_batch_size_per_gpu (2) x "
                               "gradient_accumulation_steps (3) x data-parallel size (2"),
    ({"min_lr": 1e-3}, "'min_lr' (0.001) must be <= optimizer.params.lr (0.0003)"),
    ({"warmup_iters": 100}, "'warmup_iters' (100) must be < 'lr_decay_iters' (100)"),
    ({"precision": "fp8"}, "'precision' must be bf16 or fp32"),
    ({"zero_optimization": {"stage": 3}}, "'zero_optimization.stage' = 3 is not supported: stage 3 shards the weights"),
    ({"zero_optimization": {"stage": 4}}, "'zero_optimization.stage' must be 0, 1 or 2, got 4"),
    ({"sequence_parallel": True, "seq_length": 33, "max_position_embeddings": 64},
     "key 'sequence_parallel' needs 'seq_length' (33) divisible by 'model_parallel_size' (2)"),
    ({"data_phases": [{"after_step": 5, "weights": [1.0]}, {"after_step": 5, "weights": [2.0]}]},
     "key 'data_phases[1].after_step' (5) must be positive and later than the previous phase's (5)"),
    ({"data_phases": [{"after_step": 5, "weights": [1.0, 2.0]}]},
     "key 'data_phases[0].weights' has 2 entries but 'train_data_paths' has 1"),
    ({"data_phases": [{"step": 5, "weights": [1.0]}]}, "key 'data_phases[0]' must be {after_step: N, weights: [...]}"),
    ({"num_layers": "two"}, "'num_layers' must be int"),
    ({"num_layers": 0}, "'num_layers' must be positive"),
    ({"train_data_weights": [1, 2]}, "'train_data_weights' has 2 entries but 'train_data_paths' has 1"),
    ({"seq_length": 4096}, "'seq_length' (4096) exceeds 'max_position_embeddings'"),
])
def test_each_rule_names_the_key(env, changes, needle):
    if "seq_length" in changes:
        changes["max_position_embeddings"] = 2048
    assert needle in error_of([env(**changes)])


@pytest.mark.parametrize("value", [[2], [-1], [0, 0], [], ["1"], 1])
def test_bad_checkpoint_layers_name_the_key_and_value(env, value):
    msg = error_of([env(checkpoint_activations=True, checkpoint_layers=value)])
    assert msg.startswith("key 'checkpoint_layers' must be") and repr(value) in msg


def test_checkpoint_layers_select_layers_and_the_memory_plan(env):
    from neox.model.planner import memory_per_gpu

    cfg = load_config([env(checkpoint_activations=True, checkpoint_layers=[1])])
    assert cfg.model.checkpointed_layers() == [1] and cfg.model.compile_blocks == "auto"
    assert load_config([env(checkpoint_activations=True)]).model.checkpointed_layers() == [0, 1]
    assert load_config([env()]).model.checkpointed_layers() == []
    msg = error_of([env(checkpoint_layers=[1])])
    assert "'checkpoint_layers' ([1]) is set but 'checkpoint_activations' is false" in msg
    act = [memory_per_gpu(load_config([env(num_layers=4, **kw)]))["activations_gib"]
           for kw in ({}, {"checkpoint_activations": True, "checkpoint_layers": [0, 2]},
                      {"checkpoint_activations": True})]
    assert act[0] > act[1] > act[2]  # fewer checkpointed layers, more activation memory
    assert "key 'compile_blocks' must be true, false or auto, got 'yes'" in error_of([env(compile_blocks="yes")])
    assert load_config([env(compile_blocks="AUTO")]).model.compile_blocks == "auto"
    assert load_config([env(compile_blocks=True)]).model.compile_blocks is True


def test_rotary_base_is_required(env):
    assert "key 'rotary_emb_base' is required" in error_of([env(drop=("rotary_emb_base",))])


def test_batch_derivation(env):
    cfg = load_config([env(drop=("gradient_accumulation_steps",))])
    assert cfg.batch.gradient_accumulation_steps == 3
    cfg = load_config([env(drop=("train_batch_size",))])
    assert cfg.batch.train_batch_size == 12
    assert "not divisible" in error_of([env(drop=("gradient_accumulation_steps",), train_batch_size=10)])


def test_missing_files_are_errors_but_warnings_in_dry_run(env):
    path = env(train_data_paths=["/nowhere/x_text_document"], vocab_file="/nowhere/tok.model")
    msg = error_of([path])
    assert "train_data_paths" in msg and "/nowhere/x_text_document.bin" in msg
    cfg = load_config([path], dry_run=True)
    assert any("/nowhere/tok.model" in w for w in cfg.warnings)
    assert any("x_text_document.idx" in w for w in cfg.warnings)


def test_finetune_needs_a_checkpoint(env):
    assert "'finetune' is true but 'load' is not set" in error_of([env(finetune=True)])
    msg = error_of([env(finetune=True, load="/nowhere/ckpt")])
    assert "key 'load'" in msg and "/nowhere/ckpt" in msg


def run_deepy(*args):
    t0 = time.time()
    r = subprocess.run([sys.executable, os.path.join(REPO, "deepy.py"), *args],
                       capture_output=True, text=True, cwd=REPO)
    return r, time.time() - t0


@pytest.mark.processes
def test_deepy_bad_config_fails_fast_with_one_line(env):
    r, _ = run_deepy("train.py", env(num_attention_heads=5))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "num_attention_heads" in lines[0]
    assert r.stdout == ""


@pytest.mark.processes
def test_deepy_dry_run_prints_one_json_object(env):
    r, _ = run_deepy("train.py", env(), "-o", "optimizer.params.lr=2e-4", "--dry-run")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["num_layers"] == 2 and out["optimizer"]["params"]["lr"] == 2e-4
    d = out["derived"]
    assert d["data_parallel_size"] == 2 and d["global_batch_size"] == 12
    assert d["tokens_per_step"] == 12 * 32 and d["total_tokens"] == 12 * 32 * 100


SHIPPED = [["smoke.yml"], ["7b.yml", "data_mixture.yml"], ["7b.yml", "data_mixture_decontaminated.yml"],
           ["34b.yml", "data_mixture.yml"],
           ["llama3_8b.yml", "data_mixture.yml"], ["qwen25_7b.yml", "data_mixture.yml"],
           ["qwen3_8b.yml", "data_mixture.yml"], ["olmo2_7b.yml", "data_mixture.yml"],
           ["llama3_70b.yml", "data_mixture.yml"]]


@pytest.mark.processes
def test_every_shipped_yaml_validates():
    """Each shipped config (with its data mixture) loads and validates; missing data and
    checkpoints are allowed here (they are generated or downloaded), so this is a dry run."""
    shipped = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "llemma_configs", "*.yml")))
    assert sorted({f for combo in SHIPPED for f in combo}) == shipped
    for combo in SHIPPED:
        r, _ = run_deepy("train.py", *[os.path.join(REPO, "llemma_configs", f) for f in combo], "--dry-run")
        assert r.returncode == 0, f"{combo}: {r.stderr}"
        json.loads(r.stdout)


def test_field_types_come_from_get_type_hints_and_new_spellings_coerce():
    import dataclasses
    from typing import Literal, Optional

    from neox.config import BoolOrAuto, ConfigError, ModelArgs, _coerce, field_types

    types = field_types(ModelArgs)
    assert types["num_kv_heads"] is int and types["vocab_size"] == Optional[int]  # derived: always set; not
    assert _coerce("k", "3e2", int | None) == 300 and _coerce("k", None, int | None) is None
    assert _coerce("k", ["a", 1], list[str]) == ["a", "1"] and _coerce("k", "one", list[str]) == ["one"]
    assert _coerce("k", ["1", "2e1"], Optional[list[int]]) == [1, 20]
    assert _coerce("k", "AUTO", BoolOrAuto) == "auto" and _coerce("k", False, BoolOrAuto) is False
    assert _coerce("k", "sdpa", Literal["sdpa", "flash"]) == "sdpa"
    for value, tp, message in [(None, int, "key 'k' must not be empty"), ("x", BoolOrAuto, "must be true, false or auto"),
                               (["a", 1.5], list[int], "must be list[int]"), (2.5, int | None, "must be int, got 2.5")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            _coerce("k", value, tp)
    assert {f.name for f in dataclasses.fields(ModelArgs)} == set(field_types(ModelArgs))


def test_validate_returns_a_frozen_resolved_config_and_leaves_its_input_as_it_was():
    import dataclasses

    from neox.config import ConfigError, NeoXConfig, _coerce_all, validate

    flat = tiny_flat(gradient_accumulation_steps=None, train_batch_size=8, head_dim=None, precision="bfloat16")
    raw = NeoXConfig.from_flat(_coerce_all(flat))  # derived keys filled when built: every field has its type
    assert raw.model.head_dim == 48 // 6 and raw.batch.gradient_accumulation_steps == 8 // flat["train_micro_batch_size_per_gpu"]
    cfg = validate(raw, dry_run=True)
    assert cfg is not raw and raw.optim.precision == "bfloat16" and cfg.optim.precision == "bf16"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.num_layers = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = raw.model
    with pytest.raises(ConfigError, match="key 'seq_length' is required"):
        NeoXConfig.from_flat(_coerce_all(tiny_flat(seq_length=None)))


def test_the_keys_a_resume_may_change_are_declared_on_the_fields():
    import dataclasses

    from neox.checkpoint.atomic import config_differences
    from neox.config import LAYOUT_KEYS, RESUME, RESUME_MAY_CHANGE, SECTIONS

    declared = {f.name: f.metadata.get(RESUME) for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    assert RESUME_MAY_CHANGE == {k for k, v in declared.items() if v is True}
    assert LAYOUT_KEYS == {"model_parallel_size", "zero_optimization"}
    assert {"train_iters", "save", "num_gpus", "eval_after_checkpoint"} <= RESUME_MAY_CHANGE
    assert not {"seq_length", "optimizer", "train_data_paths", "rotary_emb_base"} & RESUME_MAY_CHANGE
    saved = {"train_iters": 10, "seq_length": 64, "model_parallel_size": 1}
    now = {"train_iters": 20, "seq_length": 128, "model_parallel_size": 2}
    assert config_differences(now, saved) == ["model_parallel_size (1 -> 2)", "seq_length (64 -> 128)"]
    assert config_differences(now, saved, layout_may_change=True) == ["seq_length (64 -> 128)"]
