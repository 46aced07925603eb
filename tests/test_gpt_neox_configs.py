"""GPT-NeoX configs mean here what they meant in GPT-NeoX, or are refused with the reason.

The configs under tests/gpt_neox_configs/ are written here from the published values of GPT-NeoX's
`llemma` branch (Llemma 7B / 34B and the data mixture) and GPT-NeoX main's Llama 2 7B model file."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from neox.config import KEY_TO_SECTION, ConfigError, gpt_neox_keys, load_config
from neox.config.gpt_neox_keys import (
    GPT_NEOX_KEYS,
    Always,
    Lacking,
    NoEffect,
    Translate,
    llemma_branch_mlp_width,
    main_swiglu_mlp_width,
)
from neox.model.planner import plan

HERE = os.path.join(REPO, "tests", "gpt_neox_configs")
REFERENCE_CLUSTER = ["num_gpus=8", "num_nodes=32"]


def neox_cfg(*files, overrides=(), dry_run=True):
    return load_config([os.path.join(HERE, f) for f in files], list(overrides), dry_run=dry_run)


def llemma(size, *extra):
    vocab = {"7b": 32016, "34b": 32000}[size]
    return neox_cfg(f"llemma_{size}.yml", "data_mixture.yml",
                    overrides=[*REFERENCE_CLUSTER, f"vocab_size={vocab}", *extra])


def test_every_key_has_exactly_one_fate_and_none_shadows_ours():
    assert not set(GPT_NEOX_KEYS) & set(KEY_TO_SECTION)
    for key, fate in GPT_NEOX_KEYS.items():
        assert type(fate).__name__ in {"Translate", "Derive", "Always", "NoEffect", "Lacking"}, key


def test_llemma_7b_resolves_to_the_published_values():
    c = llemma("7b")
    m = c.model
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.num_kv_heads) == (32, 4096, 32, 32)
    assert (m.intermediate_size, m.rotary_emb_base, m.attention_impl) == (11008, 10000, "flash")
    assert c.parallel.model_parallel_size == 2 and c.data_parallel_size == 128
    assert c.lr == 1e-4 and c.schedule.min_lr == pytest.approx(3.3e-6, rel=1e-12)
    assert (c.schedule.train_iters, c.schedule.lr_decay_iters, c.schedule.warmup_iters) == (48_000, 48_000, 500)
    assert plan(c)["tokens_per_step"] == 4_194_304
    assert c.optim.precision == "bf16" and c.optim.zero_optimization["stage"] == 1
    assert m.checkpoint_activations and c.logging.wandb_entity == "a-team" and c.logging.wandb_group == "llemma_7b"
    assert plan(c)["num_parameters"] == 6_738_546_688
    notes = " | ".join(c.gpt_neox["translated"])
    assert "intermediate_size 11008 (GPT-NeoX llemma branch rule)" in notes and "min_lr 3.3e-06" in notes
    assert {"partition_activations", "distributed_backend", "deepspeed_slurm", "wandb_host"} <= set(
        c.gpt_neox["no_effect"])


def test_llemma_34b_resolves_to_the_published_values():
    c = llemma("34b")
    m = c.model
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.num_kv_heads) == (48, 8192, 64, 8)
    assert (m.intermediate_size, m.rotary_emb_base) == (22016, 1e6)
    assert c.parallel.model_parallel_size == 8 and c.data_parallel_size == 32
    assert c.lr == 5e-5 and c.schedule.min_lr == pytest.approx(1.65e-6, rel=1e-12)
    assert (c.schedule.train_iters, c.schedule.warmup_iters) == (12_000, 500)
    assert plan(c)["tokens_per_step"] == 4_194_304


@pytest.mark.processes
def test_llemma_dry_run_command_line(toy_data):
    """docs/config.md's command, as a user types it: the GPT-NeoX files with the reference cluster."""
    cmd = [sys.executable, "deepy.py", "train.py", os.path.join(HERE, "llemma_7b.yml"),
           os.path.join(HERE, "data_mixture.yml"), "-o", "num_gpus=8", "-o", "num_nodes=32", "--dry-run"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["intermediate_size"], out["min_lr"], out["derived"]["tokens_per_step"]) == (11008, 3.3e-6, 4_194_304)
    assert "GPT-NeoX keys translated:" in r.stderr and "GPT-NeoX keys with no effect here:" in r.stderr
    # no GPU count: the error says how to plan the reference cluster
    r = subprocess.run(cmd[:-5] + ["--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "plan with -o num_gpus=8 -o num_nodes=32" in r.stderr


def test_gpt_neox_main_llama2_7b_mlp_is_11008_never_32768():
    c = neox_cfg("llama2_7b.yml", "training_setup.yml", overrides=["rotary_emb_base=10000", "gpu_memory_gib=141"])
    assert c.model.intermediate_size == 11008
    assert plan(c)["num_parameters"] == 6_738_415_616  # Llama 2 7B (vocab 32000)
    assert c.schedule.warmup_iters == 10 and c.schedule.min_lr == pytest.approx(3e-5)
    assert c.logging.use_tensorboard and c.logging.log_dir == "logs"
    # without a theta: refused, saying what GPT-NeoX would have used
    with pytest.raises(ConfigError, match=r"'rotary_emb_base' is required \(GPT-NeoX would have used its default 10000"):
        neox_cfg("llama2_7b.yml", "training_setup.yml")


def test_mlp_width_rules_by_hand():
    assert llemma_branch_mlp_width(4096) == 11008 and llemma_branch_mlp_width(8192) == 22016
    assert main_swiglu_mlp_width(4096, 32768, 256) == 11008
    assert main_swiglu_mlp_width(4096, None, 256) == 5632  # main's default 4h, what its llemma copies build
    assert main_swiglu_mlp_width(8192, None, 1) == 10923  # int(2 * 32768 / 3) = 21845 -> 21846 -> half


@pytest.mark.parametrize("override, message", [
    (["norm=layernorm"], "key 'norm' must be 'rmsnorm'"),
    (["activation=gelu"], "key 'activation' = 'gelu'"),
    (["init_method=small_init"], "key 'init_method' = small_init (other initialisations is not supported here)"),
    (["fp16.enabled=true"], "key 'fp16' = {'enabled': true}: fp16 with loss scaling"),
    (["hidden_dropout=0.1"], "key 'hidden_dropout' = 0.1 (dropout is not supported here); supported: 0"),
    (["pos_emb=alibi"], "key 'pos_emb' = alibi"),
    (["no_weight_tying=1"], "key 'no_weight_tying' must be true or false, got 1"),
    (["data_path=/data/enwik8"], "key 'data_path' = /data/enwik8: one dataset split by `split`"),
    (["merge_file=gpt2-merges.txt"], "key 'merge_file' = gpt2-merges.txt: GPT-2 BPE tokenizers"),
    (["intermediate_size=32768"], "key 'intermediate_size' (32768) with 'mlp_type: llama' is ambiguous"),
    (["mlp_multiple_of=256"], "name two versions' MLP rules"),
    (["warmup=0.01"], "keys 'warmup' (a fraction of train_iters) and 'warmup_iters' are both set"),
    (["min_lr=1e-6"], "keys 'decay_lr_to' (0.033, i.e. min_lr 3.3e-06) and 'min_lr' (1e-6) disagree"),
    (["zero_optimization.cpu_offload=true"], "'zero_optimization.cpu_offload' = true: CPU offload"),
    (["attention_config=[[[sparse_fixed], 32]]"], "key 'attention_config' asks for ['sparse_fixed'] attention"),
    (["attention_type=multihead", "num_kv_heads=8"], "use attention_type: groupedquery"),
    (["use_axonn_model_parallelism=true"], "AxoNN parallelism is not supported here"),
    (["pos_embx=rotary"], "unknown key 'pos_embx' in -o overrides (did you mean 'pos_emb'?)"),
])
def test_what_we_lack_is_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        llemma("7b", *override)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.processes
def test_refusal_on_the_command_line_is_one_error_line_and_exit_2():
    cmd = [sys.executable, "deepy.py", "train.py", os.path.join(HERE, "llemma_7b.yml"),
           os.path.join(HERE, "data_mixture.yml"), "-o", "activation=gelu", "-o", "num_gpus=8", "-o", "num_nodes=32",
           "--dry-run"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["error: key 'activation' = 'gelu': only silu / swiglu (Llama's gated "
                                             "MLP) are supported here, not GELU or other activations"]


def test_a_gpt_neox_model_config_without_mlp_rule_is_gelu_and_refused():
    with pytest.raises(ConfigError, match="GPT-NeoX would build its default GELU MLP"):
        load_config([os.path.join(HERE, "llemma_7b.yml"), os.path.join(HERE, "data_mixture.yml")],
                    [*REFERENCE_CLUSTER, "mlp_type=", "activation="], dry_run=True)


def test_readme_table_is_generated_from_the_declared_table():
    readme = open(os.path.join(REPO, "docs", "config.md")).read()
    assert gpt_neox_keys.markdown_table() in readme
    for fate in (Translate, Always, NoEffect, Lacking):
        assert any(isinstance(f, fate) for f in GPT_NEOX_KEYS.values())


@pytest.mark.processes
def test_gpt_neox_spelt_smoke_trains_to_the_same_losses_as_smoke_yml(tmp_path, toy_data):
    """The smoke model written with GPT-NeoX spellings is the same run as smoke.yml."""
    def run(config, *overrides):
        out = tmp_path / os.path.basename(config)
        cmd = [sys.executable, "deepy.py", "train.py", config, "-o", f"log_dir={out}/logs", "-o", f"save={out}/ckpt",
               "-o", f"data_cache_dir={tmp_path}/cache", "-o", "eval_interval=10", "-o", "checkpoint_factor=10"]
        for o in overrides:
            cmd += ["-o", o]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        rows = [json.loads(line) for line in open(out / "logs" / "metrics.jsonl")]
        return [(row["step"], row["loss"], row["lr"], row["grad_norm"]) for row in rows if "loss" in row]

    ours = run("llemma_configs/smoke.yml", "train_iters=10", "intermediate_size=512")
    theirs = run(os.path.join(HERE, "smoke_gpt_neox.yml"))
    assert len(ours) == 10 and theirs == ours


def test_no_weight_tying_false_ties_the_head_as_gpt_neox_does():
    llama = {"mlp_type": "llama", "hidden_size": 64}  # a Llama MLP rule, as every GPT-NeoX Llama config has
    tied = gpt_neox_keys.translate({**llama, "no_weight_tying": False}, set(KEY_TO_SECTION)).flat
    untied = gpt_neox_keys.translate({**llama, "no_weight_tying": True}, set(KEY_TO_SECTION)).flat
    assert tied == {**untied, "tie_word_embeddings": True} and "tie_word_embeddings" not in untied
