"""Fused q/k/v and gate/up layout, the fused output head + loss, torch.compile of blocks and
per-layer activation checkpointing: none of them changes the numbers (fp32, tiny 2-layer GQA
model)."""

import pytest
import torch
from conftest import tiny_cfg

from neox.model import partition
from neox.model.hf_compat import shard_hf_weights


def gqa_hf_weights(layers=2, hidden=48, heads=6, kv_heads=2, inter=96, vocab=101, seed=0):
    """Random full HF tensors of a GQA model (6 query heads, 2 KV heads), by HF name."""
    gen = torch.Generator().manual_seed(seed)
    hd = hidden // heads
    shapes = {"q_proj": (heads * hd, hidden), "k_proj": (kv_heads * hd, hidden),
              "v_proj": (kv_heads * hd, hidden), "o_proj": (hidden, heads * hd),
              "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}
    out = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=gen),
           "lm_head.weight": torch.randn(vocab, hidden, generator=gen),
           "model.norm.weight": torch.randn(hidden, generator=gen)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = torch.randn(hidden, generator=gen)
        out[p + "post_attention_layernorm.weight"] = torch.randn(hidden, generator=gen)
        for proj, shape in shapes.items():
            kind = "self_attn" if proj.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            out[f"{p}{kind}.{proj}.weight"] = torch.randn(shape, generator=gen)
    return out


def test_partition_round_trip_is_bit_identical_for_gqa_at_tp2():
    hf = gqa_hf_weights()
    cfg = tiny_cfg(model_parallel_size=2, num_gpus=2)
    m = cfg.model
    assert m.num_kv_heads < m.num_attention_heads and cfg.padded_vocab_size == 102
    names = partition.expected_names(m.num_layers)
    assert sorted(partition.expected_hf_names(m.num_layers)) == sorted(hf)
    ranks = [shard_hf_weights(hf, names, 101, 102, r, 2) for r in range(2)]
    # the documented rank-blocked layout: rank r = [q heads 3r..3r+2; KV head r of k; of v]
    hd = 8
    for r in range(2):
        qkv = ranks[r]["layers.1.attention.qkv_proj.weight"]
        p = "model.layers.1.self_attn."
        expected = torch.cat([hf[p + "q_proj.weight"][r * 3 * hd:(r + 1) * 3 * hd],
                              hf[p + "k_proj.weight"][r * hd:(r + 1) * hd],
                              hf[p + "v_proj.weight"][r * hd:(r + 1) * hd]])
        assert torch.equal(qkv, expected)
        gate_up = ranks[r]["layers.0.mlp.gate_up_proj.weight"]
        p = "model.layers.0.mlp."
        assert torch.equal(gate_up, torch.cat([hf[p + "gate_proj.weight"][r * 48:(r + 1) * 48],
                                               hf[p + "up_proj.weight"][r * 48:(r + 1) * 48]]))
    assert ranks[1]["lm_head.weight"].shape == (51, 48) and ranks[1]["lm_head.weight"][-1].eq(0).all()
    # the in-memory path equals the table's own shard() of the full tensors
    for name in names:
        parts = [hf[n] for n in partition.hf_names(name)]
        if name not in partition.VOCAB_WEIGHTS:
            assert torch.equal(ranks[1][name], partition.shard(parts, name, 1, 2)), name
    back = {}
    dims = partition.sizes(m, cfg.padded_vocab_size)
    for name in names:
        parts = partition.unshard([r[name] for r in ranks], name, dims)
        for hf_name, full in zip(partition.hf_names(name), parts):
            back[hf_name] = partition.strip_vocab(full, name, 101)
    assert back.keys() == hf.keys()
    for k in hf:
        assert back[k].dtype == hf[k].dtype and torch.equal(back[k], hf[k]), k


def loss_and_grads(seed=7, loss_mask=None, **overrides):
    """One training forward and backward; also which layers ran forward, in order."""
    from neox.model.llama import LlamaModel

    cfg = tiny_cfg(**overrides)
    model = LlamaModel(cfg).train()
    model.init_weights(seed)
    calls = []
    for i, layer in enumerate(model.layers):
        layer.register_forward_pre_hook(lambda module, args, i=i: calls.append(i))
    tokens = torch.randint(0, 101, (2, 17), generator=torch.Generator().manual_seed(3))
    loss = model(tokens[:, :-1], tokens[:, 1:], loss_mask)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}, calls, model


