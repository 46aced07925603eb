"""Base models beyond Code Llama, per family, with tiny random models built from transformers' own
config classes: Llama 3.1 (llama3 RoPE scaling), Llama 3.2 (the same, tied), Qwen2 (q/k/v biases;
and tied embeddings), Mistral (an explicit head_dim apart from hidden / heads), Qwen3 (per-head
QK-norm, explicit head_dim, tied), OLMo 2 (full-width QK-norm, norms after the sublayers) and
Gemma 3 (sliding-window layers with their own RoPE base and a window shorter than the sequence,
four (1 + w) norms per layer, scaled embeddings, GeGLU, query_pre_attn_scalar). Each: converted at
TP 1 and 2 (and 4 where the heads allow) with fp32 logits equal to transformers'; HF -> trainer ->
HF bit-identical, reloaded as the same class; 10 training steps at TP 2 (the 2025-26 families: and
at TP 1 from the same weights and data, equal); the trained model exported and its transformers
logits equal ours."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
import transformers
import yaml
from conftest import REPO
from test_converters import hf_tensors

from neox.interop import convert_codellama, export_hf, export_neox
from neox.interop.verify_conversion import verify
from neox.model.hf_compat import neox_model_keys_from_hf

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)

TOY_VOCAB = 3001  # the toy tokenizer's: the models train on the toy data
COMMON = dict(vocab_size=TOY_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
              bos_token_id=1, eos_token_id=2)
FAMILIES = {
    "llama3": (transformers.LlamaConfig, dict(
        rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32})),
    "qwen2": (transformers.Qwen2Config, dict(rope_theta=1e6, tie_word_embeddings=False)),
    "qwen2_tied": (transformers.Qwen2Config, dict(rope_theta=1e6, tie_word_embeddings=True)),
    "mistral": (transformers.MistralConfig, dict(rope_theta=1e6, head_dim=24, sliding_window=None,
                                                 tie_word_embeddings=False)),
    "llama32": (transformers.LlamaConfig, dict(
        rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32})),
    "qwen3": (transformers.Qwen3Config, dict(num_attention_heads=8, num_key_value_heads=4, head_dim=16,
                                             rope_theta=1e6, tie_word_embeddings=True)),
    "olmo2": (transformers.Olmo2Config, dict(num_key_value_heads=4, rope_theta=5e5, tie_word_embeddings=False)),
    # layer 0 slides (window 8, shorter than every test sequence), layer 1 attends fully with a linear RoPE scaling
    "gemma3": (transformers.Gemma3TextConfig, dict(
        head_dim=32, query_pre_attn_scalar=24, sliding_window=8, sliding_window_pattern=2,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
}
NEW = {"llama32", "qwen3", "olmo2", "gemma3"}  # the 2025-26 bases: also trained at TP 1 and compared
TPS = {"qwen3": (1, 2, 4), "olmo2": (1, 2, 4)}  # the others' 2 KV heads allow TP 1 and 2


def make_family(out, family, seed=0):
    cls, extra = FAMILIES[family]
    torch.manual_seed(seed)
    config = cls(**{**COMMON, **extra})
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # non-zero biases and norms, so a dropped or misplaced one shows up
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.8, 1.2)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.5)
    model.save_pretrained(out)
    return str(out)


def load_quietly(path):
    """transformers' model for an HF directory; any warning (Python's or transformers' logger) or
    loading problem fails the test."""
    import logging

    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    logger = transformers.utils.logging.get_logger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model, info = transformers.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    finally:
        logger.removeHandler(handler)
    assert not any(info.values()), info
    assert not records, [r.getMessage() for r in records]
    return model


def train_config(tmp, ckpt, tp=2, run="trained", **overrides):
    """smoke.yml with the converted model's keys, 10 steps at TP ``tp``, loading the converted weights."""
    with open(os.path.join(REPO, "llemma_configs", "smoke.yml")) as f:
        cfg = {k.replace("-", "_"): v for k, v in yaml.safe_load(f).items()}
    keys = json.load(open(os.path.join(ckpt, "neox_conversion.json")))["neox_model_keys"]
    cfg.update(keys, seq_length=64, train_iters=10, lr_decay_iters=10, eval_interval=10, checkpoint_factor=10,
               load=ckpt, finetune=True, save=str(tmp / run), log_dir=str(tmp / f"logs_{run}"),
               data_cache_dir=str(tmp / "cache"), precision="fp32", model_parallel_size=tp, num_gpus=tp)
    # Llemma's peak LR: at smoke.yml's 2e-3, Adam's per-element normalisation lifts fp32 rounding
    # differences of near-zero gradients (TP sums in another order) to 4e-6 of the loss in 10 steps
    cfg["optimizer"]["params"]["lr"] = 1e-4
    cfg["min_lr"] = 1e-5
    cfg.update(overrides)
    cfg["train_data_paths"] = [os.path.join(REPO, p) for p in cfg["train_data_paths"]]
    cfg["valid_data_paths"] = [os.path.join(REPO, p) for p in cfg["valid_data_paths"]]
    cfg["vocab_file"] = os.path.join(REPO, cfg["vocab_file"])
    path = tmp / f"{run}.yml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def train(tmp, ckpt, tp=2, run="trained", env=None, **overrides):
    r = subprocess.run([sys.executable, "deepy.py", "train.py", train_config(tmp, ckpt, tp, run, **overrides)], cwd=REPO,
                       capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})
    return r, [json.loads(line)["loss"] for line in open(tmp / f"logs_{run}" / "metrics.jsonl") if '"loss"' in line]


