"""The Llemma configs carry the published recipe; the planner's numbers match hand arithmetic."""

import os

import pytest
from conftest import REPO

from neox.config import ConfigError, fit_to_cluster, load_config
from neox.model.planner import gpu_hours, memory_per_gpu, plan
from neox.train.lr_schedule import lr_for_config

CONFIGS = os.path.join(REPO, "llemma_configs")


def recipe(size, *overrides):
    vocab = {"7b": 32016, "34b": 32000}[size]
    return load_config([os.path.join(CONFIGS, f"{size}.yml"), os.path.join(CONFIGS, "data_mixture.yml")],
                       [f"vocab_size={vocab}", *overrides], dry_run=True)


def test_7b_published_values():
    c = recipe("7b")
    m = c.model
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.num_kv_heads) == (32, 4096, 32, 32)
    assert (m.intermediate_size, m.vocab_size, m.seq_length, m.rotary_emb_base) == (11008, 32016, 4096, 1e4)
    assert c.parallel.model_parallel_size == 2 and c.world_size == 256 and c.data_parallel_size == 128
    assert (c.batch.train_micro_batch_size_per_gpu, c.batch.gradient_accumulation_steps) == (4, 2)
    assert c.lr == 1e-4 and c.optim.optimizer["params"]["betas"] == [0.9, 0.95]
    assert c.optim.optimizer["params"]["eps"] == 1e-8 and c.optim.weight_decay == 0.1
    assert c.optim.gradient_clipping == 1.0 and c.optim.zero_optimization["stage"] == 1
    assert c.optim.precision == "bf16" and m.checkpoint_activations
    s = c.schedule
    assert (s.train_iters, s.lr_decay_iters, s.warmup_iters) == (42_000, 48_000, 500)
    assert s.min_lr == pytest.approx(c.lr / 30, rel=1e-15)
    assert c.checkpoint.finetune and c.checkpoint.checkpoint_factor == 500 and c.logging.eval_interval == 250
    assert lr_for_config(c, 500) == pytest.approx(1e-4)
    assert lr_for_config(c, 42_000) == pytest.approx(7.0893e-6, rel=1e-4)
    assert lr_for_config(c, 48_000) == pytest.approx(1e-4 / 30)


def test_34b_published_values():
    c = recipe("34b")
    m = c.model
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.num_kv_heads) == (48, 8192, 64, 8)
    assert (m.intermediate_size, m.vocab_size, m.rotary_emb_base) == (22016, 32000, 1e6)
    assert c.parallel.model_parallel_size == 8 and c.data_parallel_size == 32
    assert (c.batch.train_micro_batch_size_per_gpu, c.batch.gradient_accumulation_steps) == (2, 16)
    assert c.lr == 5e-5 and c.schedule.min_lr == pytest.approx(5e-5 / 30, rel=1e-15)
    assert (c.schedule.train_iters, c.schedule.lr_decay_iters, c.schedule.warmup_iters) == (12_000, 12_000, 500)
    assert c.checkpoint.checkpoint_factor == 250 and c.logging.eval_interval == 250
    assert lr_for_config(c, 12_000) == pytest.approx(5e-5 / 30)


@pytest.mark.parametrize("size", ["7b", "34b"])
def test_batch_and_mixture(size):
    p = plan(recipe(size))
    assert p["tokens_per_step"] == 4_194_304
    assert [round(w, 4) for w in p["normalized_data_weights"]] == [0.2714, 0.5429, 0.1357, 0.02, 0.03]


def test_planner_7b_tp2_fits_and_matches_hand_arithmetic():
    c = recipe("7b")
    mem = memory_per_gpu(c)
    p_gpu = mem["parameters_per_gpu"]
    # by hand: 32 layers x (4 x 4096^2 + 3 x 4096 x 11008) / 2 + 2 x 32016 x 4096 / 2 + norms
    assert p_gpu == 32 * (4 * 4096**2 + 3 * 4096 * 11008) // 2 + 32016 * 4096 + 65 * 4096
    assert mem["weights_gib"] == pytest.approx(2 * p_gpu / 2**30)
    assert mem["gradients_gib"] == pytest.approx(4 * p_gpu / 2**30)  # DeepSpeed's fp32 accumulation buffer
    assert mem["optimizer_states_gib"] == pytest.approx(12 * p_gpu / 128 / 2**30)
    s, b, h = 4096, 4, 4096
    # stored layer inputs + one recomputed layer: per token 16 h + 2 (2 h + 3 q + 3 k + 4 f)
    # + 4 heads + 8, with q = k = 4096 / 2 and f = 11008 / 2 at TP 2
    acts = 32 * s * b * h * 2 + s * b * (16 * h + 2 * (2 * h + 3 * 2048 + 3 * 2048 + 4 * 5504) + 4 * 16 + 8)
    # fused head + loss keeps the bf16 logits gradient; unfused, fp32 logits and their gradient
    assert mem["activations_gib"] == pytest.approx((acts + s * b * 32016 / 2 * 2) / 2**30)
    unfused = memory_per_gpu(recipe("7b", "fused_head_loss=false"))
    assert unfused["activations_gib"] == pytest.approx((acts + 2 * s * b * 32016 / 2 * 4) / 2**30)
    assert mem["total_gib"] < 40
    assert plan(c)["num_parameters"] == 6_738_546_688


