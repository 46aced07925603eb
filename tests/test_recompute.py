"""Selective recomputation (recompute_granularity: selective, recompute_modules) changes no number:
the loss and every gradient equal those without recomputation and with full recomputation, bit
for bit on CPU; the config refuses what does not fit together."""

import pytest
import torch
from conftest import tiny_cfg

from neox.config import ConfigError

pytestmark = pytest.mark.processes  # a gloo process group (docs/tests.md)

LAYOUTS = {"none": {}, "full": {"checkpoint_activations": True},
           "selective_core_attn": {"recompute_granularity": "selective"},
           "selective_both": {"recompute_granularity": "selective", "recompute_modules": ["core_attn", "mlp_act"]}}


def loss_and_grads(options):
    from neox.model.llama import LlamaModel

    cfg = tiny_cfg(seq_length=32, max_position_embeddings=32, **options)
    model = LlamaModel(cfg).train()
    model.init_weights(5)
    tokens = torch.randint(0, 101, (2, 33), generator=torch.Generator().manual_seed(0))
    loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_selective_recomputation_equals_full_and_none(single_process_group):
    results = {name: loss_and_grads(options) for name, options in LAYOUTS.items()}
    loss, grads = results["none"]
    for name, (other_loss, other_grads) in results.items():
        assert other_loss == loss, name
        assert all(torch.equal(grads[n], other_grads[n]) for n in grads), name


@pytest.mark.parametrize("options, message", [
    ({"recompute_granularity": "selective", "checkpoint_activations": True},
     "keys 'recompute_granularity: selective' and 'checkpoint_activations: true'"),
    ({"recompute_granularity": "selective", "recompute_modules": ["mlp"]},
     "key 'recompute_modules' must list some of core_attn, mlp_act, got ['mlp']"),
    ({"recompute_modules": ["core_attn"]}, "key 'recompute_modules' is set but 'recompute_granularity' is not selective"),
    ({"recompute_granularity": "layer"}, "key 'recompute_granularity' must be full or selective, got 'layer'"),
])
def test_bad_recompute_keys_are_one_line_errors(options, message):
    with pytest.raises(ConfigError) as e:
        tiny_cfg(**options)
    assert str(e.value).startswith(message), str(e.value)
