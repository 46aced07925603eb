#!/usr/bin/env python
"""The whole Llemma pipeline at toy scale, on CPU, with nothing downloaded.

    python tools/toy_pipeline.py [--run-dir runs/toy]

1. toy data: corpus (arxiv / open-web-math / algebraic-stack stand-ins), tokenizer, tokenized splits
2. a stand-in "Code Llama": a small random Hugging Face Llama (RoPE theta 1e6)
3. convert_codellama.py --tp 2 --rope-theta 10000 --verify  (Llemma 7B's theta change)
4. deepy.py train.py llemma_configs/smoke.yml with finetune: true from the converted checkpoint
5. export_hf.py -> a Hugging Face directory
6. transformers loads the export; held-out (test split) perplexity before and after training
7. toy benchmark files (invented problems) for tools/run_eval.py, in <run-dir>/bench

The run directory is recreated on every call (it is a demo; real runs keep their checkpoints).
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

from neox.paths import project_root

REPO = project_root()
COMPONENTS = ["arxiv", "open-web-math", "algebraic-stack"]


def run(*cmd: str) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run([sys.executable, *cmd], cwd=REPO, check=True)


def held_out_perplexity(hf_dir: str, max_docs: int = 8, max_tokens: int = 128) -> dict:
    """Token-level perplexity of a Hugging Face model on the toy test split, per component."""
    import sentencepiece as spm
    import torch
    import transformers
    import zstandard

    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    sp = spm.SentencePieceProcessor(model_file=os.path.join(hf_dir, "tokenizer.model"))
    out = {}
    for comp in COMPONENTS:
        path = os.path.join(REPO, "data", "toy", "corpus", comp, "test", "part-000.jsonl.zst")
        with open(path, "rb") as f:
            lines = zstandard.ZstdDecompressor().stream_reader(f).read().decode().splitlines()
        total, count = 0.0, 0
        for line in lines[:max_docs]:
            ids = [sp.bos_id()] + sp.encode(json.loads(line)["text"])[: max_tokens - 1]
            x = torch.tensor([ids])
            with torch.no_grad():
                loss = model(x, labels=x).loss.item()
            total += loss * (len(ids) - 1)
            count += len(ids) - 1
        out[comp] = math.exp(total / count)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/toy")
    args = p.parse_args(argv)
    d = os.path.join(REPO, args.run_dir)
    shutil.rmtree(d, ignore_errors=True)
    base, neox_ckpt, ckpts, export = (os.path.join(d, n) for n in ("codellama-hf", "codellama-neox",
                                                                   "checkpoints", "llemma-toy-hf"))
    run("-m", "neox.cli.make_toy_data")
    run("-m", "neox.cli.make_stand_in_codellama", "--out", base, "--dtype", "bf16")  # as Code Llama ships
    run("-m", "neox.interop.convert_codellama", "--hf-dir", base, "--out", neox_ckpt, "--tp", "2",
        "--rope-theta", "10000", "--dtype", "bf16", "--verify")
    run("-m", "neox.cli.deepy", "train.py", "llemma_configs/smoke.yml", "-o", f"load={neox_ckpt}",
        "-o", "finetune=true", "-o", f"save={ckpts}", "-o", f"log_dir={os.path.join(d, 'logs')}")
    run("-m", "neox.interop.export_hf", "--ckpt", ckpts, "--out", export)

    before, after = held_out_perplexity(base), held_out_perplexity(export)
    print("\nheld-out perplexity (toy test split)   before -> after training")
    for comp in COMPONENTS:
        print(f"  {comp:<18} {before[comp]:>12.1f} -> {after[comp]:.1f}")
    with open(os.path.join(d, "perplexity.json"), "w") as f:
        json.dump({"before": before, "after": after}, f, indent=1)
    bench = os.path.join(d, "bench")  # the evaluation package's step, run as its own program
    run("-m", "llemma_eval.toy_bench", bench, "--corpus", os.path.join(REPO, "data", "toy", "corpus"))
    rel = os.path.relpath(d, REPO)
    print(f"\nHugging Face model: {export}")
    print(f"evaluate it (toy benchmark files in {bench}):\n  python tools/run_eval.py {rel}/llemma-toy-hf "
          f"--data-dir {rel}/bench --tasks llemma_math,llemma_gsm8k,proof_pile_2_ppl --limit 5 --out {rel}/eval")
    return 0


if __name__ == "__main__":
    sys.exit(main())
