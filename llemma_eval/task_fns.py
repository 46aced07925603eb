"""Functions the task pack's YAMLs name (`!function llemma_eval.task_fns.X`).

The prompts are lm-eval's own: Minerva's 4-shot MATH examples and prompt format from its
minerva_math task module, and the 8-shot chain-of-thought GSM8k examples from its gsm8k-cot.yaml,
read from the installed lm-eval rather than copied here.

Under tools/run_eval.py (LLEMMA_EVAL_DEFER_SCORING=1) scoring is skipped inside lm-eval and done
afterwards by llemma_eval.scoring in a pool of checkers, so the accelerator is not held for SymPy;
with plain `lm-eval --include_path llemma_eval/tasks` the same scoring runs here.
"""

import os

import jinja2

from llemma_eval.scoring import score_record  # the default protocol, in lm-eval's process_results
from llemma_eval.upstream import minerva, upstream_yaml


def _defer() -> bool:
    return os.environ.get("LLEMMA_EVAL_DEFER_SCORING") == "1"


def math_fewshot() -> list[dict]:
    return minerva().list_fewshot_samples()


def math_doc_to_text(doc: dict) -> str:
    return minerva().doc_to_text(doc)


def gsm8k_fewshot() -> list[dict]:
    """gsm8k-cot's examples, as {question, answer-with-chain-of-thought}."""
    samples = upstream_yaml("gsm8k/gsm8k-cot.yaml")["fewshot_config"]["samples"]
    return [{"question": s["question"], "cot": s["target"]} for s in samples]


def gsm8k_doc_to_text(doc: dict) -> str:
    template = upstream_yaml("gsm8k/gsm8k-cot.yaml")["doc_to_text"]
    return jinja2.Template(template).render(question=doc["question"])


def gsm8k_doc_to_target(doc: dict) -> str:
    return doc["cot"] if "cot" in doc else doc["answer"]


def _results(kind: str, reference: str, generations: list) -> dict:
    if _defer():
        return {"exact_or_equiv": 0, "maj_at_k": 0}
    gens = [g for group in generations for g in (group if isinstance(group, list) else [group])]
    rec = score_record({"kind": kind, "reference": reference, "generations": gens})
    return {"exact_or_equiv": int(rec["correct"][0]), "maj_at_k": int(rec["maj_correct"])}


def math_results(doc: dict, results: list) -> dict:
    return _results("math", doc["solution"], results)


def gsm8k_results(doc: dict, results: list) -> dict:
    return _results("gsm8k", doc["answer"], results)


def ocw_results(doc: dict, results: list) -> dict:
    return _results("ocw", str(doc["answer"]), results)


def mc_results(doc: dict, results: list) -> dict:
    return _results("mc", doc["answer"], results)


def gsm8k_python_results(doc: dict, results: list) -> dict:
    return _results("gsm8k_python", doc["answer"], results)


def math_python_results(doc: dict, results: list) -> dict:
    return _results("math_python", doc["solution"], results)
