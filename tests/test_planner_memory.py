"""The planner's memory model against what the trainer really holds: the bytes autograd saves for
one decoder layer (counted with saved-tensor hooks, eager and compiled) and the tensors
DeepSpeed's bf16 optimizer keeps (an engine built in this process). On an H200 the same formula
came within 3% of torch.cuda.max_memory_allocated (docs/gpu_check.md)."""

import pytest
import torch
from conftest import tiny_cfg

from neox.model import planner

pytestmark = pytest.mark.processes  # every test here starts processes (docs/tests.md)

# GQA (4 query heads, 2 KV heads) and an MLP width that is no multiple of the hidden size
SHAPE = dict(num_layers=1, hidden_size=64, num_attention_heads=4, num_kv_heads=2, intermediate_size=176,
             seq_length=32, max_position_embeddings=32)


# the options of the 2025-26 bases, as their converters set them
OPTIONS = {"llama": {}, "qwen3": {"qk_norm": "per_head"}, "olmo2": {"qk_norm": "full_width", "sublayer_norms": "post"},
           "gemma3": {"qk_norm": "per_head", "sublayer_norms": "pre_and_post", "apply_layernorm_1p": True,
                      "mlp_activation": "gelu_tanh", "query_pre_attn_scalar": 24.0, "sliding_window": 8},
           # selective recomputation (Megatron's names): the attention core and the MLP's activation
           "selective": {"recompute_granularity": "selective", "recompute_modules": ["core_attn", "mlp_act"]},
           "selective_core_attn": {"recompute_granularity": "selective"}}


