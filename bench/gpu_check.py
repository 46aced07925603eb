#!/usr/bin/env python
"""The CUDA path checked in one prepared run on one GPU (written for an H200, 9 minutes).

    python bench/gpu_check.py --out DIR [--wheels gpu_wheels] [--only PART,...] [--budget-s 540]
    python bench/gpu_check.py --plan [--out DIR]      # CPU: every part's config built and validated

Parts, in order, each in its own process (its own session, killed with its children when its
timeout or the overall budget runs out), each writing DIR/<part>.json (schema in docs/gpu_check.md):
  setup        install deepspeed, megatron-core, lm-dataformat, zstandard from the wheel folder
               (bench/gpu_wheels.sh) when missing; versions; bf16 matmul peak (best of 10 8192^3);
               the toy data (tools/make_toy_data.py)
  correctness  our model against transformers on the same weights (fp32 logits 1e-4; bf16 within
               twice transformers' own bf16 error), also for Llama 3 (llama3 RoPE), Qwen2 (biases;
               tied head) and Mistral (head_dim); fused head loss against unfused (several 32M-
               element CUDA chunks); SDPA forced to its flash backend; flash-attn if importable
  training     the smoke config through deepy.py on 1 GPU (NCCL): loss falls, checkpoint, resume
               equal to uninterrupted (tolerance: twice the spread of two uninterrupted runs),
               SIGTERM -> checkpoint and exit 75
  throughput   a 1.35B Llama (seq 4096, vocab 32016, bf16, ZeRO-1, DP 1) through deepy.py, plain,
               with compile_blocks, with activation checkpointing; transformers and the plain loop
               of bench/train_throughput.py on the same data; tokens/s and MFU against the peak
  llemma7b     2 and 4 full-width Llemma 7B layers (TP=1, micro batch 4, checkpointing): step time
               per layer, extrapolated to 32 layers, next to Llemma's published A100 rate
  memory       max_memory_allocated of every trainer run against neox.model.planner for its config
The summary table is printed last (also DIR/summary.json). --plan runs nothing heavy and needs no
GPU: it prints every config's shapes and planner estimate, the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)
sys.path.insert(0, BENCH)

import train_throughput as tt  # noqa: E402  (its configs, data, loops and launcher are reused)

from neox.launch.local_launch import RANK_CONFIG_FLAG  # noqa: E402

PARTS = ("setup", "correctness", "training", "throughput", "llemma7b", "memory")
# the sum is above the budget on purpose: a part that finishes early leaves its time to the next
PART_TIMEOUT_S = {"setup": 75, "correctness": 80, "training": 100, "throughput": 250, "llemma7b": 130, "memory": 15}
BUDGET_S = 540  # the first H200 run (2026-12-04) took 30 + 23 + 78 + 215 + 110 + 6 s
PROBE = "bench/gpu_train_probe.py"
LAUNCH_TIMEOUT_S = 60  # one smoke-model trainer launch on the GPU machine (start-up included)
GPU_MEMORY_GIB = 139.0  # H200 as seen by torch; the planner's limit for these configs
TOY_VOCAB = 3001  # tools/make_toy_data.py's tokenizer; explicit so the plan needs no tokenizer
NEEDED = {"deepspeed": "deepspeed==0.19.8", "megatron.core": "megatron-core==0.16.1",
          "lm_dataformat": "lm-dataformat>=0.0.20", "zstandard": "zstandard>=0.22"}
# Llemma 7B: 2,100-2,400 tokens/s/GPU on A100-40GB, whose bf16 peak is taken at its nominal
# 312 TFLOP/s (no A100 to measure here); scaled to this GPU by its measured peak
LLEMMA_A100_TOKENS_PER_SEC = (2100.0, 2400.0)
A100_PEAK_TFLOPS = 312.0
LLEMMA_LAYERS = (2, 4)
LLEMMA_FULL_LAYERS = 32
TP_STEPS = {"warmup": 3, "steps": 5}  # throughput: per run
LLEMMA_STEPS = {"warmup": 2, "steps": 4}
THROUGHPUT_SHAPE = dict(num_layers=24, hidden_size=2048, num_attention_heads=16, num_kv_heads=16,
                        intermediate_size=5504, seq_length=4096, vocab_size=32016, micro_batch=4)
# explicit compile_blocks: these runs are 20 steps, which auto would run eager
THROUGHPUT_VARIANTS = {"ours": {"compile_blocks": False}, "ours_compile": {"compile_blocks": True},
                       "ours_ckpt": {"checkpoint_activations": True, "compile_blocks": False}}
TARGETS = {"ours_vs_hf": 1.3, "ours_vs_plain": 0.9, "mfu": 0.40, "planner_error": 0.15}
TRAIN_ITERS, TRAIN_CKPT = 20, 10
# the smoke model's few MB are below the allocator's workspaces (cuBLAS, the head-loss chunk):
# its planner error is recorded, the 15% check applies to the runs planned at this size or more
PLANNER_CHECK_MIN_GIB = 4.0
CORRECTNESS_DEVICE = "cuda"  # "cpu" only to try the part's code on a machine without a GPU
# training part: 20 steps, checkpoint at 10 and 20


def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


class CheckError(Exception):
    """A usage or setup problem: one line, exit status 2."""


# ----------------------------------------------------------------------------- configs (shared by --plan and the run)


def validated(flat: dict, dry_run: bool):
    from neox.config import NeoXConfig, _coerce_all, validate

    return validate(NeoXConfig.from_flat(_coerce_all(dict(flat))), dry_run=dry_run)


def correctness_flat(work: str) -> dict:
    """2 layers, GQA 8/4, vocab 32016 padded to 32128; 2 x 1024 tokens = 2 chunks of the head loss."""
    return {"num_layers": 2, "hidden_size": 256, "num_attention_heads": 8, "num_kv_heads": 4,
            "intermediate_size": 688, "seq_length": 1024, "max_position_embeddings": 1024,
            "rotary_emb_base": 10000.0, "vocab_size": 32016, "make_vocab_size_divisible_by": 128,
            "model_parallel_size": 1, "num_gpus": 1, "train_micro_batch_size_per_gpu": 2,
            "gradient_accumulation_steps": 1, "train_iters": 1, "precision": "fp32", "attention_impl": "sdpa",
            "train_data_paths": [os.path.join(work, "unused_text_document")], "gpu_memory_gib": GPU_MEMORY_GIB}


# the base models beyond Code Llama (docs/converters.md, "Base models"), from transformers' own config
# classes at the correctness part's shapes: RoPE scaling, q/k/v biases, a tied head, a head_dim apart from hidden/heads,
# QK-norms per head and full width, post-sublayer norms, Gemma 3's sliding layers, (1 + w) norms and GeGLU
FAMILY_SHAPE = dict(vocab_size=32016, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                    rms_norm_eps=1e-5, tie_word_embeddings=False, use_cache=False)
FAMILIES = {
    "llama3": ("LlamaConfig", dict(rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256})),
    "qwen2": ("Qwen2Config", dict(rope_theta=1e6)),
    "qwen2_tied": ("Qwen2Config", dict(rope_theta=1e6, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(rope_theta=1e6, head_dim=48, sliding_window=None)),
    "llama32": ("LlamaConfig", dict(rope_theta=500000.0, tie_word_embeddings=True, rope_scaling={
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256})),
    "qwen3": ("Qwen3Config", dict(rope_theta=1e6, head_dim=64, tie_word_embeddings=True)),
    "olmo2": ("Olmo2Config", dict(rope_theta=5e5)),
    # layer 0 slides over 256 of the 1,024 positions (the window matters), layer 1 attends fully
    "gemma3": ("Gemma3TextConfig", dict(head_dim=64, query_pre_attn_scalar=48, sliding_window=256,
                                        sliding_window_pattern=2, rope_parameters={
                                            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
}


def family_hf_config(family: str):
    import transformers

    cls, extra = FAMILIES[family]
    return getattr(transformers, cls)(**{**FAMILY_SHAPE, **extra})


def family_flat(work: str, family: str) -> dict:
    """The correctness config with the model keys the converter reads from that family's config."""
    from neox.model.hf_compat import neox_model_keys_from_hf

    return {**correctness_flat(work), **neox_model_keys_from_hf(family_hf_config(family))}


