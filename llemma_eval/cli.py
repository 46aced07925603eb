#!/usr/bin/env python
"""Evaluate the Llemma way on lm-eval: MATH and GSM8k (greedy and maj@k), held-out perplexity.

    python tools/run_eval.py MODEL --tasks llemma_math,llemma_gsm8k --out DIR
        [--data-dir D] [--limit N] [--k K] [--backend hf|vllm] [--tensor-parallel-size N]
        [--device cpu|cuda] [--dtype auto|bfloat16|float32] [--batch-size B] [--max-gen-toks T]
        [--step N] [--workers W] [--timeout S]
    python tools/run_eval.py --run SAVE --every N --out DIR [--step N] [--list-pending] [same options]
    python tools/run_eval.py rescore --samples DIR [--workers W] [--timeout S]
    python tools/run_eval.py equiv PRED GOLD          (prints true/false, exits 0/1)

MODEL is a Hugging Face directory or a trainer checkpoint (exported on the fly to a temporary
directory with tools/export_hf.py; --step picks the checkpoint, default latest). Writes
DIR/results.json (per task: metric, value, n, k, seconds, all metrics), DIR/samples/<task>.jsonl
(every generation, extracted answer, correct or not) and DIR/results.md. Tasks: llemma_math,
llemma_math_majk (k=256), llemma_gsm8k, llemma_gsm8k_majk (k=100), proof_pile_2_ppl.
--run evaluates each complete checkpoint of a run not evaluated yet into DIR/step_<N>/ and
appends to DIR/run_results.{jsonl,md}.
"""

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence

from llemma_eval import runs
from llemma_eval.checker import DEFAULT_TIMEOUT, Checker
from llemma_eval.runner import TASKS, check_tasks
from neox.errors import require
from neox.paths import project_root

REPO = project_root()

DEFAULT_TASKS = "llemma_math,llemma_gsm8k"


def is_trainer_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "latest")) or any(
        n.startswith("global_step") for n in os.listdir(path))


def eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated, of {', '.join(TASKS)}")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--data-dir", help="benchmark files as downloaded (default: the HF datasets cache)")
    p.add_argument("--limit", type=int, help="first N problems/documents of each task (for testing)")
    p.add_argument("--k", type=int, help="samples per problem for the *_majk tasks (default 256 / 100)")
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm only")
    p.add_argument("--device", default="cpu", help="hf only: cpu, cuda, cuda:0")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-size", type=int, help="default: 1 (hf), auto (vllm)")
    p.add_argument("--max-gen-toks", type=int, help="override the tasks' generation length")
    p.add_argument("--step", type=int, help="checkpoint step (trainer checkpoints; with --run: only this step)")
    p.add_argument("--workers", type=int, default=4, help="answer-checker processes")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per symbolic comparison")
    p.add_argument("--seed", type=int, default=1234)


def usage_errors(args: argparse.Namespace) -> str | None:
    """The one-line complaint about bad arguments, checked before any model is loaded."""
    try:
        check_tasks(args.tasks.split(","))
    except ValueError as e:
        return f"--tasks: {e}"
    source = args.run or args.model
    if not source or not os.path.isdir(source):
        return f"{'--run' if args.run else 'MODEL'} {source!r} is not a directory"
    if args.backend == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            return "--backend vllm: vllm is not installed (pip install -e '.[eval-gpu]')"
    if args.data_dir and not os.path.isdir(args.data_dir):
        return f"--data-dir {args.data_dir!r} is not a directory"
    if args.data_dir:
        from llemma_eval.runner import missing_data

        for task in args.tasks.split(","):
            missing = missing_data(task, args.data_dir)
            if missing:
                return f"--data-dir: task {task} needs {missing}"
    if any(TASKS[t].endswith("_python") for t in args.tasks.split(",")):
        from llemma_eval.sandbox import SandboxUnavailable, run_program

        try:  # tool-use programs run only in the sandbox: refuse now if it cannot be set up here
            probe = run_program("print(6 * 7)")
        except SandboxUnavailable as e:
            return f"--tasks: tool-use tasks need the program sandbox: {e}"
        if probe.stdout.strip() != "42":
            return f"--tasks: the program sandbox does not run a trivial program here ({probe.reason})"
    if args.run and args.every < 1:
        return f"--every must be >= 1, got {args.every}"
    if args.model and not args.run and not (os.path.isfile(os.path.join(args.model, "config.json"))
                                             or is_trainer_checkpoint(args.model)):
        return f"MODEL {args.model!r} is neither a Hugging Face directory (config.json) nor a trainer checkpoint"
    return None


def evaluate_source(args: argparse.Namespace, source: str, out: str, step: int | None = None) -> dict:
    """An HF directory as it is; a trainer checkpoint exported to a temporary HF directory first."""
    from llemma_eval.runner import evaluate_model

    kwargs = dict(backend=args.backend, data_dir=args.data_dir, limit=args.limit, k=args.k,
                  batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                  tensor_parallel_size=args.tensor_parallel_size, max_gen_toks=args.max_gen_toks,
                  workers=args.workers, timeout=args.timeout, seed=args.seed)
    tasks = args.tasks.split(",")
    if os.path.isfile(os.path.join(source, "config.json")):
        return evaluate_model(source, tasks, out, **kwargs)
    from neox.interop.export_hf import export

    with tempfile.TemporaryDirectory(prefix="llemma-eval-export-") as tmp:
        export(source, os.path.join(tmp, "hf"), step=step)
        return evaluate_model(os.path.join(tmp, "hf"), tasks, out, **kwargs)


