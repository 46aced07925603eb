"""Scoring samples files: extracted answers, correctness, maj@k; used by evaluate and by rescore.

A samples file (samples/<task>.jsonl) has one record per problem:
    {"doc_id", "kind": "math"|"gsm8k", "problem", "reference" (solution / answer field),
     "gold" (extracted reference answer), "generations": [k strings],
     "answers": [k], "correct": [k], "math_verify" (first generation, MATH only), "maj_answer", "maj_correct"}
Scoring fills the last five from the generations and the reference, so a file can be rescored
on a CPU machine in a pool of checkers (threads, each with its own checker child process).
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from llemma_eval import answers as ans
from llemma_eval.checker import DEFAULT_TIMEOUT, close_thread_checkers, thread_checker
from llemma_eval.voting import majority_vote


def _gsm8k_equal(a: str, b: str) -> bool:
    return ans.normalize_number(a) == ans.normalize_number(b)


def score_record(rec: dict, timeout: float = DEFAULT_TIMEOUT) -> dict:
    """rec with answers, correct, (math_verify), maj_answer and maj_correct recomputed."""
    gens = rec["generations"]
    if rec["kind"] == "math":
        checker = thread_checker(timeout)
        gold = ans.extract_math_answer(rec["reference"])
        extracted = [ans.extract_math_answer(g) for g in gens]
        equal = checker.equal
        # math-verify's own verdict on the first (at k=1 the greedy) generation: its headline score
        rec["math_verify"] = bool(gens) and checker.math_verify(gens[0], rec["reference"])
    elif rec["kind"] == "gsm8k":
        gold = ans.gsm8k_gold(rec["reference"])
        extracted = [ans.extract_gsm8k_answer(g) for g in gens]
        equal = _gsm8k_equal
    else:
        raise ValueError(f"unknown kind {rec['kind']!r} in record {rec.get('doc_id')}")
    rec["gold"] = gold
    rec["answers"] = extracted
    rec["correct"] = [a is not None and equal(a, gold) for a in extracted]
    winner = majority_vote(extracted, equal)
    rec["maj_answer"] = None if winner is None else extracted[winner]
    rec["maj_correct"] = winner is not None and rec["correct"][winner]
    return rec


def summarize(records: list[dict]) -> dict:
    """Metrics of one task's scored records; the headline metric is maj@k (k=1: exact_or_equiv)."""
    n = len(records)
    k = max((len(r["generations"]) for r in records), default=0)
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    metrics = {
        "exact_or_equiv": mean([r["correct"][0] for r in records]),  # first sample: the greedy answer at k=1
        "sample_accuracy": mean([c for r in records for c in r["correct"]]),
        f"maj@{k}": mean([r["maj_correct"] for r in records]),
    }
    if records and "math_verify" in records[0]:
        metrics["math_verify"] = mean([r["math_verify"] for r in records])
    headline = "exact_or_equiv" if k == 1 else f"maj@{k}"
    return {"metric": headline, "value": metrics[headline], "n": n, "k": k, "metrics": metrics}


def score_records(records: list[dict], workers: int = 4, timeout: float = DEFAULT_TIMEOUT,
                  desc: str = "score") -> list[dict]:
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            return list(tqdm(pool.map(lambda r: score_record(r, timeout), records), total=len(records),
                             desc=desc, unit="problem"))
    finally:
        close_thread_checkers()


def read_samples(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_samples(path: str, records: list[dict]) -> None:
    """Atomic: a crash mid-write leaves the old file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