def training_flat(work: str, run: str, **overrides) -> dict:
    """llemma_configs/smoke.yml at TP=1 on 1 GPU, 20 steps (cosine over 20), own save/log dirs."""
    from neox.config import load_config

    d = os.path.join(work, run)
    opts = {"model_parallel_size": 1, "num_gpus": 1, "vocab_size": TOY_VOCAB, "train_iters": TRAIN_ITERS,
            "lr_decay_iters": TRAIN_ITERS, "warmup_iters": 4, "checkpoint_factor": TRAIN_CKPT,
            "eval_interval": TRAIN_ITERS, "save": os.path.join(d, "ckpt"), "log_dir": os.path.join(d, "logs"),
            # one index cache per run: runs that start together would write the same cache files
            "data_cache_dir": os.path.join(d, "index-cache"), "gpu_memory_gib": GPU_MEMORY_GIB, **overrides}
    cfg = load_config([os.path.join(REPO, "llemma_configs", "smoke.yml")], [f"{k}={v}" for k, v in opts.items()],
                      dry_run=True)
    return cfg.to_flat()


def throughput_flat(work: str, prefix: str, run: str, peak_tflops: float) -> dict:
    total = TP_STEPS["warmup"] + TP_STEPS["steps"]
    return {**tt.neox_flat(THROUGHPUT_SHAPE, total, prefix, work, peak_flops=peak_tflops * 1e12, tag=run),
            "gpu_memory_gib": GPU_MEMORY_GIB, **THROUGHPUT_VARIANTS[run]}


def llemma_shape(num_layers: int) -> dict:
    """Llemma 7B's model keys from llemma_configs/7b.yml, with num_layers layers."""
    from neox.config import load_yaml_files

    full, _ = load_yaml_files([os.path.join(REPO, "llemma_configs", "7b.yml")])
    return dict(num_layers=num_layers, hidden_size=full["hidden_size"],
                num_attention_heads=full["num_attention_heads"], num_kv_heads=full["num_kv_heads"],
                intermediate_size=full["intermediate_size"], seq_length=full["seq_length"],
                vocab_size=32016, micro_batch=full["train_micro_batch_size_per_gpu"])


def llemma_flat(work: str, prefix: str, num_layers: int, peak_tflops: float) -> dict:
    total = LLEMMA_STEPS["warmup"] + LLEMMA_STEPS["steps"]
    tag = f"llemma7b_{num_layers}layers"
    return {**tt.neox_flat(llemma_shape(num_layers), total, prefix, work, peak_flops=peak_tflops * 1e12, tag=tag),
            "checkpoint_activations": True, "gpu_memory_gib": GPU_MEMORY_GIB}


def all_configs(work: str, prefix: str, peak_tflops: float) -> dict:
    """{part: {run: flat config}}: every config the run launches or builds."""
    return {
        "correctness": {"paired_models": correctness_flat(work), "document_masking": masking_flat(work)}
        | {f"family_{f}": family_flat(work, f) for f in FAMILIES},
        "training": {run: training_flat(work, run) for run in ("uninterrupted", "uninterrupted_repeat", "resumed")}
        | {"sigterm": training_flat(work, "sigterm", train_iters=200, lr_decay_iters=200, checkpoint_factor=1000)},
        "throughput": {run: throughput_flat(work, prefix, run, peak_tflops) for run in THROUGHPUT_VARIANTS}
        | {"plain": throughput_flat(work, prefix, "ours", peak_tflops), "hf": throughput_flat(work, prefix, "ours", peak_tflops)},
        "llemma7b": {f"layers_{n}": llemma_flat(work, prefix, n, peak_tflops) for n in LLEMMA_LAYERS + (LLEMMA_FULL_LAYERS,)},
    }


def describe(flat: dict, dry_run: bool = True) -> dict:
    """Shapes, parameters, FLOPs and the planner's memory estimate of one config."""
    from neox.model.flops import flops_per_token, parameter_count
    from neox.model.planner import memory_per_gpu

    cfg = validated(flat, dry_run)
    m, b = cfg.model, cfg.batch
    return {"num_layers": m.num_layers, "hidden_size": m.hidden_size, "num_attention_heads": m.num_attention_heads,
            "num_kv_heads": m.num_kv_heads, "intermediate_size": m.intermediate_size, "seq_length": m.seq_length,
            "vocab_size": m.vocab_size, "padded_vocab_size": cfg.padded_vocab_size,
            "micro_batch": b.train_micro_batch_size_per_gpu, "gradient_accumulation_steps": b.gradient_accumulation_steps,
            "tensor_parallel": cfg.parallel.model_parallel_size, "data_parallel": cfg.data_parallel_size,
            "precision": cfg.optim.precision, "zero_stage": cfg.optim.zero_optimization.get("stage", 0),
            "checkpoint_activations": m.checkpoint_activations, "compile_blocks": m.compile_blocks,
            "tokens_per_step": b.train_batch_size * m.seq_length, "num_parameters": parameter_count(cfg),
            "flops_per_token": flops_per_token(cfg), "planner": memory_per_gpu(cfg), "warnings": list(cfg.warnings)}


