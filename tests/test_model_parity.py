"""Our model's logits equal transformers.LlamaForCausalLM with the same weights (fp32, TP=1)."""

import pytest
import torch
import transformers
from conftest import tiny_cfg

from neox.model import partition
from neox.model.hf_compat import neox_model_keys_from_hf, shard_hf_weights

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)


def make_hf_model(vocab=101, theta=1e6, seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=theta, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random norm weights too, so a misplaced norm shows up
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def our_model_from_hf(hf_model, **overrides):
    from neox.model.llama import LlamaModel

    keys = neox_model_keys_from_hf(hf_model.config)
    keys.pop("max_position_embeddings")
    cfg = tiny_cfg(**{**keys, "seq_length": 32, **overrides})
    model = LlamaModel(cfg).eval()
    hf_state = hf_model.state_dict()
    weights = shard_hf_weights(hf_state.__getitem__, partition.expected_names(cfg.model.num_layers),
                               cfg.model.vocab_size, cfg.padded_vocab_size, 0, 1)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing)
    return model, cfg


def test_logits_match_transformers_gqa(single_process_group):
    hf = make_hf_model()
    ours, cfg = our_model_from_hf(hf)
    assert cfg.model.num_kv_heads == 2 and cfg.model.rotary_emb_base == 1e6
    tokens = torch.randint(0, 101, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(tokens).logits
        got = ours.gather_logits(ours(tokens))
    assert got.shape == expected.shape
    diff = (got - expected).abs().max().item()
    assert diff < 1e-4, diff
    # the comparison is sensitive: a different RoPE theta gives visibly different logits
    wrong, _ = our_model_from_hf(hf, rotary_emb_base=1e4)
    with torch.no_grad():
        assert (wrong.gather_logits(wrong(tokens)) - expected).abs().max().item() > 1e-3


def test_loss_matches_transformers(single_process_group):
    hf = make_hf_model(seed=3)
    ours, _ = our_model_from_hf(hf)
    tokens = torch.randint(0, 101, (2, 33), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = hf(tokens, labels=tokens).loss  # HF shifts labels internally
        ours_loss = ours(tokens[:, :-1], tokens[:, 1:])
    assert abs(ours_loss.item() - expected.item()) < 1e-5


def test_vocab_padding_gets_no_probability(single_process_group):
    hf = make_hf_model(vocab=101)
    ours, cfg = our_model_from_hf(hf, make_vocab_size_divisible_by=8)
    assert cfg.padded_vocab_size == 104
    tokens = torch.randint(0, 101, (1, 8))
    with torch.no_grad():
        local = ours(tokens)
    assert local.shape[-1] == 104
    assert torch.isinf(local[..., 101:]).all() and torch.isfinite(local[..., :101]).all()
    assert torch.softmax(local.float(), -1)[..., 101:].sum().item() == 0.0