def rank_weights(ckpt, step, tp):
    from neox.checkpoint.files import load_rank, weights_of

    return [weights_of(load_rank(ckpt, f"global_step{step}", r)) for r in range(tp)]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_end_to_end(tmp_path, toy_data, capsys, family):
    src = make_family(tmp_path / "hf", family)
    for tp in TPS.get(family, (1, 2)):
        ckpt = str(tmp_path / f"tp{tp}")
        assert convert_codellama.main(["--hf-dir", src, "--out", ckpt, "--tp", str(tp),
                                       "--reference-tokens", "16"]) == 0
        assert verify(src, ckpt, tolerance=1e-5) <= 1e-5

    back = str(tmp_path / "back")
    assert export_hf.main(["--ckpt", str(tmp_path / "tp2"), "--out", back]) == 0
    a, b = hf_tensors(src), hf_tensors(back)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    source, exported = (json.load(open(os.path.join(d, "config.json"))) for d in (src, back))
    for key in ("model_type", "architectures", "tie_word_embeddings", "head_dim", "num_key_value_heads"):
        assert key not in source or exported[key] == source[key], key  # Qwen2's config has no head_dim
    assert neox_model_keys_from_hf(exported) == neox_model_keys_from_hf(source)  # same numbers
    assert type(load_quietly(back)) is type(transformers.AutoModelForCausalLM.from_pretrained(src))
    # GPT-NeoX's Llama format has none of these options: refused in one line, nothing written
    assert export_neox.main(["--ckpt", str(tmp_path / "tp2"), "--out", str(tmp_path / "neox_out")]) == 1
    assert "cannot be written in GPT-NeoX's Llama format" in capsys.readouterr().err
    assert not (tmp_path / "neox_out").exists()

    r, losses = train(tmp_path, str(tmp_path / "tp2"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert len(losses) == 10 and losses[-1] < losses[0]
    if family in NEW:
        check_tp1_equals_tp2(tmp_path, family, losses)
    trained = str(tmp_path / "trained_hf")
    assert export_hf.main(["--ckpt", str(tmp_path / "trained"), "--out", trained]) == 0
    load_quietly(trained)
    assert verify(trained, str(tmp_path / "trained"), tolerance=1e-5) <= 1e-5  # transformers = ours


def check_tp1_equals_tp2(tmp_path, family, losses_tp2):
    """10 steps at TP 1 from the same weights and data: the same losses (1e-6 relative), every
    replicated weight identical on both TP 2 ranks and equal to TP 1's, the split ones too."""
    from neox.model import partition

    r, losses_tp1 = train(tmp_path, str(tmp_path / "tp1"), tp=1, run="trained_tp1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert losses_tp1 == pytest.approx(losses_tp2, rel=1e-6, abs=0)
    [one], ranks = rank_weights(str(tmp_path / "trained_tp1"), 10, 1), rank_weights(str(tmp_path / "trained"), 10, 2)
    keys = json.load(open(tmp_path / "tp1" / "neox_conversion.json"))["neox_model_keys"]
    dims, vocab = partition.sizes(keys), keys["vocab_size"]
    replicated = [n for n in one if partition.split_dim(n) is None]
    assert any(partition.is_partial(n) for n in replicated) == (family in ("qwen3", "gemma3"))  # per-head QK-norm
    for name in one:
        if name in replicated:
            assert torch.equal(ranks[0][name], ranks[1][name]), name  # bit for bit on both ranks
        tp2 = partition.unshard([rank[name] for rank in ranks], name, dims)
        tp1 = partition.unshard([one[name]], name, dims)
        for a, b in zip(tp2, tp1):
            a, b = partition.strip_vocab(a, name, vocab), partition.strip_vocab(b, name, vocab)
            # replicated: 1e-6; split: 1e-5, Adam moves near-zero gradients' elements by up to ~lr/50
            assert (a - b).abs().max().item() < (1e-6 if name in replicated else 1e-5), name


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_logits_in_process(tmp_path, single_process_group, family):
    """TP 1 in this process: our fp32 logits equal transformers' for each family, and the option
    that family brings matters (dropping it changes the logits)."""
    from conftest import tiny_cfg

    from neox.model import partition
    from neox.model.hf_compat import shard_hf_weights
    from neox.model.llama import LlamaModel

    hf = transformers.AutoModelForCausalLM.from_pretrained(make_family(tmp_path / "hf", family)).eval()
    keys = neox_model_keys_from_hf(hf.config)
    keys.pop("max_position_embeddings")
    tokens = torch.randint(0, TOY_VOCAB, (2, 64), generator=torch.Generator().manual_seed(1))

    def ours(**change):
        cfg = tiny_cfg(**{**keys, "seq_length": 64, **change})
        model = LlamaModel(cfg).eval()
        names = partition.expected_names(cfg.model.num_layers, cfg.model)
        model.load_state_dict(shard_hf_weights(hf.state_dict().__getitem__, names, TOY_VOCAB, TOY_VOCAB, 0, 1),
                              strict=False)
        with torch.no_grad():
            return model.gather_logits(model(tokens))

    with torch.no_grad():
        expected = hf(tokens).logits
    assert (ours() - expected).abs().max().item() < 1e-5
    option = {"llama3": {"rope_scaling": None}, "qwen2": {"qkv_bias": False},
              "qwen2_tied": {"qkv_bias": False}, "mistral": {}, "llama32": {"rope_scaling": None},
              "qwen3": {"qk_norm": None}, "olmo2": {"qk_norm": None},
              # the window matters: the sequence (64) is longer than it (8)
              "gemma3": {"sliding_window": None, "sliding_window_pattern": None, "rotary_emb_base_local": None}}[family]
    if option:
        assert (ours(**option) - expected).abs().max().item() > 1e-3


# Keys of transformers' LlamaConfig, MistralConfig and Qwen2Config that do not change a model's
# numbers (identity, bookkeeping, generation, initialisation of new weights), ...
NO_EFFECT = {"_name_or_path", "architectures", "model_type", "transformers_version", "dtype", "bos_token_id",
             "eos_token_id", "pad_token_id", "id2label", "label2id", "problem_type", "is_encoder_decoder",
             "output_attentions", "output_hidden_states", "return_dict", "use_cache", "initializer_range",
             "chunk_size_feed_forward",  # not read by these models
             "max_window_layers",  # read only with use_sliding_window (refused)
             "_sliding_window_pattern"}  # Gemma 3: only derives layer_types (implemented) when they are not given
# ... and those that do, each with a value other than its default: implemented (our logits equal
# transformers') or refused by the converter with one line naming the key.
CHANGES = {
    "hidden_size": 96, "intermediate_size": 80, "num_attention_heads": 8, "num_hidden_layers": 3,
    "num_key_value_heads": 4, "rms_norm_eps": 1e-3, "vocab_size": 257, "head_dim": 32, "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}, "max_position_embeddings": 256,
    "pretraining_tp": 2, "sliding_window": 16, "attention_bias": True, "attention_dropout": 0.1, "mlp_bias": True,
    "hidden_act": "gelu", "use_sliding_window": True, "layer_types": ["sliding_attention", "full_attention"],
    "query_pre_attn_scalar": 64, "hidden_activation": "gelu", "final_logit_softcapping": 30.0,
    "attn_logit_softcapping": 50.0, "use_bidirectional_attention": True,
}
# Gemma 3 gives RoPE per layer type: a linear scaling on the full-attention layers, another local base
GEMMA_ROPE = {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
              "sliding_attention": {"rope_type": "default", "rope_theta": 5e3}}
CONFIG_CLASSES = [transformers.LlamaConfig, transformers.MistralConfig, transformers.Qwen2Config,
                  transformers.Qwen3Config, transformers.Olmo2Config, transformers.Gemma3TextConfig]


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_config_key_is_implemented_or_refused(single_process_group, cls):
    from conftest import tiny_cfg

    from neox.model import partition
    from neox.model.hf_compat import shard_hf_weights
    from neox.model.llama import LlamaModel

    defaults = cls().to_dict()
    unclassified = sorted(set(defaults) - NO_EFFECT - set(CHANGES))
    assert not unclassified, f"{cls.__name__} keys not classified here: {unclassified}"
    gemma = cls is transformers.Gemma3TextConfig  # its layers slide by default: a window longer than the test's
    base = {**COMMON, "sliding_window": 64 if gemma else None} if "sliding_window" in defaults else dict(COMMON)
    outcome = {}
    for key in sorted(set(CHANGES) & set(defaults)):
        config = cls(**{**base, key: GEMMA_ROPE if gemma and key == "rope_parameters" else CHANGES[key]})
        try:
            keys = neox_model_keys_from_hf(config.to_dict())
        except ValueError as e:
            assert key in str(e) and "\n" not in str(e), (key, str(e))
            outcome[key] = "refused"
            continue
        torch.manual_seed(0)
        hf = transformers.AutoModelForCausalLM.from_config(config).eval()
        keys.pop("max_position_embeddings")
        cfg = tiny_cfg(**{**keys, "seq_length": 48})
        ours = LlamaModel(cfg).eval()
        names = partition.expected_names(cfg.model.num_layers, cfg.model)
        vocab = cfg.model.vocab_size
        ours.load_state_dict(shard_hf_weights(hf.state_dict().__getitem__, names, vocab, vocab, 0, 1), strict=False)
        tokens = torch.randint(0, vocab, (1, 48), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            diff = (ours.gather_logits(ours(tokens)) - hf(tokens).logits).abs().max().item()
        assert diff < 1e-5, (key, diff)
        outcome[key] = "implemented"
    refused = {"attention_bias", "attention_dropout", "mlp_bias", "hidden_act", "use_sliding_window", "layer_types",
               "hidden_activation", "final_logit_softcapping", "attn_logit_softcapping", "use_bidirectional_attention"}
    if gemma:
        refused.remove("layer_types")  # Gemma 3's sliding layers (every N-th attends fully) are implemented
    assert {k for k, v in outcome.items() if v == "refused"} == refused & set(outcome)
    # Mistral's sliding_window (every layer slides) and Gemma 3's are implemented; Qwen ignores it unless
    # use_sliding_window (refused), as transformers does
    assert "sliding_window" not in outcome or outcome["sliding_window"] == "implemented"
    for kind in ("yarn", "dynamic", "longrope"):  # RoPE scalings we do not implement
        with pytest.raises(ValueError, match=f"rope_scaling of rope_type '{kind}'"):
            neox_model_keys_from_hf({**cls(**base).to_dict(), "rope_parameters": {"rope_type": kind, "factor": 2.0,
                                                                                  "rope_theta": 1e4}})


@pytest.mark.parametrize("model_type, name", [("qwen3_moe", "Qwen3-MoE"), ("llama4_text", "Llama 4"),
                                              ("mixtral", "Mixtral"), ("deepseek_v3", "DeepSeek-V3")])
def test_mixture_of_experts_refused_by_name(model_type, name):
    config = {**transformers.Qwen3Config(**COMMON).to_dict(), "model_type": model_type}
    with pytest.raises(ValueError) as e:
        neox_model_keys_from_hf(config, "moe/config.json")
    assert str(e.value).startswith(f"moe/config.json: model_type '{model_type}' ({name}) is a mixture-of-experts "
                                   "model, which is not supported: this trainer has dense decoders only")


def test_a_drifting_qk_norm_stops_the_run_at_the_next_save(tmp_path, toy_data):
    """Planted: the per-head QK-norm gradients are not summed over TP (NEOX_FAULT_SKIP_GRAD_SUM), so
    each rank's copy follows its own heads; the save at step 5 finds it, names the weight, writes
    nothing of that step and the run fails."""
    src = make_family(tmp_path / "hf", "qwen3")
    assert convert_codellama.main(["--hf-dir", src, "--out", str(tmp_path / "tp2"), "--tp", "2",
                                   "--reference-tokens", "0"]) == 0
    r, losses = train(tmp_path, str(tmp_path / "tp2"), env={"NEOX_FAULT_SKIP_GRAD_SUM": "1"}, checkpoint_factor=5)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert ("error: step 5: replicated weight 'layers.0.attention.q_head_norm.weight', "
            "'layers.0.attention.k_head_norm.weight'") in r.stderr
    assert "no checkpoint of this step was written (the newest is step 0)" in r.stderr
    assert len(losses) == 5 and not (tmp_path / "trained" / "global_step5").exists()


# the published config.json files' numbers (no download here), for the recipe configs' bases
PUBLISHED = {
    "qwen3_8b": transformers.Qwen3Config(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32,
                                         num_key_value_heads=8, intermediate_size=12288, head_dim=128,
                                         vocab_size=151936, max_position_embeddings=40960, rope_theta=1e6,
                                         rms_norm_eps=1e-6, tie_word_embeddings=False),
    "olmo2_7b": transformers.Olmo2Config(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                         num_key_value_heads=32, intermediate_size=11008, vocab_size=100352,
                                         max_position_embeddings=4096, rope_theta=500000, rms_norm_eps=1e-6,
                                         tie_word_embeddings=False),
}


@pytest.mark.parametrize("recipe", sorted(PUBLISHED))
def test_recipe_configs_are_the_published_models(recipe):
    """The recipe's model keys are what the converter reads from the published config, and its
    parameter count is what transformers counts for that config (built on the meta device)."""
    from neox.config import load_config
    from neox.model.flops import parameter_count

    cfg = load_config([os.path.join(REPO, "llemma_configs", f"{recipe}.yml"),
                       os.path.join(REPO, "llemma_configs", "data_mixture.yml")], dry_run=True)
    keys = neox_model_keys_from_hf(PUBLISHED[recipe])
    assert {k: getattr(cfg.model, k) for k in keys} == keys
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(PUBLISHED[recipe])
    assert parameter_count(cfg) == sum(p.numel() for p in model.parameters())