def run_plan(out: str | None) -> int:
    from neox.config import ConfigError

    work = out or os.path.join(REPO, "runs", "gpu_check")
    prefix = os.path.join(work, "throughput", "data", "synthetic_text_document")
    try:
        configs = all_configs(work, prefix, peak_tflops=A100_PEAK_TFLOPS)
        described = {part: {run: {"config": flat, **describe(flat)} for run, flat in runs.items()}
                     for part, runs in configs.items()}
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for part, runs in described.items():
        for run, d in runs.items():
            p = d["planner"]
            log(f"{part:<12} {run:<22} L={d['num_layers']:<3} h={d['hidden_size']:<5} ffn={d['intermediate_size']:<6} "
                f"heads={d['num_attention_heads']}/{d['num_kv_heads']} s={d['seq_length']} b={d['micro_batch']} "
                f"V={d['padded_vocab_size']} {d['num_parameters'] / 1e9:.3f}B params, planner {p['total_gib']:.2f} GiB")
    plan = {"parts": list(PARTS), "budget_s": BUDGET_S, "part_timeout_s": PART_TIMEOUT_S, "targets": TARGETS,
            "throughput_variants": THROUGHPUT_VARIANTS, "throughput_steps": TP_STEPS, "llemma_steps": LLEMMA_STEPS,
            "llemma_layers_measured": list(LLEMMA_LAYERS), "llemma_layers_extrapolated": LLEMMA_FULL_LAYERS,
            "llemma_a100_tokens_per_sec": list(LLEMMA_A100_TOKENS_PER_SEC), "a100_peak_tflops": A100_PEAK_TFLOPS,
            "configs": described}
    print(json.dumps(plan))
    return 0


# ----------------------------------------------------------------------------- arithmetic


def extrapolate_layers(t_small: float, l_small: int, t_big: float, l_big: int, layers: int) -> dict:
    """Step time of a `layers`-layer model from two measured depths: per-layer time is the
    difference over the layer difference; the rest (embedding, head, optimizer of those) is fixed."""
    per_layer = (t_big - t_small) / (l_big - l_small)
    return {"per_layer_s": per_layer, "fixed_s": t_small - l_small * per_layer,
            "step_time_s": t_small + (layers - l_small) * per_layer}


def llemma_reference(peak_tflops: float) -> list:
    """Llemma's published tokens/s/GPU scaled from the A100's peak to this GPU's measured peak."""
    return [r * peak_tflops / A100_PEAK_TFLOPS for r in LLEMMA_A100_TOKENS_PER_SEC]


def planner_error(planned_gib: float, measured_bytes: int) -> float:
    return planned_gib * 2**30 / measured_bytes - 1.0


# ----------------------------------------------------------------------------- one part's record


class Part:
    """The JSON record of one part, saved after every change (a killed part keeps what it had)."""

    def __init__(self, name: str, out: str, deadline: float):
        self.path, self.deadline, self.t0 = os.path.join(out, f"{name}.json"), deadline, time.time()
        self.data = {"part": name, "status": "running", "started_utc": _utc(), "wall_s": 0.0, "checks": []}
        self.save()

    def set(self, **values):
        self.data.update(values)
        self.save()

    def check(self, name: str, passed: bool, value, limit=None, note: str = ""):
        self.data["checks"].append({"name": name, "passed": bool(passed), "value": value, "limit": limit, "note": note})
        log(f"  check {name}: {'ok' if passed else 'FAILED'} (value {value}, limit {limit})")
        self.save()

    def time_left(self) -> float:
        return self.deadline - time.time()

    def save(self):
        self.data["wall_s"] = round(time.time() - self.t0, 1)
        write_json(self.path, self.data)