def run_checkpoints(args: argparse.Namespace) -> int:
    tasks = args.tasks.split(",")
    steps = runs.pending_steps(args.run, args.out, args.every, tasks)
    if args.step is not None:
        if args.step not in runs.complete_steps(args.run):
            print(f"error: {args.run}/global_step{args.step} is not a complete checkpoint", file=sys.stderr)
            return 1
        steps = [args.step]
    if args.list_pending:
        print("\n".join(map(str, steps)))
        return 0
    if not steps:
        print(f"nothing to evaluate: every complete checkpoint of {args.run} at a multiple of {args.every} "
              f"is in {args.out}/run_results.jsonl")
    for step in steps:
        print(f"evaluating {args.run}/global_step{step}")
        results = evaluate_source(args, args.run, os.path.join(args.out, f"step_{step}"), step=step)
        runs.append_results(args.out, step, results)
    return 0


def rescore(argv: Sequence[str]) -> int:
    import json
    import time

    from llemma_eval.runner import summarize_ppl, write_results
    from llemma_eval.scoring import read_samples, score_records, summarize, write_samples

    p = argparse.ArgumentParser(prog="run_eval.py rescore", description="Rescore samples files (CPU only).")
    p.add_argument("--samples", required=True, help="directory of <task>.jsonl samples files")
    p.add_argument("--out", help="where results.json goes (default: the parent of a 'samples' directory, "
                                 "else --samples itself)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    args = p.parse_args(argv)
    files = sorted(f for f in os.listdir(args.samples) if f.endswith(".jsonl")) if os.path.isdir(args.samples) else []
    if not files:
        print(f"error: --samples {args.samples!r}: no <task>.jsonl files", file=sys.stderr)
        return 2
    samples_dir = os.path.abspath(args.samples)
    out = args.out or (os.path.dirname(samples_dir) if os.path.basename(samples_dir) == "samples" else samples_dir)
    results_path = os.path.join(out, "results.json")
    results = json.load(open(results_path)) if os.path.isfile(results_path) else {}
    for name in files:
        task, path = name[:-len(".jsonl")], os.path.join(samples_dir, name)
        start = time.time()
        try:
            records = read_samples(path)
        except (OSError, ValueError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 1
        if records and records[0].get("kind") == "ppl":
            summary = summarize_ppl(records)
        else:
            records = score_records(records, args.workers, args.timeout, desc=task)
            write_samples(path, records)
            summary = summarize(records)
        summary["seconds"] = round(time.time() - start, 2)
        results[task] = summary
        print(f"{task}: {summary['metric']} = {summary['value']:.4f} (n={summary['n']}, k={summary['k']})")
    write_results(out, results)
    return 0


def equiv(argv: Sequence[str]) -> int:
    """Answers often start with "-" ("-\\frac{1}{2}"), which argparse would take for an option:
    every argument but --timeout S and -h is an answer."""
    p = argparse.ArgumentParser(prog="run_eval.py equiv", description="Is PRED equal to GOLD as a MATH answer? "
                                "(--protocol llemma: the Llemma paper's normalisation and SymPy check)")
    p.add_argument("pred")
    p.add_argument("gold")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    p.add_argument("--protocol", choices=["default", "llemma"], default="default")
    options, answers, rest = [], [], list(argv)
    while rest:
        arg = rest.pop(0)
        if arg in ("--timeout", "--protocol") and rest:
            options += [arg, rest.pop(0)]
        elif arg in ("-h", "--help") or arg.startswith(("--timeout=", "--protocol=")):
            options.append(arg)
        elif arg != "--":
            answers.append(arg)
    args = p.parse_args(options + ["--"] + answers)
    with Checker(args.timeout) as checker:
        if args.protocol == "llemma":
            from llemma_eval.upstream import minerva

            norm = minerva().normalize_final_answer
            same = checker.llemma_equal(norm(args.pred), norm(args.gold))
        else:
            same = checker.equal(args.pred, args.gold)
    print("true" if same else "false")
    return 0 if same else 1


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can this machine open a connection to the Hugging Face hub (HF_ENDPOINT)?"""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def offline_without_data(args: argparse.Namespace) -> None:
    """No --data-dir and no hub: the datasets library would retry for half a minute and end in a
    long ConnectionError. Use the local datasets cache only (a miss then fails in one line)."""
    if args.data_dir or os.environ.get("HF_DATASETS_OFFLINE") == "1" or hub_reachable():
        return
    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    print("warning: the Hugging Face hub is unreachable and no --data-dir was given: the benchmarks come from "
          "the local datasets cache only", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    require("evaluation", "lm_eval", "math_verify")  # the `eval` extra; one line naming it, not a traceback
    if argv and argv[0] == "rescore":
        return rescore(argv[1:])
    if argv and argv[0] == "equiv":
        return equiv(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="Hugging Face directory or trainer checkpoint")
    p.add_argument("--run", help="a training run's save directory: evaluate its complete checkpoints")
    p.add_argument("--every", type=int, default=1, help="with --run: only steps that are multiples of N")
    p.add_argument("--list-pending", action="store_true", help="with --run: print the steps to evaluate")
    eval_options(p)
    args = p.parse_args(argv)
    if bool(args.model) == bool(args.run):
        p.error("give MODEL or --run SAVE (one of them)")
    error = usage_errors(args)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from llemma_eval.data import DataError
    from llemma_eval.sandbox import SandboxUnavailable
    from neox.checkpoint.files import CheckpointError

    offline_without_data(args)
    try:
        if args.run:
            return run_checkpoints(args)
        evaluate_source(args, args.model, args.out, step=args.step)
    except (CheckpointError, DataError, SandboxUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(open(os.path.join(args.out, "results.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
