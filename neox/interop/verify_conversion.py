#!/usr/bin/env python
"""Prove a trainer checkpoint computes the same function as a Hugging Face model.

    python tools/verify_conversion.py --hf-dir DIR --ckpt DIR [--step N] [--tolerance 1e-4]

Runs the Hugging Face model (transformers, fp32) and ours (fp32, at the checkpoint's TP, one
process per rank over gloo) on the same token batch, prints the maximum absolute difference after
the embedding, after every layer and of the final logits, and ends with one line
``verify: max_abs_logit_diff=<float>``. Exit status 1 above the tolerance.

The Hugging Face model is run with the checkpoint's RoPE theta (a converter's ``--rope-theta``
changes the model on purpose; this checks the weights and layout, not that choice), and with its
weights rounded to the checkpoint's dtype (a bf16 conversion of an fp32 model holds bf16 weights
on purpose; the shift this rounding causes is printed, not counted), so one tolerance fits every
dtype. It is loaded whole, so it needs about 4 bytes per parameter of RAM.
"""

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence

import torch

from neox.checkpoint.files import (
    CheckpointError,
    checkpoint_model_info,
    config_for_checkpoint,
    load_rank,
    resolve_tag,
    tensor_parallel_size,
    weights_of,
)
from neox.launch.ports import free_port


def _ours_worker(rank, tp, port, ckpt, tag, tokens, out_path):
    """One TP rank: load its shard, run the batch, rank 0 saves layer outputs and full logits."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(tp), LOCAL_RANK=str(rank))
    from neox.launch.quiet import quiet_library_messages

    quiet_library_messages()
    from neox.launch import distributed
    from neox.model.llama import LlamaModel

    distributed.init_distributed(tp)
    state = load_rank(ckpt, tag, rank)
    cfg = config_for_checkpoint(checkpoint_model_info(ckpt, tag, state), tp)
    model = LlamaModel(cfg).eval()
    weights = weights_of(state)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(weights[name].float())
    captured = []
    scale = cfg.model.hidden_size ** 0.5 if cfg.model.scale_embeddings else 1.0  # HF's embedding module scales
    model.embed.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone() * scale))
    for layer in model.layers:
        layer.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    with torch.no_grad():
        logits = model.gather_logits(model(tokens))
    if rank == 0:
        torch.save({"hidden": captured, "logits": logits, "rope_theta": cfg.model.rotary_emb_base}, out_path)
    distributed.destroy()


def run_ours(ckpt: str, tag: str, tokens: torch.Tensor) -> dict:
    import torch.multiprocessing as mp

    tp = tensor_parallel_size(ckpt, tag)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ours.pt")
        mp.start_processes(_ours_worker, args=(tp, free_port(), ckpt, tag, tokens, out), nprocs=tp,
                           start_method="spawn")
        return torch.load(out)


@torch.no_grad()
def rounding_changes(model: torch.nn.Module, dtype: torch.dtype) -> bool:
    return any(not torch.equal(p.to(dtype).float(), p) for p in model.parameters())


@torch.no_grad()
def round_weights_(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round the weights to ``dtype``, kept in fp32."""
    for p in model.parameters():
        p.copy_(p.to(dtype).float())


def run_hf(hf_dir: str, tokens: torch.Tensor, rope_theta: float, dtype: torch.dtype = torch.float32) -> dict:
    import transformers

    config = transformers.AutoConfig.from_pretrained(hf_dir)
    if getattr(config, "rope_parameters", None) is not None:
        config.rope_parameters = {**config.rope_parameters, "rope_theta": rope_theta}
    else:
        config.rope_theta = rope_theta
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, config=config, dtype=torch.float32)
    model.eval()
    if dtype != torch.float32 and rounding_changes(model, dtype):
        with torch.no_grad():
            full = model(tokens).logits
            round_weights_(model, dtype)
            shift = (model(tokens).logits - full).abs().max().item()
        print(f"note: the checkpoint holds {str(dtype).removeprefix('torch.')} weights; compared with "
              f"the Hugging Face weights rounded to it (rounding moves its logits by {shift:.3e})")
    captured = []
    model.model.embed_tokens.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    for layer in model.model.layers:
        layer.register_forward_hook(
            lambda m, i, o: captured.append((o[0] if isinstance(o, tuple) else o).detach().clone()))
    with torch.no_grad():
        logits = model(tokens).logits
    return {"hidden": captured, "logits": logits}


def verify(hf_dir: str, ckpt: str, step: int | None = None, tolerance: float = 1e-4,
           batch: tuple[int, int] = (2, 32), seed: int = 0) -> float:
    tag = resolve_tag(ckpt, step)
    state0 = load_rank(ckpt, tag, 0)
    info = checkpoint_model_info(ckpt, tag, state0)
    vocab = int(info["vocab_size"])
    length = min(batch[1], int(info.get("max_position_embeddings") or batch[1]))
    tokens = torch.randint(0, vocab, (batch[0], length), generator=torch.Generator().manual_seed(seed))
    dtype = next(iter(weights_of(state0).values())).dtype
    ours = run_ours(ckpt, tag, tokens)
    hf = run_hf(hf_dir, tokens, ours["rope_theta"], dtype)
    names = ["embedding"] + [f"layer {i}" for i in range(len(ours["hidden"]) - 1)]
    for name, a, b in zip(names, ours["hidden"], hf["hidden"]):
        print(f"{name:>12}: max_abs_diff={(a - b).abs().max().item():.3e}")
    if ours["logits"].shape != hf["logits"].shape:
        print(f"logits shape {tuple(ours['logits'].shape)} != {tuple(hf['logits'].shape)}")
        diff = float("inf")
    else:
        diff = (ours["logits"] - hf["logits"]).abs().max().item()
    print(f"verify: max_abs_logit_diff={diff:.6e}")
    return diff


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--step", type=int, default=None, help="global step to check (default: latest)")
    p.add_argument("--tolerance", type=float, default=1e-4)
    args = p.parse_args(argv)
    try:
        diff = verify(args.hf_dir, args.ckpt, args.step, args.tolerance)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not diff <= args.tolerance:
        print(f"error: max abs logit diff {diff:.3e} exceeds tolerance {args.tolerance:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
