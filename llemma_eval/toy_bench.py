"""Tiny invented benchmark files in every --data-dir layout, for the toy pipeline and the tests.

    python -m llemma_eval.toy_bench OUT [--corpus data/toy/corpus]

The problems are generated arithmetic (not taken from any benchmark): they exercise the task
files, prompts, scoring and outputs end to end, and say nothing about a model's ability. The
held-out perplexity documents are the toy corpus's own test split, when it exists.
"""

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence

from llemma_eval.stem import MMLU_STEM_SUBJECTS

SUBJECTS = ["algebra", "geometry"]


def _problems(n: int):
    for i in range(n):
        a, b = 3 + 2 * i, 4 + i
        yield i, a, b


def write_math(root: str, n: int = 6) -> None:
    for i, a, b in _problems(n):
        d = os.path.join(root, "MATH", "test", SUBJECTS[i % len(SUBJECTS)])
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{i}.json"), "w") as f:
            json.dump({"problem": f"What is ${a}+{b}$?", "level": "Level 1", "type": SUBJECTS[i % 2].title(),
                       "solution": f"We add: ${a}+{b}=\\boxed{{{a + b}}}$."}, f)


def write_gsm8k(root: str, n: int = 6) -> None:
    os.makedirs(os.path.join(root, "gsm8k"), exist_ok=True)
    with open(os.path.join(root, "gsm8k", "test.jsonl"), "w") as f:
        for _, a, b in _problems(n):
            f.write(json.dumps({"question": f"Ann has {a} pens and buys {b} more. How many pens does she have?",
                                "answer": f"She has {a}+{b}=<<{a}+{b}={a + b}>>{a + b} pens.\n#### {a + b}"}) + "\n")


def write_proof_pile_2(root: str, corpus: str) -> None:
    """The toy corpus's test split of each component, in Proof-Pile-2's layout."""
    for comp in ("arxiv", "open-web-math", "algebraic-stack"):
        src = os.path.join(corpus, comp, "test")
        if not os.path.isdir(src):
            continue
        dst = os.path.join(root, "proof-pile-2", comp, "test")
        os.makedirs(dst, exist_ok=True)
        for name in sorted(os.listdir(src)):
            if name.endswith((".jsonl", ".jsonl.zst")):
                shutil.copy2(os.path.join(src, name), dst)


def _jsonl(path: str, rows) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def write_math500(root: str, n: int = 4) -> None:
    _jsonl(os.path.join(root, "MATH-500", "test.jsonl"),
           ({"problem": f"What is ${a} \\times {b}$?", "solution": f"Multiply: $\\boxed{{{a * b}}}$.",
             "answer": str(a * b)} for _, a, b in _problems(n)))


def write_aime(root: str, n: int = 3) -> None:
    """The three AIME files with the field names of lm-eval's three AIME tasks."""
    for name, (p, a) in {"aime": ("Question", "Answer"), "aime24": ("Problem", "Answer"),
                         "aime25": ("problem", "answer")}.items():
        _jsonl(os.path.join(root, "aime", f"{name}.jsonl"),
               ({p: f"Find the remainder when {x * 1000 + y} is divided by {x + 5}.", a: (x * 1000 + y) % (x + 5)}
                for _, x, y in _problems(n)))


def write_ocw(root: str, n: int = 4) -> None:
    _jsonl(os.path.join(root, "ocw", "test.jsonl"),
           ({"problem": f"A cart of mass {a} kg accelerates at {b} m/s^2. What net force acts on it, in newtons?",
             "solution": f"$F = ma = {a} \\cdot {b} = {a * b}$ N.", "answer": str(a * b)} for _, a, b in _problems(n)))


def _choices(a: int, b: int) -> tuple[list[str], str]:
    right, letters = a + b, "ABCD"
    options = [str(right + d) for d in (-1, 0, 2, 5)]
    return options, letters[options.index(str(right))]


def write_mmlu(root: str, per_subject: int = 1) -> None:
    """One invented question per STEM subject, in MMLU's csv layout (no header)."""
    import csv


    os.makedirs(os.path.join(root, "mmlu", "test"), exist_ok=True)
    for i, subject in enumerate(MMLU_STEM_SUBJECTS):
        with open(os.path.join(root, "mmlu", "test", f"{subject}_test.csv"), "w", newline="") as f:
            for _, a, b in list(_problems(i + per_subject))[i:]:
                options, letter = _choices(a, b)
                csv.writer(f).writerow([f"What is {a} + {b}?", *options, letter])


def write_sat(root: str, n: int = 4) -> None:
    rows = []
    for _, a, b in _problems(n):
        options, letter = _choices(a, b)
        rows.append({"question": f"If $x - {a} = {b}$, what is the value of $x$?", "options": options,
                     "answer": letter})
    _jsonl(os.path.join(root, "sat", "test.jsonl"), rows)


WRITERS = [write_math, write_gsm8k, write_math500, write_aime, write_ocw, write_mmlu, write_sat]


def write_all(root: str, corpus: str | None = None) -> str:
    for writer in WRITERS:
        writer(root)
    if corpus:
        write_proof_pile_2(root, corpus)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--corpus", default=os.path.join("data", "toy", "corpus"),
                   help="toy corpus whose test split becomes proof-pile-2/<component>/test")
    args = p.parse_args(argv)
    write_all(args.out, args.corpus if os.path.isdir(args.corpus) else None)
    print(f"toy benchmark files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
