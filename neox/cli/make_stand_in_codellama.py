#!/usr/bin/env python
"""A small random Hugging Face Llama that stands in for Code Llama in the toy pipeline and tests.

    python tools/make_stand_in_codellama.py --out DIR [--tokenizer data/toy/tokenizer.model]

Same architecture family as Code Llama (GQA, untied head, RoPE theta 1e6, no biases), shaped like
llemma_configs/smoke.yml, with the toy SentencePiece tokenizer (and the Hugging Face tokenizer
files Code Llama ships, built from it); saved as safetensors.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch
import transformers

from neox.data.hf_tokenizer import write_hf_tokenizer
from neox.paths import project_root

REPO = project_root()


def make(out: str, tokenizer: str | None = None, layers: int = 2, hidden: int = 128, heads: int = 4,
         kv_heads: int = 2, intermediate: int = 344, vocab: int | None = None, theta: float = 1e6,
         max_positions: int = 128, seed: int = 0, dtype: str = "fp32") -> transformers.LlamaForCausalLM:
    if tokenizer:
        import sentencepiece as spm

        vocab = spm.SentencePieceProcessor(model_file=tokenizer).vocab_size()
    torch.manual_seed(seed)
    # rope_theta: a legacy key that transformers 5 accepts but leaves out of LlamaConfig's signature
    config = transformers.LlamaConfig(  # type: ignore[call-arg]
        vocab_size=vocab,  # type: ignore[arg-type]  # None only with a tokenizer, which set it above
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
        rms_norm_eps=1e-5, rope_theta=theta, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # non-trivial norm weights, so a dropped or misplaced norm shows up
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.8, 1.2)
    # transformers' wrapper of nn.Module.to is typed as taking the model, not a dtype
    model = model.to(torch.bfloat16 if dtype == "bf16" else torch.float32)  # type: ignore[arg-type]
    model.save_pretrained(out)
    if tokenizer:
        write_hf_tokenizer(tokenizer, out, max_positions)
    return model


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", default=os.path.join(REPO, "data", "toy", "tokenizer.model"))
    p.add_argument("--theta", type=float, default=1e6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = p.parse_args(argv)
    if not os.path.isfile(args.tokenizer):
        print(f"error: tokenizer not found: {args.tokenizer} (run tools/make_toy_data.py)", file=sys.stderr)
        return 1
    make(args.out, args.tokenizer, theta=args.theta, seed=args.seed, dtype=args.dtype)
    print(f"wrote stand-in Code Llama to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
