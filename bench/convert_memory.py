#!/usr/bin/env python
"""Peak memory and wall time of converting a >= 1B-parameter Llama to TP=2, ours vs naive.

    python bench/convert_memory.py [--work-dir DIR] [--layers 18] [--keep]

Builds a synthetic Hugging Face Llama (random bf16 weights, safetensors shards; ~1.04B parameters
by default), then measures in the same run, each in its own process (peak RSS from wait4):
  ours:  tools/convert_codellama.py --tp 2 (streams slices from memory-mapped safetensors)
  naive: LlamaForCausalLM.from_pretrained, then split every tensor with the partition table
Prints one JSON object; target: ours' peak RSS <= 1.3 x largest output shard + 300 MB.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MAKE_MODEL = r"""
import json, os, sys, torch
from safetensors.torch import save_file
out, layers, hidden, heads, kv, inter, vocab = sys.argv[1], *map(int, sys.argv[2:])
hd = hidden // heads
os.makedirs(out, exist_ok=True)
json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
           "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
           "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
           "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 1e6,
           "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
           "torch_dtype": "bfloat16"}, open(os.path.join(out, "config.json"), "w"))
g = torch.Generator().manual_seed(0)
def w(*shape):
    return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)
shards = [{"model.embed_tokens.weight": w(vocab, hidden)}]
for i in range(layers):
    p = f"model.layers.{i}."
    shards.append({p + "self_attn.q_proj.weight": w(heads * hd, hidden), p + "self_attn.k_proj.weight": w(kv * hd, hidden),
                   p + "self_attn.v_proj.weight": w(kv * hd, hidden), p + "self_attn.o_proj.weight": w(hidden, heads * hd),
                   p + "mlp.gate_proj.weight": w(inter, hidden), p + "mlp.up_proj.weight": w(inter, hidden),
                   p + "mlp.down_proj.weight": w(hidden, inter),
                   p + "input_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
                   p + "post_attention_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16)})
shards.append({"model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16), "lm_head.weight": w(vocab, hidden)})
# group into files of about 500 MB, as Hugging Face shards checkpoints
files, cur, size = [], {}, 0
for s in shards:
    cur.update(s); size += sum(t.numel() * 2 for t in s.values())
    if size > 500e6:
        files.append(cur); cur, size = {}, 0
files.append(cur)
wm = {}
for i, f in enumerate(files, 1):
    name = f"model-{i:05d}-of-{len(files):05d}.safetensors"
    save_file(f, os.path.join(out, name), metadata={"format": "pt"})
    wm.update({k: name for k in f})
json.dump({"metadata": {}, "weight_map": wm}, open(os.path.join(out, "model.safetensors.index.json"), "w"))
print(sum(t.numel() for s in shards for t in s.values()))
"""

NAIVE = r"""
import os, sys, torch, transformers
sys.path.insert(0, sys.argv[3])
from neox.model import partition
from neox.config import padded_vocab_size
from neox.model.hf_compat import shard_hf_weights
src, out, tp = sys.argv[1], sys.argv[2], 2
model = transformers.LlamaForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
hf = model.state_dict()
layers = model.config.num_hidden_layers
vocab = model.config.vocab_size
padded = padded_vocab_size(vocab, 1, tp)
os.makedirs(os.path.join(out, "global_step0"), exist_ok=True)
for rank in range(tp):
    state = shard_hf_weights(hf, partition.expected_names(layers), vocab, padded, rank, tp)
    torch.save({"module": state}, os.path.join(out, "global_step0", f"mp_rank_{rank:02d}_model_states.pt"))
"""


def measure(cmd) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"error: {' '.join(cmd[:3])} failed:\n{output[-3000:]}")
    return {"peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": time.perf_counter() - t0}


def largest_file_mb(d) -> float:
    return max(os.path.getsize(os.path.join(d, "global_step0", f)) for f in os.listdir(os.path.join(d, "global_step0"))) / 2**20


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=None)
    p.add_argument("--layers", type=int, default=18)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="convert_bench_")
    src, ours_out, naive_out = (os.path.join(work, n) for n in ("hf", "ours", "naive"))
    dims = [args.layers, 2048, 16, 16, 5504, 32000]
    try:
        r = subprocess.run([sys.executable, "-c", MAKE_MODEL, src, *map(str, dims)], check=True,
                           capture_output=True, text=True)
        params = int(r.stdout.strip().splitlines()[-1])
        ours = measure([sys.executable, "tools/convert_codellama.py", "--hf-dir", src, "--out", ours_out,
                        "--tp", "2", "--dtype", "bf16"])
        naive = measure([sys.executable, "-c", NAIVE, src, naive_out, REPO])
        shard_mb = largest_file_mb(ours_out)
        target = 1.3 * shard_mb + 300
        result = {
            "benchmark": "convert_memory", "parameters": params, "tp": 2, "dtype": "bf16",
            "input_mb": sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src)) / 2**20,
            "largest_output_shard_mb": shard_mb,
            "ours": ours, "naive_from_pretrained_then_split": naive,
            "target_peak_rss_mb": target,
            "ours_meets_target": ours["peak_rss_mb"] <= target,
            "ours_rss_over_shard": ours["peak_rss_mb"] / shard_mb,
            "naive_rss_over_ours": naive["peak_rss_mb"] / ours["peak_rss_mb"],
            "naive_time_over_ours": naive["wall_s"] / ours["wall_s"],
        }
        print(json.dumps(result, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
