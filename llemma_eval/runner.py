"""One model -> <out>/results.json, <out>/samples/<task>.jsonl and <out>/results.md.

lm-eval builds the prompts and generates (hf or vllm backend); the answers are then scored here by
llemma_eval.scoring, off the model, so rescoring the same samples gives the same numbers.
"""

import functools
import json
import logging
import math
import os
import random
import time
from typing import Any

from tqdm import tqdm

from llemma_eval import TASKS_DIR, data, stem
from llemma_eval.models import make_lm
from llemma_eval.registry import kind
from llemma_eval.scoring import score_records, summarize, write_samples
from llemma_eval.upstream_tasks import write_upstream_task_yamls

# task -> kind (llemma_eval.kinds; "ppl" is held-out perplexity); *_majk tasks sample k per problem
TASKS = {"llemma_math": "math", "llemma_math_majk": "math", "llemma_gsm8k": "gsm8k",
         "llemma_gsm8k_majk": "gsm8k", "proof_pile_2_ppl": "ppl",
         "llemma_ocw": "ocw", "llemma_ocw_majk": "ocw", "llemma_mmlu_stem": "mc", "llemma_mmlu_stem_majk": "mc",
         "llemma_sat": "mc", "llemma_sat_majk": "mc",
         "llemma_math500": "math", "llemma_math500_majk": "math", "llemma_aime": "math", "llemma_aime_majk": "math",
         "llemma_aime24": "math", "llemma_aime24_majk": "math", "llemma_aime25": "math", "llemma_aime25_majk": "math",
         "llemma_gsm8k_python": "gsm8k_python", "llemma_math_python": "math_python"}
MAJK_DEFAULT = {"llemma_math_majk": 256, "llemma_gsm8k_majk": 100, "llemma_ocw_majk": 100,
                "llemma_mmlu_stem_majk": 16, "llemma_sat_majk": 16, "llemma_math500_majk": 256,
                "llemma_aime_majk": 64, "llemma_aime24_majk": 64, "llemma_aime25_majk": 64}


def check_tasks(tasks: list[str]) -> None:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {sorted(TASKS)}")


def missing_data(task: str, data_dir: str) -> str | None:
    """What --data-dir lacks for a task (checked before any model is loaded), or None."""

    if task.removesuffix("_majk") in stem.TASK_LAYOUT:  # one kind, several file layouts
        return stem.missing_task_data(task, data_dir)
    return data.missing_data("ppl", data_dir) if TASKS[task] == "ppl" else kind(TASKS[task]).missing_data(data_dir)


@functools.lru_cache(maxsize=None)
def upstream_tasks_dir() -> str:
    """MATH-500 and AIME: lm-eval's own task files, included by YAMLs written for this machine."""
    import tempfile


    d = tempfile.mkdtemp(prefix="llemma-eval-upstream-")
    write_upstream_task_yamls(d)
    return d


def _load_tasks(tasks, data_dir, k, seed):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[TASKS_DIR, upstream_tasks_dir()], include_defaults=False,
                          metadata={"data_dir": os.path.abspath(data_dir) if data_dir else None})
    loaded = manager.load(tasks)
    for name, task in loaded["tasks"].items():
        if k is not None and name in MAJK_DEFAULT:
            from lm_eval.filters import build_filter_ensemble

            task.set_config(key="repeats", value=k)
            task._filters = [build_filter_ensemble("all-samples", [["take_first_k", {"k": k}]])]
        if hasattr(task, "set_fewshot_seed"):
            task.set_fewshot_seed(seed=seed)
    return loaded


def _generation_records(kind_name, samples, task_name):
    recs = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        gens = [g for req in s["resps"] for g in req]  # one request per doc, k generations
        problem, reference = kind(kind_name).problem_reference(s["doc"])
        recs.append({"task": task_name, "doc_id": s["doc_id"], "kind": kind_name, "problem": problem,
                     "reference": reference, "generations": gens})
    return recs


def _ppl_records(samples, tokenizer):
    recs = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        text = s["doc"]["text"]
        ll = s["resps"][0][0]
        ll = ll[0] if isinstance(ll, (list, tuple)) else ll
        recs.append({"doc_id": s["doc_id"], "kind": "ppl", "component": s["doc"]["component"],
                     "loglikelihood": float(ll), "tokens": len(tokenizer(text, add_special_tokens=False)["input_ids"]),
                     "bytes": len(text.encode("utf-8"))})
    return recs


def summarize_ppl(records: list[dict]) -> dict:
    def ppl(rs: list[dict]) -> dict[str, float]:
        ll, toks, nbytes = (sum(r[key] for r in rs) for key in ("loglikelihood", "tokens", "bytes"))
        return {"token_perplexity": math.exp(-ll / toks), "bits_per_byte": -ll / nbytes / math.log(2), "n": len(rs)}

    overall = ppl(records)
    by_comp = {c: ppl([r for r in records if r["component"] == c])
               for c in dict.fromkeys(r["component"] for r in records)}
    metrics = {"token_perplexity": overall["token_perplexity"], "bits_per_byte": overall["bits_per_byte"]}
    for comp, m in by_comp.items():
        metrics[f"{comp}/token_perplexity"] = m["token_perplexity"]
        metrics[f"{comp}/bits_per_byte"] = m["bits_per_byte"]
    return {"metric": "token_perplexity", "value": overall["token_perplexity"], "n": len(records), "k": 1,
            "metrics": metrics, "components": {c: m["n"] for c, m in by_comp.items()}}