def write_json(path: str, data: dict):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def _utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_part(out: str, name: str) -> dict:
    path = os.path.join(out, f"{name}.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- children of a part

_SESSIONS: list = []  # process groups this part started (killed when the part is stopped)


def _kill_sessions(*_):
    for proc in _SESSIONS:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    raise SystemExit(124)


def launch_trainer(flat: dict, work: str, tag: str) -> tuple:
    """`deepy.py bench/gpu_train_probe.py` in its own session; returns (Popen, log path, memory file)."""
    import yaml

    os.makedirs(work, exist_ok=True)
    cfg_path = os.path.join(work, f"{tag}.yml")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(flat, f)
    mem = os.path.join(work, f"{tag}.memory")
    log_path = os.path.join(work, f"{tag}.log")
    env = dict(os.environ, GPU_CHECK_MEMORY_FILE=mem)
    proc = subprocess.Popen([sys.executable, "deepy.py", PROBE, cfg_path], cwd=REPO, env=env,
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    _SESSIONS.append(proc)
    return proc, log_path, mem


def run_trainer(flat: dict, work: str, tag: str, timeout: float) -> dict:
    return finish_trainer(*launch_trainer(flat, work, tag), flat, tag, timeout)


def finish_trainer(proc, log_path: str, mem: str, flat: dict, tag: str, timeout: float) -> dict:
    try:
        rc = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError(f"{tag}: no exit after {timeout:.0f} s; log {log_path}")
    if rc != 0:
        raise RuntimeError(f"{tag}: exit status {rc}; log {log_path}:\n{_tail(log_path)}")
    return trainer_result(flat, log_path, mem, rc)


def trainer_result(flat: dict, log_path: str, mem: str, rc: int) -> dict:
    rows = metrics_rows(flat["log_dir"])
    steps = [r for r in rows if "step_time_s" in r]
    out = {"exit_status": rc, "log": log_path, "loss_by_step": {r["step"]: r["loss"] for r in steps},
           "step_time_s": [r["step_time_s"] for r in steps], "mfu_logged": [r["mfu"] for r in steps]}
    if os.path.isfile(mem + ".rank0"):
        with open(mem + ".rank0") as f:
            out.update(json.load(f))
    return out


def metrics_rows(log_dir: str) -> list:
    path = os.path.join(log_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _tail(path: str, n: int = 30) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


def session_pids(sid: int, needle: str) -> list:
    """Processes of session `sid` whose command line contains `needle` (no pgrep needed)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            if os.getsid(int(entry)) == sid and needle in cmd:
                pids.append(int(entry))
        except OSError:
            pass
    return pids


# ----------------------------------------------------------------------------- parts


def part_setup(p: Part, args):
    import torch

    if not torch.cuda.is_available():
        raise CheckError("no CUDA device visible")
    p.set(python=sys.version.split()[0], torch=torch.__version__, torch_cuda=torch.version.cuda,
          gpu=torch.cuda.get_device_name(0), gpu_memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30,
          capability=list(torch.cuda.get_device_capability(0)))
    missing = [mod for mod in NEEDED if importlib.util.find_spec(mod.split(".")[0]) is None
               or importlib.util.find_spec(mod) is None]
    p.set(missing_before=missing)
    if missing:
        if not os.path.isdir(args.wheels):
            raise CheckError(f"--wheels {args.wheels}: not a directory (prepare it with bench/gpu_wheels.sh)")
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", args.wheels,
               *[NEEDED[m] for m in missing]]
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode and "externally-managed-environment" in r.stdout + r.stderr:
            # a PEP 668 system Python: this machine is lent for the check, its Python may change
            log("warning: pip refused an externally managed Python; retrying with --break-system-packages")
            cmd.append("--break-system-packages")
            r = subprocess.run(cmd, capture_output=True, text=True)
        p.set(pip_command=cmd, pip_install_s=round(time.time() - t0, 1), pip_tail=(r.stdout + r.stderr)[-2000:])
        p.check("pip_install", r.returncode == 0, r.returncode, 0)
    versions = subprocess.run([sys.executable, "-c", "import json, importlib.metadata as m; print(json.dumps("
                               "{n: m.version(n) for n in ('torch', 'deepspeed', 'megatron-core', 'lm-dataformat', "
                               "'zstandard', 'transformers', 'sentencepiece', 'safetensors')}))"],
                              capture_output=True, text=True)
    installed = json.loads(versions.stdout) if versions.returncode == 0 else {"error": versions.stderr[-500:]}
    p.set(versions=installed)
    # the distribution's version has no local part ("2.11.0" for torch.__version__ "2.11.0+cu130")
    p.check("torch_unchanged", installed.get("torch") == torch.__version__.split("+")[0], installed.get("torch"),
            torch.__version__)
    p.set(flash_attn_importable=importlib.util.find_spec("flash_attn") is not None)
    torch.backends.cuda.matmul.allow_tf32 = False
    peak = tt.matmul_peak_tflops(n=8192, repeats=10)
    p.set(matmul_peak_tflops=peak, matmul_peak_note="best of 10 bf16 8192^3 matmuls (after one untimed)")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "neox.cli.make_toy_data"], cwd=REPO,  # no install needed
                       capture_output=True, text=True)
    p.set(toy_data_s=round(time.time() - t0, 1))
    p.check("toy_data", r.returncode == 0, r.returncode, 0, note=(r.stdout + r.stderr)[-500:] if r.returncode else "")


def paired_models(flat: dict, dtype, device: str, hf_config=None):
    """transformers' model (LlamaForCausalLM of the config, or the class of `hf_config`) and ours
    with the same random weights."""
    import torch
    import transformers

    from neox.model import partition
    from neox.model.hf_compat import shard_hf_weights
    from neox.model.llama import LlamaModel

    cfg = validated(flat, dry_run=True)
    m = cfg.model
    torch.manual_seed(0)
    hf = tt.hf_model(cfg) if hf_config is None else \
        transformers.AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
    with torch.no_grad():  # random norms and biases, so a misplaced or dropped one shows up
        for name, param in hf.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.5)
    weights = shard_hf_weights(hf.state_dict().__getitem__, partition.expected_names(m.num_layers, m),
                               m.vocab_size, cfg.padded_vocab_size, 0, 1)
    ours = LlamaModel(cfg)
    missing, unexpected = ours.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
    return hf.to(device, dtype).eval(), ours.to(device, dtype).eval(), cfg


def loss_and_grads(model, tokens, labels, mask):
    model.zero_grad(set_to_none=True)
    loss = model(tokens, labels, mask)
    loss.backward()
    return loss.item(), {n: q.grad.detach().clone() for n, q in model.named_parameters()}


def max_rel_grad_diff(a: dict, b: dict) -> float:
    return max(((a[n] - b[n]).abs().max() / b[n].abs().max().clamp(min=1e-30)).item() for n in b)


def part_correctness(p: Part, args):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from neox.model import head_loss

    tt.init_single_process_group()  # NCCL on CUDA
    torch.set_float32_matmul_precision("highest")  # no TF32: the 1e-4 is about fp32
    flat = correctness_flat(args.out)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, flat["vocab_size"], (2, flat["seq_length"]), generator=gen).to(CORRECTNESS_DEVICE)
    labels = torch.roll(tokens, -1, dims=1)
    mask = (torch.rand(tokens.shape, generator=gen) > 0.1).float().to(CORRECTNESS_DEVICE)
    hf, ours, cfg = paired_models(flat, torch.float32, CORRECTNESS_DEVICE)
    with torch.no_grad():
        ref = hf(tokens).logits.float()
        fp32 = (ours.gather_logits(ours(tokens)) - ref).abs().max().item()
    p.check("fp32_logits_vs_transformers", fp32 <= 1e-4, fp32, 1e-4)

    chunk_rows = max(1, head_loss.CHUNK_ELEMENTS[tokens.device.type] // cfg.padded_vocab_size)
    p.set(head_loss_chunk_rows=chunk_rows, head_loss_chunks=-(-tokens.numel() // chunk_rows))
    ours.train()
    got = {}
    for fused in (True, False):
        ours.cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, fused_head_loss=fused))
        got[fused] = loss_and_grads(ours, tokens, labels, mask)
    loss_rel = abs(got[True][0] - got[False][0]) / abs(got[False][0])
    grad_rel = max_rel_grad_diff(got[True][1], got[False][1])
    p.check("fused_head_loss_fp32_loss", loss_rel <= 1e-5, loss_rel, 1e-5, "relative")
    p.check("fused_head_loss_fp32_grads", grad_rel <= 1e-4, grad_rel, 1e-4, "max over weights of max|diff| / max|grad|")
    del hf, ours, got
    for family in FAMILIES:
        check_family(p, family, family_flat(args.out, family), tokens)

    hf16, ours16, _ = paired_models(flat, torch.bfloat16, CORRECTNESS_DEVICE)
    with torch.no_grad():
        hf_err = (hf16(tokens).logits.float() - ref).abs().max().item()
        with sdpa_kernel([SDPBackend.MATH]):
            math_logits = ours16.gather_logits(ours16(tokens)).float()
    ours_err = (math_logits - ref).abs().max().item()
    tol = 2 * hf_err
    p.set(bf16_tolerance=tol, bf16_tolerance_note="twice transformers' own bf16-vs-fp32 max logit error")
    p.check("bf16_logits_vs_transformers_fp32", ours_err <= tol, ours_err, tol)
    check_document_masking(p, masking_flat(args.out), tokens)
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # only flash: a fallback raises instead
            with torch.no_grad():
                flash_logits = ours16.gather_logits(ours16(tokens)).float()
            ours16.train()
            loss_and_grads(ours16, tokens, labels, mask)
            ours16.eval()
        diff = (flash_logits - math_logits).abs().max().item()
        p.check("sdpa_flash_backend", diff <= tol, diff, tol, "flash forward + backward ran; logits vs math backend")
    except RuntimeError as e:
        p.check("sdpa_flash_backend", False, str(e).splitlines()[0], None, "SDPA could not use its flash backend")
    if importlib.util.find_spec("flash_attn") is None:
        p.set(flash_attn="not installed")
        return
    for layer in ours16.layers:
        layer.attention.impl = "flash"
    with torch.no_grad():
        fa = ours16.gather_logits(ours16(tokens)).float()
    diff = (fa - math_logits).abs().max().item()
    p.check("flash_attn_package", diff <= tol, diff, tol, "attention_impl flash vs SDPA math backend")


def masking_flat(work: str) -> dict:
    """The correctness config with document masking (reset_attention_mask, reset_position_ids)."""
    return {**correctness_flat(work), "reset_attention_mask": True, "reset_position_ids": True}


def check_document_masking(p: Part, flat: dict, tokens):
    """Document masking on the GPU: the packed sequences (EODs planted every ~100 tokens) give, in
    fp32, the CPU's masked logits (1e-4) and, for one document, its logits alone; in bf16 the
    masked logits are within twice the same model's unmasked bf16 error; FlexAttention's gradients
    (the CUDA path) equal those through SDPA's dense mask."""
    import torch

    from neox.data.dataset import Packing, document_fields
    from neox.model.llama import LlamaModel

    cfg = validated(flat, dry_run=True)
    packed = tokens.cpu().clone()
    packed[:, 99::100] = 2  # an EOD (id 2) ends a document every 100 tokens
    fields = document_fields(packed, Packing(eod=2, attention=True, positions=True))
    model = LlamaModel(cfg).eval()
    model.init_weights(3)
    with torch.no_grad():
        cpu = model.gather_logits(model(packed, **fields))
        model.to(CORRECTNESS_DEVICE)
        gpu = model.gather_logits(model(packed, **fields)).cpu()
        plain = model.gather_logits(model(packed)).cpu()
        alone = model.gather_logits(model(packed[:1, 100:200])).cpu()
        model.to(torch.bfloat16)
        bf16 = model.gather_logits(model(packed, **fields)).float().cpu()
        plain16 = model.gather_logits(model(packed)).float().cpu()
    diff = (gpu - cpu).abs().max().item()
    p.check("document_masking_fp32_vs_cpu", diff <= 1e-4, diff, 1e-4, "masked logits, GPU vs CPU")
    doc = (gpu[0, 100:200] - alone[0]).abs().max().item()
    p.check("document_masking_document_alone", doc <= 1e-4, doc, 1e-4, "second document packed vs alone")
    tol = 2 * (plain16 - plain).abs().max().item()
    err = (bf16 - cpu).abs().max().item()
    p.check("document_masking_bf16", err <= tol, err, tol, "vs fp32; twice the unmasked bf16 error")
    model.float().train()
    grads = {}
    for flex in (True, False):  # FlexAttention's block masks (the CUDA default) against SDPA's dense mask
        model.use_flex_for_documents = flex
        model.zero_grad(set_to_none=True)
        model(packed[:, :-1], packed[:, 1:], None, fields["segment_ids"][:, :-1],
              fields["position_ids"][:, :-1]).backward()
        grads[flex] = {n: q.grad.detach().clone() for n, q in model.named_parameters()}
    rel = max_rel_grad_diff(grads[True], grads[False])
    p.check("document_masking_flex_grads", rel <= 1e-4, rel, 1e-4, "FlexAttention vs dense mask, fp32 backward")


def check_family(p: Part, family: str, flat: dict, tokens):
    """One base-model family's logits against transformers': fp32 within 1e-4, bf16 within twice
    transformers' own bf16 error."""
    import torch

    logits = {}
    for dtype in (torch.float32, torch.bfloat16):
        hf, ours, _ = paired_models(flat, dtype, CORRECTNESS_DEVICE, family_hf_config(family))
        with torch.no_grad():
            logits[dtype] = hf(tokens).logits.float(), ours.gather_logits(ours(tokens)).float()
        del hf, ours
    ref = logits[torch.float32][0]
    fp32 = (logits[torch.float32][1] - ref).abs().max().item()
    p.check(f"family_{family}_fp32_logits", fp32 <= 1e-4, fp32, 1e-4, "vs transformers, same weights")
    tol = 2 * (logits[torch.bfloat16][0] - ref).abs().max().item()
    bf16 = (logits[torch.bfloat16][1] - ref).abs().max().item()
    p.check(f"family_{family}_bf16_logits", bf16 <= tol, bf16, tol, "twice transformers' own bf16 error")


def part_training(p: Part, args):
    from neox.data.tokenizer import tokenizer_vocab_size

    work = os.path.join(args.out, "work", "training")
    shutil.rmtree(work, ignore_errors=True)
    vocab = tokenizer_vocab_size(os.path.join(REPO, "data", "toy", "tokenizer.model"))
    if vocab != TOY_VOCAB:
        raise CheckError(f"the toy tokenizer has {vocab} pieces, gpu_check.TOY_VOCAB says {TOY_VOCAB}")
    configs = all_configs(work, "unused", A100_PEAK_TFLOPS)["training"]
    limit = lambda: min(args.launch_timeout_s, p.time_left() - 5)  # noqa: E731
    # the two uninterrupted runs and the SIGTERM run share the GPU (tiny models; saves two start-ups)
    started = {name: launch_trainer(configs[name], work, name) for name in ("uninterrupted", "uninterrupted_repeat")}
    p.check("sigterm_exit_75", *sigterm_run(p, configs["sigterm"], work, args.launch_timeout_s))
    runs = {name: finish_trainer(*launched, configs[name], name, limit()) for name, launched in started.items()}
    p.set(runs=runs)
    full, repeat = runs["uninterrupted"]["loss_by_step"], runs["uninterrupted_repeat"]["loss_by_step"]
    first, last = full[1], full[TRAIN_ITERS]
    p.check("loss_falls", last < 0.9 * first, {"step_1": first, f"step_{TRAIN_ITERS}": last}, "last < 0.9 x first")
    noise = max(abs(full[s] - repeat[s]) for s in full)

    # resume: the uninterrupted run's step-10 checkpoint, continued to step 20 in a new directory
    resumed_save = configs["resumed"]["save"]
    tag = f"global_step{TRAIN_CKPT}"
    shutil.copytree(os.path.join(configs["uninterrupted"]["save"], tag), os.path.join(resumed_save, tag))
    with open(os.path.join(resumed_save, "latest"), "w") as f:
        f.write(tag)
    runs["resumed"] = run_trainer(configs["resumed"], work, "resumed", limit())
    p.set(runs=runs)
    resumed = runs["resumed"]["loss_by_step"]
    p.check("resumed_steps", sorted(resumed) == list(range(TRAIN_CKPT + 1, TRAIN_ITERS + 1)), sorted(resumed))
    diff = max(abs(resumed[s] - full[s]) for s in resumed)
    tol = max(2 * noise, 1e-6)
    p.check("resume_equals_uninterrupted", diff <= tol, diff, tol,
            f"twice the run-to-run spread of two uninterrupted runs ({noise:.3g}), at least 1e-6")
    p.set(run_to_run_loss_spread=noise)


def sigterm_run(p: Part, flat: dict, work: str, launch_timeout_s: float) -> tuple:
    """SIGTERM to the training process after step 3: checkpoint at the stop step, exit 75."""
    proc, log_path, mem = launch_trainer(flat, work, "sigterm")
    deadline = time.time() + min(launch_timeout_s, p.time_left() - 5)
    while not any(r.get("step", 0) >= 3 for r in metrics_rows(flat["log_dir"])):
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            return False, f"no step 3 (exit status {proc.poll()}); {_tail(log_path, 10)}", 75
        time.sleep(0.2)
    # the ranks themselves, as Slurm signals its tasks (deepy.py passes them the config by this flag)
    trainers = [pid for pid in session_pids(proc.pid, RANK_CONFIG_FLAG) if pid != proc.pid]
    for pid in trainers:
        os.kill(pid, signal.SIGTERM)
    try:
        rc = proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return False, "no exit after SIGTERM", 75
    result = trainer_result(flat, log_path, mem, rc)
    stopped = [r["step"] for r in metrics_rows(flat["log_dir"]) if r.get("stopped_by_signal")]
    with open(log_path, errors="replace") as f:
        text = f.read()
    checkpoint = bool(stopped) and os.path.isfile(os.path.join(flat["save"], f"global_step{stopped[0]}", "complete"))
    value = {"deepy_exit_status": rc, "trainer_processes_signalled": len(trainers), "stopped_at_step": stopped,
             "checkpoint_complete": checkpoint, "trainer_said_75": "exit status 75" in text}
    p.set(sigterm=result | value)
    # deepy's own launcher says nothing on a rank's 75 (a requested stop): its exit status is its word
    passed = len(trainers) == 1 and checkpoint and value["trainer_said_75"] and rc == 75
    return passed, value, 75


def peak_of_this_run(out: str) -> float:
    peak = read_part(out, "setup").get("matmul_peak_tflops")
    return peak if peak else tt.matmul_peak_tflops(n=8192, repeats=10)


def synthetic_data(work: str, shape: dict, steps: int) -> str:
    tt.ensure_tokenizer()
    prefix = os.path.join(work, "data", "synthetic_text_document")
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    tt.make_data(prefix, shape, steps)
    return prefix


def summarized(run: dict, warmup: int, flat: dict, peak: float) -> dict:
    from neox.model.flops import flops_per_token

    cfg = validated(flat, dry_run=True)
    tokens = cfg.batch.train_batch_size * cfg.model.seq_length
    return tt.summarize(run, warmup, tokens, flops_per_token(cfg), peak)


def part_throughput(p: Part, args):
    work = os.path.join(args.out, "work", "throughput")
    shutil.rmtree(work, ignore_errors=True)
    peak = peak_of_this_run(args.out)
    total = TP_STEPS["warmup"] + TP_STEPS["steps"]
    prefix = synthetic_data(work, THROUGHPUT_SHAPE, total)
    configs = all_configs(work, prefix, peak)["throughput"]
    p.set(matmul_peak_tflops=peak, model=describe(configs["ours"], dry_run=False), steps=TP_STEPS)
    runs = {}
    for name in list(THROUGHPUT_VARIANTS) + ["plain", "hf"]:
        if p.time_left() < 30:
            runs[name] = {"skipped": "time budget"}
            continue
        try:
            if name in THROUGHPUT_VARIANTS:
                r = run_trainer(configs[name], work, name, p.time_left() - 5)
                with open(r["log"], errors="replace") as f:
                    r["recompile_limit_hit"] = "recompile_limit" in f.read()
            else:  # bench/train_throughput.py's in-process loops, in their own processes
                r = tt.run_in_process_impl(name, configs[name], work, total, os.cpu_count() or 1)
        except RuntimeError as e:  # the other implementations still run
            runs[name] = {"error": str(e)[-3000:]}
            p.check(f"run_{name}", False, str(e).split("\n")[0], None)
            continue
        r["summary"] = summarized(r, TP_STEPS["warmup"], configs[name], peak)
        runs[name] = r
        log(f"  {name}: {r['summary']['tokens_per_sec']:,.0f} tokens/s, MFU {100 * r['summary']['mfu']:.1f}%")
        p.set(runs=runs)
    tps = {n: r["summary"]["tokens_per_sec"] for n, r in runs.items() if "summary" in r}
    ratios = {}
    trainer = {n: t for n, t in tps.items() if n in THROUGHPUT_VARIANTS}
    if trainer and "hf" in tps:
        # the trainer as a long run gets it (compile_blocks: auto compiles on CUDA); the eager ratio
        # is recorded too: on a GPU both run the same cuBLAS and flash kernels (2026-12-04: 1.04)
        best = max(trainer, key=trainer.get)
        ratios["ours_vs_hf"] = trainer[best] / tps["hf"]
        if "ours" in trainer:
            ratios["ours_eager_vs_hf"] = trainer["ours"] / tps["hf"]
        p.check("ours_vs_hf", ratios["ours_vs_hf"] >= TARGETS["ours_vs_hf"], ratios["ours_vs_hf"], TARGETS["ours_vs_hf"],
                f"best trainer variant: {best}")
    if {"ours", "plain"} <= set(tps):
        ratios["ours_vs_plain"] = tps["ours"] / tps["plain"]
        p.check("ours_vs_plain", ratios["ours_vs_plain"] >= TARGETS["ours_vs_plain"], ratios["ours_vs_plain"],
                TARGETS["ours_vs_plain"])
    mfus = {n: r["summary"]["mfu"] for n, r in runs.items() if "summary" in r and n in THROUGHPUT_VARIANTS}
    if mfus:
        best = max(mfus, key=mfus.get)
        p.check("mfu", mfus[best] >= TARGETS["mfu"], mfus[best], TARGETS["mfu"], f"best trainer variant: {best}")
    for name in ("ours_compile", "ours_ckpt"):  # same data and seed as ours: the numbers must not change
        if "summary" in runs.get(name, {}) and "summary" in runs.get("ours", {}):
            a, b = runs[name]["loss_by_step"], runs["ours"]["loss_by_step"]
            rel = max(abs(a[s] - b[s]) / abs(b[s]) for s in b if s in a)
            p.check(f"{name}_loss_vs_ours", rel <= 0.01, rel, 0.01, "relative, bf16")
    p.set(ratios=ratios, tokens_per_sec=tps, mfu={n: r["summary"]["mfu"] for n, r in runs.items() if "summary" in r})


def part_llemma7b(p: Part, args):
    work = os.path.join(args.out, "work", "llemma7b")
    shutil.rmtree(work, ignore_errors=True)
    peak = peak_of_this_run(args.out)
    total = LLEMMA_STEPS["warmup"] + LLEMMA_STEPS["steps"]
    prefix = synthetic_data(work, llemma_shape(LLEMMA_LAYERS[0]), total)
    configs = all_configs(work, prefix, peak)["llemma7b"]
    p.set(matmul_peak_tflops=peak, steps=LLEMMA_STEPS, tensor_parallel=1,
          note="TP=1 on one GPU: the TP=2 all-reduces of the real run are not in these numbers")
    runs = {}
    for n in LLEMMA_LAYERS:
        name = f"layers_{n}"
        r = run_trainer(configs[name], work, f"llemma7b_{n}layers", p.time_left() - 5)
        r["summary"] = summarized(r, LLEMMA_STEPS["warmup"], configs[name], peak)
        runs[name] = r
        p.set(runs=runs)
    (l1, l2) = LLEMMA_LAYERS
    proj = extrapolate_layers(runs[f"layers_{l1}"]["summary"]["step_time_s"], l1,
                              runs[f"layers_{l2}"]["summary"]["step_time_s"], l2, LLEMMA_FULL_LAYERS)
    full = describe(configs[f"layers_{LLEMMA_FULL_LAYERS}"])
    tps = full["tokens_per_step"] / proj["step_time_s"]
    reference = llemma_reference(peak)
    p.set(projection={**proj, "layers": LLEMMA_FULL_LAYERS, "tokens_per_sec_per_gpu": tps,
                      "mfu": tps * full["flops_per_token"] / (peak * 1e12),
                      "llemma_published_a100_tokens_per_sec": list(LLEMMA_A100_TOKENS_PER_SEC),
                      "llemma_scaled_to_this_gpu_tokens_per_sec": reference,
                      "ratio_to_scaled_published": [tps / r for r in reference],
                      "planner_full_model_tp1_gib": full["planner"]["total_gib"]})


def part_memory(p: Part, args):
    rows = []
    for part in ("training", "throughput", "llemma7b"):
        configs = all_configs(os.path.join(args.out, "work", part), "unused", A100_PEAK_TFLOPS)[part]
        for name, run in read_part(args.out, part).get("runs", {}).items():
            if "max_memory_allocated" not in run:
                continue
            plan = describe(configs[name])["planner"]
            planned = plan["total_gib"] - plan["overhead_gib"]  # the overhead is outside the allocator
            err = planner_error(planned, run["max_memory_allocated"])
            checked = plan["total_gib"] >= PLANNER_CHECK_MIN_GIB
            rows.append({"part": part, "run": name, "max_memory_allocated_gib": run["max_memory_allocated"] / 2**30,
                         "max_memory_reserved_gib": run["max_memory_reserved"] / 2**30,
                         "planner_total_gib": plan["total_gib"], "planner_without_overhead_gib": planned,
                         "planner_breakdown_gib": {k[:-4]: v for k, v in plan.items() if k.endswith("_gib")},
                         "planner_error": err, "checked": checked})
            if checked:
                p.check(f"planner_{part}_{name}", abs(err) <= TARGETS["planner_error"], err, TARGETS["planner_error"],
                        "planner (without its fixed overhead) / max_memory_allocated - 1")
    p.set(runs=rows)
    if not rows:
        p.check("memory_measured", False, 0, None, "no trainer run recorded its memory peak")


PART_FUNCS = {"setup": part_setup, "correctness": part_correctness, "training": part_training,
              "throughput": part_throughput, "llemma7b": part_llemma7b, "memory": part_memory}


def run_part_in_process(name: str, args) -> int:
    signal.signal(signal.SIGTERM, _kill_sessions)
    p = Part(name, args.out, args.deadline)
    try:
        PART_FUNCS[name](p, args)
        failed = [c["name"] for c in p.data["checks"] if not c["passed"]]
        p.set(status="failed" if failed else "passed", failed_checks=failed)
    except Exception as e:  # recorded in the part's JSON, the other parts still run
        p.set(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
    finally:
        for proc in _SESSIONS:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return 0


# ----------------------------------------------------------------------------- the orchestrator


def run_part(name: str, argv: list, out: str, timeout: float) -> dict:
    """Run one part's process (its own session) for at most `timeout` s; kill the session after."""
    t0 = time.time()
    with open(os.path.join(out, f"{name}.log"), "w") as logf:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the part kills the trainers it started
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            rc, timed_out = None, True
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its session
        except ProcessLookupError:
            pass
    data = read_part(out, name) or {"part": name, "checks": []}
    if timed_out:
        data.update(status="timeout", error=f"killed after its {timeout:.0f} s")
    elif data.get("status") in (None, "running"):
        data.update(status="error", error=f"exit status {rc} before finishing; see {name}.log")
    data["wall_s"] = round(time.time() - t0, 1)
    write_json(os.path.join(out, f"{name}.json"), data)
    return data


def headline(name: str, d: dict) -> str:
    """The part's key numbers for the summary table."""
    f = lambda x: f"{x:.3g}" if isinstance(x, float) else str(x)  # noqa: E731
    if name == "setup" and "matmul_peak_tflops" in d:
        return f"{d.get('gpu')}, torch {d.get('torch')}, peak {d['matmul_peak_tflops']:.0f} TFLOP/s"
    if name == "throughput" and d.get("ratios"):
        mfu = ", ".join(f"{n} {100 * v:.1f}%" for n, v in d.get("mfu", {}).items())
        return " ".join(f"{k} {f(v)}" for k, v in d["ratios"].items()) + f"; MFU {mfu}"
    if name == "llemma7b" and d.get("projection"):
        pr = d["projection"]
        return (f"{pr['tokens_per_sec_per_gpu']:,.0f} tokens/s/GPU at 32 layers vs "
                f"{pr['llemma_scaled_to_this_gpu_tokens_per_sec'][0]:,.0f}-"
                f"{pr['llemma_scaled_to_this_gpu_tokens_per_sec'][1]:,.0f} (published, scaled)")
    if name == "memory" and d.get("runs"):
        # the smoke runs' few MB are recorded, not checked: leave them out of the range
        errs = [r["planner_error"] for r in d["runs"] if r.get("checked")]
        if not errs:
            return f"no run large enough to check ({len(d['runs'])} recorded)"
        return (f"planner error {min(errs):+.1%} .. {max(errs):+.1%} over {len(errs)} checked runs "
                f"({len(d['runs']) - len(errs)} too small, recorded only)")
    failed = [c["name"] for c in d.get("checks", []) if not c["passed"]]
    if failed:
        return "failed: " + ", ".join(failed)
    return (d.get("error") or "").split("\n")[0][:100]


def summary_table(results: dict) -> str:
    lines = [f"{'part':<12} {'status':<8} {'wall s':>7} {'checks':>7}  key numbers"]
    for name, d in results.items():
        checks = d.get("checks", [])
        ok = sum(c["passed"] for c in checks)
        lines.append(f"{name:<12} {d.get('status', '?'):<8} {d.get('wall_s', 0):>7.1f} {ok:>3}/{len(checks):<3}  "
                     f"{headline(name, d)}")
    return "\n".join(lines)


def run_all(args) -> int:
    import torch

    if not torch.cuda.is_available():
        raise CheckError("no CUDA GPU visible; on a CPU machine run --plan")
    parts = [x.strip() for x in args.only.split(",")] if args.only else list(PARTS)
    os.makedirs(args.out, exist_ok=True)
    start, results = time.time(), {}
    for name in parts:
        left = args.budget_s - (time.time() - start)
        if left < 10:
            results[name] = {"part": name, "status": "skipped", "error": "overall time budget spent", "checks": []}
            write_json(os.path.join(args.out, f"{name}.json"), results[name])
            continue
        timeout = min(PART_TIMEOUT_S[name], left)
        log(f"gpu_check: {name} (at most {timeout:.0f} s; log {os.path.join(args.out, name + '.log')})")
        argv = [sys.executable, os.path.abspath(__file__), "--part", name, "--out", args.out,
                "--wheels", args.wheels, "--deadline", str(time.time() + timeout),
                "--launch-timeout-s", str(args.launch_timeout_s)]
        results[name] = run_part(name, argv, args.out, timeout)
        log(f"gpu_check: {name}: {results[name]['status']} in {results[name]['wall_s']:.1f} s")
    summary = {"finished_utc": _utc(), "wall_s": round(time.time() - start, 1), "budget_s": args.budget_s,
               "status": {n: d.get("status") for n, d in results.items()}}
    write_json(os.path.join(args.out, "summary.json"), summary)
    print(json.dumps(summary))
    print(summary_table(results))
    return 0 if all(d.get("status") == "passed" for d in results.values()) else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="directory for the part JSON files (and logs, and work/)")
    p.add_argument("--plan", action="store_true", help="build and validate every config, print shapes and "
                   "planner estimates; runs nothing heavy, needs no GPU")
    p.add_argument("--wheels", default=os.path.join(REPO, "gpu_wheels"), help="wheel folder from bench/gpu_wheels.sh")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help=f"overall time budget (default {BUDGET_S:g})")
    p.add_argument("--launch-timeout-s", type=float, default=LAUNCH_TIMEOUT_S,
                   help="limit of one smoke-model trainer launch in the training part (default 60)")
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.chdir(REPO)  # the configs' relative paths (llemma_configs/smoke.yml's data) are from here
    if args.plan:
        return run_plan(args.out)
    if args.part:
        return run_part_in_process(args.part, args)
    try:
        if not args.out:
            raise CheckError("--out DIR is required (or --plan)")
        bad = set(x.strip() for x in (args.only or "").split(",") if x.strip()) - set(PARTS)
        if bad:
            raise CheckError(f"--only: unknown part(s) {', '.join(sorted(bad))}; choose from {', '.join(PARTS)}")
        if args.budget_s <= 0:
            raise CheckError(f"--budget-s must be positive, got {args.budget_s:g}")
        args.out = os.path.abspath(args.out)
        return run_all(args)
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