def saved_bytes_of_one_layer(precision: str, compile_blocks: bool, batch: int, options: dict | None = None) -> tuple:
    """(bytes autograd keeps for backward of layer 0, tokens, config): unique storages, without
    the layer's weights and the rotary tables (neither is an activation)."""
    from neox.model.llama import LlamaModel

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    cfg = tiny_cfg(**SHAPE, **(options or {}), precision=precision, compile_blocks=compile_blocks)
    model = LlamaModel(cfg).to(dtype).train()
    layer = model.layers[0]
    cos, sin = model.rotary.cos_sin(SHAPE["seq_length"], "cpu")
    not_activations = {t.untyped_storage().data_ptr() for t in [cos, sin, *model.parameters()]}
    x = torch.randn(batch, SHAPE["seq_length"], SHAPE["hidden_size"], dtype=dtype, requires_grad=True)
    if compile_blocks:
        layer(x, cos, sin).sum().backward()  # compile outside the count
    storages = {}

    def keep(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in not_activations:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out = layer(x, cos, sin)
    out.sum().backward()  # the saved tensors were really used
    return sum(storages.values()), x.shape[0] * x.shape[1], cfg


@pytest.mark.parametrize("family", sorted(OPTIONS))
@pytest.mark.parametrize("precision,compile_blocks", [("bf16", False), ("fp32", False), ("bf16", True)])
def test_layer_activation_bytes_equal_what_autograd_saves(single_process_group, precision, compile_blocks, family):
    """Per token exactly; what does not grow with the tokens (the norms' fp32 copies of their
    bf16 weights or (1 + w) gains, the [s, s] sliding-window mask) stays under 8 KB."""
    small, tokens_small, cfg = saved_bytes_of_one_layer(precision, compile_blocks, 2, OPTIONS[family])
    large, tokens_large, _ = saved_bytes_of_one_layer(precision, compile_blocks, 4, OPTIONS[family])
    per_token = planner.layer_bytes_per_token(cfg)
    assert large - small == per_token * (tokens_large - tokens_small)
    assert 0 <= small - per_token * tokens_small < 8192


def test_bf16_optimizer_holds_what_the_planner_counts(single_process_group):
    """weights bf16 2 B, fp32 gradient buffer 4 B (not the bf16 2 B the planner assumed before the
    H200 run), master + Adam 12 B per parameter at data parallel 1; the bf16 gradients are freed
    after the step."""
    from neox.model.llama import LlamaModel
    from neox.train.engine import build_engine

    cfg = tiny_cfg(precision="bf16", zero_optimization={"stage": 1})
    model = LlamaModel(cfg, dtype=torch.bfloat16).train()
    model.init_weights(1)
    engine = build_engine(cfg, model)
    tokens = torch.randint(0, 101, (2, 17), generator=torch.Generator().manual_seed(0))
    engine.backward(engine(tokens[:, :-1], tokens[:, 1:]))
    engine.step()
    opt = engine.optimizer
    nbytes = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
    mem = planner.memory_per_gpu(cfg)
    gib = planner.GIB
    assert nbytes(model.parameters()) == mem["weights_gib"] * gib
    # DeepSpeed pads its flat buffers for alignment: a few elements at most
    assert nbytes(opt.fp32_groups_gradients_flat) == pytest.approx(mem["gradients_gib"] * gib, abs=4 * 64)
    adam = [v for state in opt.optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.dim()]
    assert nbytes(opt.fp32_groups_flat_partition + adam) == pytest.approx(mem["optimizer_states_gib"] * gib,
                                                                          abs=12 * 64)
    assert all(p.grad is None for p in model.parameters())


def _two_rank_worker(rank, port, part, out_path):
    """Rank 0 of two writes what the planner is checked against: ``part`` "sp", the saved bytes per
    token of one layer with sequence parallelism at TP 2; "stage2", the ZeRO stage-2 optimizer's
    gradient tensors at DP 2."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    from neox.launch import distributed
    from neox.model.llama import LlamaModel
    from neox.train.engine import build_engine

    results = {}
    if part == "sp":
        distributed.init_distributed(2)
        for case, (precision, compiled, options) in SP_CASES.items():
            counted = [saved_bytes_sp(precision, compiled, batch, options) for batch in (2, 4)]
            cfg = counted[0][2]
            results[case] = ((counted[1][0] - counted[0][0]) / (2 * SHAPE["seq_length"]),
                             planner.layer_bytes_per_token(cfg))
    else:
        distributed.init_distributed(1)
        cfg = tiny_cfg(precision="bf16", zero_optimization={"stage": 2}, num_gpus=2, gradient_accumulation_steps=2,
                       train_micro_batch_size_per_gpu=1)
        model = LlamaModel(cfg, dtype=torch.bfloat16).train()
        model.init_weights(1)
        engine = build_engine(cfg, model)
        opt, storages = engine.optimizer, {}
        for i in range(2):  # two micro-batches of one update; the partitions are read before the step frees them
            tokens = torch.randint(0, 101, (1, 17), generator=torch.Generator().manual_seed(i))
            engine.backward(engine(tokens[:, :-1], tokens[:, 1:]))
            storages.update({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                             for grads in opt.averaged_gradients.values() for t in grads})
            engine.step()
        results = {"optimizer": type(opt).__name__, "bytes": sum(storages.values()), "mem": planner.memory_per_gpu(cfg)}
    if rank == 0:
        torch.save(results, out_path)
    distributed.destroy()


SP_CASES = {"bf16": ("bf16", False, {}), "fp32": ("fp32", False, {}), "bf16_compiled": ("bf16", True, {}),
            "gemma3_bf16": ("bf16", False, OPTIONS["gemma3"])}


def saved_bytes_sp(precision, compiled, batch, options):
    """saved_bytes_of_one_layer at TP 2 with sequence_parallel: the layer's input is this rank's
    half of the positions."""
    from neox.model.llama import LlamaModel

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    cfg = tiny_cfg(**SHAPE, **options, precision=precision, compile_blocks=compiled, model_parallel_size=2,
                   num_gpus=2, sequence_parallel=True)
    model = LlamaModel(cfg).to(dtype).train()
    layer = model.layers[0]
    cos, sin = model.rotary.cos_sin(SHAPE["seq_length"], "cpu")
    not_activations = {t.untyped_storage().data_ptr() for t in [cos, sin, *model.parameters()]}
    x = torch.randn(batch, SHAPE["seq_length"] // 2, SHAPE["hidden_size"], dtype=dtype, requires_grad=True)
    if compiled:
        layer(x, cos, sin).sum().backward()
    storages = {}

    def keep(t):
        if t.untyped_storage().data_ptr() not in not_activations:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out = layer(x, cos, sin)
    out.sum().backward()
    return sum(storages.values()), batch, cfg


def test_sequence_parallel_and_stage2_terms_equal_the_real_tensors(tmp_path):
    """Two real processes: with sequence_parallel at TP 2 the layer's saved bytes per token equal
    layer_bytes_per_token (eager bf16 and fp32, compiled, Gemma 3's norms); under ZeRO stage 2 at
    DP 2 the gradient term equals the fp32 gradient partitions DeepSpeed's ZeRO optimizer holds
    (half the model: 4 bytes x P / 2)."""
    import torch.multiprocessing as mp
    from conftest import free_port

    results = {}
    for part in ("sp", "stage2"):
        out = str(tmp_path / f"{part}.pt")
        mp.start_processes(_two_rank_worker, args=(free_port(), part, out), nprocs=2, start_method="spawn")
        results[part] = torch.load(out, weights_only=False)
    for case, (counted, planned) in results["sp"].items():
        assert counted == planned, (case, counted, planned)
    stage2 = results["stage2"]
    assert stage2["optimizer"] == "DeepSpeedZeroOptimizer"
    mem = stage2["mem"]
    assert stage2["bytes"] == pytest.approx(mem["gradients_gib"] * planner.GIB, abs=4 * 64)  # alignment padding
    assert mem["gradients_gib"] * planner.GIB == pytest.approx(4 * mem["parameters_per_gpu"] / 2)
