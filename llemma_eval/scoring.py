"""Scoring samples files: extracted answers, correctness, maj@k under both protocols; used by
evaluate and by rescore.

A samples file (samples/<task>.jsonl) has one record per problem:
    {"doc_id", "kind" (llemma_eval.kinds), "problem", "reference" (solution / answer field),
     "generations": [k strings],
     default protocol: "gold", "answers": [k], "correct": [k], "maj_answer", "maj_correct",
     "math_verify" (MATH kind: math-verify's verdict on the first generation),
     "llemma": {the same five fields under the Llemma protocol}}
Scoring fills everything after "generations" from the generations and the reference, so a file can
be rescored on a CPU machine in a pool of checkers (threads, each with its own checker child process).
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from llemma_eval.checker import DEFAULT_TIMEOUT, Checker, close_thread_checkers, thread_checker
from llemma_eval.kinds import PROTOCOLS, Gsm8kKind, MathKind
from llemma_eval.registry import kind
from llemma_eval.stem import McKind, OcwKind
from llemma_eval.voting import majority_vote


def score_protocol(task_kind: MathKind | Gsm8kKind | OcwKind | McKind, protocol: str, reference: str,
                   generations: list[str], checker: Checker) -> dict:
    gold = task_kind.gold(reference, protocol)
    extracted = [task_kind.extract(g, protocol) for g in generations]

    def equal(a: str | None, b: str | None) -> bool:
        return a is not None and b is not None and task_kind.equal(a, b, protocol, checker)

    correct = [equal(a, gold) for a in extracted]
    winner = majority_vote(extracted, equal, key=lambda a: task_kind.key(a, protocol))
    return {"gold": gold, "answers": extracted, "correct": correct,
            "maj_answer": None if winner is None else extracted[winner],
            "maj_correct": winner is not None and correct[winner]}


def score_record(rec: dict, timeout: float = DEFAULT_TIMEOUT) -> dict:
    """rec with both protocols' fields recomputed (default at the top level, llemma under "llemma")."""
    task_kind = kind(rec["kind"])
    checker = thread_checker(timeout)
    gens = rec["generations"]
    for protocol in PROTOCOLS:
        scored = score_protocol(task_kind, protocol, rec["reference"], gens, checker)
        if protocol == "default":
            rec.update(scored)
        else:
            rec[protocol] = scored
    if rec["kind"] == "math":  # math-verify's own verdict on the first (at k=1 the greedy) generation
        rec["math_verify"] = bool(gens) and checker.math_verify(gens[0], rec["reference"])
    return rec


def _protocol_metrics(scored: list[dict], k: int) -> dict:
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return {
        "exact_or_equiv": mean([s["correct"][0] for s in scored if s["correct"]]),  # the greedy answer at k=1
        "sample_accuracy": mean([c for s in scored for c in s["correct"]]),
        "invalid": mean([a is None for s in scored for a in s["answers"]]),  # samples with no answer found
        f"maj@{k}": mean([s["maj_correct"] for s in scored]),
    }


def summarize(records: list[dict]) -> dict:
    """Metrics of one task's scored records under each protocol; the headline metric (maj@k, at
    k=1 exact_or_equiv) is the default protocol's, the llemma protocol's is next to it."""
    n = len(records)
    k = max((len(r["generations"]) for r in records), default=0)
    headline = "exact_or_equiv" if k == 1 else f"maj@{k}"
    protocols = {}
    for protocol in PROTOCOLS:
        scored = [r if protocol == "default" else r[protocol] for r in records]
        metrics = _protocol_metrics(scored, k)
        protocols[protocol] = {"metric": headline, "value": metrics[headline], "metrics": metrics}
    metrics = dict(protocols["default"]["metrics"])
    if records and "math_verify" in records[0]:
        metrics["math_verify"] = sum(r["math_verify"] for r in records) / n
    return {"metric": headline, "value": metrics[headline], "n": n, "k": k, "protocol": "default",
            "metrics": metrics, "protocols": protocols}


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