def test_planner_7b_tp1_without_zero_does_not_fit():
    with pytest.raises(ConfigError, match=r"plan needs 119\.1 GiB per GPU .* 'gpu_memory_gib' is 40"):
        recipe("7b", "model_parallel_size=1", "zero_optimization.stage=0", "train_micro_batch_size_per_gpu=2",
               "gradient_accumulation_steps=2")


def test_planner_34b_tp8_fits():
    assert memory_per_gpu(recipe("34b"))["total_gib"] < 40


def test_gpu_hours_match_the_published_figure():
    c = recipe("7b")
    # 6N + 12 L d S FLOPs per token, 312 TFLOP/s, 200B tokens at 35.7% MFU: about 23,000 A100-hours
    hours = gpu_hours(c, 200e9, 0.357)
    n = 6_738_546_688
    assert hours == pytest.approx(200e9 * (6 * n + 12 * 32 * 4096 * 4096) / (0.357 * 312e12) / 3600)
    assert hours == pytest.approx(23_000, rel=0.03)


def test_fit_to_cluster_keeps_the_global_batch():
    c = fit_to_cluster(recipe("7b"), 8, 8, dry_run=True)  # 64 GPUs: DP 32, 32 sequences per rank
    assert (c.batch.train_micro_batch_size_per_gpu, c.batch.gradient_accumulation_steps) == (4, 8)
    assert c.batch.train_batch_size == 1024 and c.world_size == 64
    c = fit_to_cluster(recipe("7b"), 64, 8, dry_run=True)  # 512 GPUs: DP 256, 4 per rank
    assert (c.batch.train_micro_batch_size_per_gpu, c.batch.gradient_accumulation_steps) == (4, 1)
    # TP 8: DP 4, 256 per rank, micro 2 (on 80 GB GPUs: at DP 4 the optimizer shards need 44.9 GiB)
    c = fit_to_cluster(recipe("34b", "gpu_memory_gib=80"), 4, 8, dry_run=True)
    assert (c.batch.train_micro_batch_size_per_gpu, c.batch.gradient_accumulation_steps) == (2, 128)
    with pytest.raises(ConfigError, match="4,194,304 tokens per step cannot be kept exactly"):
        fit_to_cluster(recipe("7b"), 6, 8, dry_run=True)  # DP 24 does not divide 1,024


def seventy_b(*overrides):
    return load_config([os.path.join(CONFIGS, "llama3_70b.yml"), os.path.join(CONFIGS, "data_mixture.yml")],
                       list(overrides), dry_run=True)


def test_70b_recipe_is_llama_3_1_70b_and_fits_40gb_on_256_gpus():
    """The parameter count transformers gives for the published config (meta device), and the plan
    on Llemma's cluster: TP 8 x DP 32, sequence parallelism, ZeRO stage 2, under 40 GB."""
    import torch
    import transformers

    from neox.model.hf_compat import neox_model_keys_from_hf

    published = transformers.LlamaConfig(
        hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
        intermediate_size=28672, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192})
    with torch.device("meta"):
        count = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(published).parameters())
    c = seventy_b()
    keys = neox_model_keys_from_hf(published)
    assert {k: getattr(c.model, k) for k in keys} == keys
    assert plan(c)["num_parameters"] == count == 70_553_706_496
    assert (c.world_size, c.parallel.model_parallel_size, c.data_parallel_size) == (256, 8, 32)
    assert c.parallel.sequence_parallel and c.optim.zero_optimization["stage"] == 2
    assert memory_per_gpu(c)["total_gib"] == pytest.approx(24.7, abs=0.05)


def test_a_plan_that_does_not_fit_says_what_would():
    """The 70B plan at ZeRO stage 1 without sequence parallelism: 66.1 GiB on a 40 GB card, and the
    one change that fits (stage 2), with that plan's numbers; with checkpointing off too, the two
    changes that fit (fewest first). On 4 nodes of 80 GB the cheapest change is sequence parallelism."""
    with pytest.raises(ConfigError) as e:
        seventy_b("zero_optimization.stage=1", "sequence_parallel=false")
    assert str(e.value) == (
        "plan needs 66.1 GiB per GPU (weights 16.4, gradients 32.9, optimizer 3.1, activations 11.8, overhead "
        "2.0) but key 'gpu_memory_gib' is 40; it would fit with zero_optimization: {stage: 2} -> 34.3 GiB per "
        "GPU (weights 16.4, gradients 1.0, optimizer 3.1, activations 11.8, overhead 2.0)")
    with pytest.raises(ConfigError, match=r"it would fit with zero_optimization: \{stage: 2\}, "
                                          r"checkpoint_activations: true -> 34\.3 GiB"):
        seventy_b("zero_optimization.stage=1", "sequence_parallel=false", "checkpoint_activations=false")
    with pytest.raises(ConfigError, match=r"plan needs 81\.8 GiB .* is 80; it would fit with sequence_parallel: "
                                          r"true -> 77\.0 GiB"):
        seventy_b("num_nodes=4", "gpu_memory_gib=80", "zero_optimization.stage=1", "sequence_parallel=false",
                  "train_micro_batch_size_per_gpu=1", "gradient_accumulation_steps=256")
    with pytest.raises(ConfigError, match="no change of sequence_parallel, ZeRO stage, checkpointing, micro batch "
                                          "or model_parallel_size fits it on this many GPUs: use more GPUs"):
        seventy_b("num_nodes=1", "gradient_accumulation_steps=512")
