"""Functions the task pack's YAMLs name (`!function llemma_eval.task_fns.X`).

The prompts are lm-eval's own: Minerva's 4-shot MATH examples and prompt format from its
minerva_math task module, and the 8-shot chain-of-thought GSM8k examples from its gsm8k-cot.yaml,
read from the installed lm-eval rather than copied here.

Under tools/run_eval.py (LLEMMA_EVAL_DEFER_SCORING=1) scoring is skipped inside lm-eval and done
afterwards by llemma_eval.scoring in a pool of checkers, so the accelerator is not held for SymPy;
with plain `lm-eval --include_path llemma_eval/tasks` the same scoring runs here.
"""

import functools
import os

import jinja2


def _defer() -> bool:
    return os.environ.get("LLEMMA_EVAL_DEFER_SCORING") == "1"


@functools.lru_cache(maxsize=None)
def upstream_yaml(relpath: str) -> dict:
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    path = os.path.join(os.path.dirname(lm_eval.tasks.__file__), relpath)
    return load_yaml(path, resolve_func=False)


def _minerva():
    from lm_eval.tasks.minerva_math import utils  # needs lm-eval[math]

    return utils


def math_fewshot() -> list[dict]:
    return _minerva().list_fewshot_samples()


def math_doc_to_text(doc: dict) -> str:
    return _minerva().doc_to_text(doc)


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
    from llemma_eval.scoring import score_record  # the default protocol, in lm-eval's process_results

    gens = [g for group in generations for g in (group if isinstance(group, list) else [group])]
    rec = score_record({"kind": kind, "reference": reference, "generations": gens})
    return {"exact_or_equiv": int(rec["correct"][0]), "maj_at_k": int(rec["maj_correct"])}


def math_results(doc: dict, results: list) -> dict:
    return _results("math", doc["solution"], results)


def gsm8k_results(doc: dict, results: list) -> dict:
    return _results("gsm8k", doc["answer"], results)