def evaluate_model(model_dir: str, tasks: list[str], out: str, backend: str = "hf",
                   data_dir: str | None = None, limit: int | None = None, k: int | None = None,
                   batch_size: int | str | None = None, device: str = "cpu", dtype: str = "auto",
                   tensor_parallel_size: int = 1, max_gen_toks: int | None = None, workers: int = 4,
                   timeout: float = 5.0, seed: int = 1234) -> dict:
    """Evaluates model_dir on tasks; returns and writes results.json (per task: metric, value, n, k, seconds)."""
    check_tasks(tasks)
    import numpy as np
    import torch
    from lm_eval import evaluator
    from transformers import AutoTokenizer


    os.makedirs(os.path.join(out, "samples"), exist_ok=True)
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    os.environ["LLEMMA_EVAL_DEFER_SCORING"] = "1"  # scored below, off the accelerator
    # every task's data before the model: a missing file or an unreachable hub fails in seconds
    loaded = {name: _load_tasks([name], data_dir, k, seed) for name in tqdm(tasks, desc="load tasks", unit="task")}
    lm = make_lm(backend, model_dir, batch_size=batch_size, device=device, dtype=dtype,
                 tensor_parallel_size=tensor_parallel_size, seed=seed)
    results = {}
    for name in tasks:  # one task at a time: seconds per task, and finished tasks are kept
        start = time.time()
        if TASKS[name] != "ppl":
            fit_generation_budget(loaded[name]["tasks"][name], name, lm.max_length, max_gen_toks)
        raw = evaluator.evaluate(lm, loaded[name], limit=limit, log_samples=True, bootstrap_iters=0)
        samples = raw["samples"][name]
        if TASKS[name] == "ppl":
            recs = _ppl_records(samples, AutoTokenizer.from_pretrained(model_dir))
            summary = summarize_ppl(recs)
            summary["dtype"] = "float32 log-probabilities"  # models.py: logits cast before log-softmax
        else:
            recs = score_records(_generation_records(TASKS[name], samples, name), workers, timeout, desc=name)
            summary = summarize(recs)
        write_samples(os.path.join(out, "samples", f"{name}.jsonl"), recs)
        summary["seconds"] = round(time.time() - start, 2)
        results[name] = summary
        write_results(out, results)
        print(f"{name}: {format_row(name, summary)} in {summary['seconds']:.0f} s "
              f"({summary['n'] * summary['k'] / max(summary['seconds'], 1e-9):.2f} samples/s)", flush=True)
    return results


class _TruncationOncePerTask(logging.Filter):
    """lm-eval repeats "Left truncation applied" per batch: let one through per task (none when the
    clipping warning said it already)."""

    said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Left truncation applied"):
            return True
        said, self.said = self.said, True
        return not said


_truncation = _TruncationOncePerTask()
logging.getLogger("lm_eval.models.huggingface").addFilter(_truncation)


def fit_generation_budget(task: Any, name: str, context: int, requested: int | None = None) -> None:
    """The task's generation length (or --max-gen-toks), clipped with one warning line when it
    leaves the model's context no room for a prompt (a toy model of 128 positions)."""
    budget = requested_or_default = requested or task.config.generation_kwargs.get("max_gen_toks", 256)
    if budget >= context:
        clipped = max(1, context // 2)
        print(f"warning: {name}: generation length {budget} >= the model's context of {context} tokens: "
              f"generating at most {clipped}; prompts are cut to their last {context - clipped} tokens "
              "(few-shot examples lost), so the scores are not comparable to published ones", flush=True)
        budget = clipped
    _truncation.said = budget < requested_or_default
    if budget != task.config.generation_kwargs.get("max_gen_toks"):
        task.set_config(key="generation_kwargs", value={"max_gen_toks": budget}, update=True)


def write_results(out: str, results: dict, step: int | None = None) -> None:
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown_table(results) + "\n")


def format_value(result: dict) -> str:
    """Perplexity as it is, accuracies in percent (as the papers print them)."""
    return f"{result['value']:.4f}" if result["metric"] == "token_perplexity" else f"{100 * result['value']:.1f}"


def llemma_value(result: dict) -> str:
    """The Llemma protocol's score of a generation task (perplexity has one protocol)."""
    protocol = result.get("protocols", {}).get("llemma")
    return f"{100 * protocol['value']:.1f}" if protocol else ""


def format_row(task: str, r: dict) -> str:
    llemma = llemma_value(r)
    return f"{r['metric']} {format_value(r)}" + (f" (llemma protocol {llemma})" if llemma else "")


def markdown_table(results: dict) -> str:
    """One row per task: the default protocol's score and, next to it, the Llemma protocol's."""
    lines = ["| task | metric | default | llemma | n | k | seconds |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for task, r in results.items():
        lines.append(f"| {task} | {r['metric']} | {format_value(r)} | {llemma_value(r)} | {r['n']} | {r['k']} "
                     f"| {r.get('seconds', '')} |")
        for comp, n in r.get("components", {}).items():  # perplexity per Proof-Pile-2 component
            value = r["metrics"][f"{comp}/token_perplexity"]
            lines.append(f"| {task}/{comp} | token_perplexity | {value:.4f} | | {n} | 1 | |")
    return "\n".join(lines)