def assert_same(a, b, tol=1e-5):
    (loss_a, grads_a, *_), (loss_b, grads_b, *_) = a, b
    assert loss_a == pytest.approx(loss_b, abs=tol)
    assert grads_a.keys() == grads_b.keys()
    for name, g in grads_a.items():
        assert g.abs().max() > 0, name
        assert (g - grads_b[name]).abs().max().item() <= tol, name


@pytest.mark.processes
def test_compiled_blocks_give_the_same_loss_and_gradients(single_process_group):
    plain = loss_and_grads()
    compiled = loss_and_grads(compile_blocks=True)
    assert compiled[3].layers[0]._compiled_call_impl is not None  # really compiled
    assert_same(plain, compiled)


@pytest.mark.processes
def test_checkpointing_selected_layers_gives_the_same_loss_and_gradients(single_process_group):
    plain = loss_and_grads()
    assert plain[2] == [0, 1]
    layer1 = loss_and_grads(checkpoint_activations=True, checkpoint_layers=[1])
    assert layer1[2] == [0, 1, 1]  # only layer 1 ran again (recomputed in backward)
    assert_same(plain, layer1)
    every = loss_and_grads(checkpoint_activations=True)
    assert every[2] == [0, 1, 1, 0]
    assert_same(plain, every)


@pytest.mark.processes
@pytest.mark.parametrize("chunk_elements", [1 << 23, 101 * 5])  # one chunk; 7 chunks of 5 tokens (last: 2)
def test_fused_head_loss_gives_the_same_loss_and_gradients(single_process_group, monkeypatch, chunk_elements):
    from neox.model import head_loss

    monkeypatch.setitem(head_loss.CHUNK_ELEMENTS, "cpu", chunk_elements)
    mask = torch.ones(2, 16)
    mask[0, :5] = 0.0  # masked tokens must not count
    unfused = loss_and_grads(loss_mask=mask, fused_head_loss=False)
    fused = loss_and_grads(loss_mask=mask)
    assert fused[3].cfg.model.fused_head_loss and not unfused[3].cfg.model.fused_head_loss
    assert_same(unfused, fused)
    assert_same(loss_and_grads(fused_head_loss=False), loss_and_grads())  # no mask: mean over tokens
    with torch.no_grad():  # evaluation: the same loss, no gradient work
        model = fused[3].eval()
        tokens = torch.randint(0, 101, (2, 17), generator=torch.Generator().manual_seed(3))
        assert model(tokens[:, :-1], tokens[:, 1:], mask).item() == pytest.approx(fused[0], abs=1e-6)


@pytest.mark.processes
def test_fused_adamw_takes_the_same_steps_as_the_for_loop_adamw(single_process_group):
    from neox.model.llama import LlamaModel
    from neox.train.engine import build_optimizer

    cfg = tiny_cfg(weight_decay=0.1)
    tokens = torch.randint(0, 101, (2, 17), generator=torch.Generator().manual_seed(3))
    trained = []
    for fused in (True, False):
        model = LlamaModel(cfg).train()
        model.init_weights(7)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = build_optimizer(cfg, model)
        assert opt.defaults["fused"] is True
        assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
        if not fused:  # the same groups and hyperparameters through torch's for-loop AdamW
            groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
            hyper = {k: opt.defaults[k] for k in ("lr", "betas", "eps")}
            opt = torch.optim.AdamW(groups, **hyper, foreach=False)
            assert not opt.param_groups[0]["fused"]
        for _ in range(3):
            model(tokens[:, :-1], tokens[:, 1:]).backward()
            opt.step()
            opt.zero_grad()
        trained.append({n: p.detach().clone() for n, p in model.named_parameters()})
    for name, p in trained[0].items():
        assert (p - start[name]).abs().max() > 1e-5, name  # every weight moved
        assert (p - trained[1][name]).abs().max().item() <= 1e-6, name


def test_flops_count_attention_over_heads_times_head_size():
    """With head_dim set apart from hidden / heads (as Gemma-style bases do), attention's scores and
    values cost 12 L (heads x head_dim) S per token, not 12 L hidden S."""
    from neox.model.flops import flops_per_token, parameter_count

    plain = tiny_cfg()
    m = plain.model
    assert flops_per_token(plain) == 6 * parameter_count(plain) + 12 * m.num_layers * m.hidden_size * m.seq_length
    wide = tiny_cfg(head_dim=2 * m.hidden_size // m.num_attention_heads)
    w = wide.model
    assert flops_per_token(wide) == (6 * parameter_count(wide)
                                     + 12 * w.num_layers * w.num_attention_heads * w.head_dim * w.seq_length)
    assert flops_per_token(wide) - 6 * parameter_count(wide) == 2 * (flops_per_token(plain) - 6 * parameter_count(plain))
