"""The Llemma paper's STEM evaluations (OCW Courses, MMLU-STEM, SAT) and MATH-500 / AIME.

Kinds (llemma_eval.kinds describes what a kind is): "ocw" (Minerva's OCW Courses: numeric answers within 1% relative,
else symbolic) and "mc" (multiple choice answered by a chain of thought ending in "The final answer is
(X)"). MATH-500 and AIME are lm-eval's own tasks re-targeted at our "math" kind by
llemma_eval.upstream_tasks; their data loaders are here.

--data-dir layouts (D is --data-dir):
    D/ocw/test.jsonl                 {"problem", "answer" (final answer, LaTeX), "solution" (optional)}
    D/mmlu/test/<subject>_test.csv   MMLU's release: rows question,A,B,C,D,answer-letter, no header
    D/sat/test.jsonl                 {"question", "options" ([4] or {"A".."D"}), "answer" (letter)}
    D/MATH-500/test.jsonl            {"problem", "solution", "answer"}
    D/aime/aime.jsonl                {"Question", "Answer"}   (lm-eval aime.yaml;   any-case problem/question ok)
    D/aime/aime24.jsonl              {"Problem", "Answer"}    (lm-eval aime24.yaml)
    D/aime/aime25.jsonl              {"problem", "answer"}    (lm-eval aime25.yaml)
"""

import csv
import os
import re
from typing import Any

from llemma_eval.answers import extract_math_answer, last_boxed
from llemma_eval.checker import Checker
from llemma_eval.data import DataError, _dataset, _require, from_hub, read_jsonl
from llemma_eval.upstream import minerva as _minerva
from llemma_eval.upstream import upstream_yaml

LETTERS = "ABCD"
OCW_HUB = "open-web-math/ocwcourses"  # the dataset id the Llemma paper's lm-eval fork loaded
MMLU_HUB = "cais/mmlu"
# lm-eval's mmlu group "stem" (tag mmlu_stem_tasks in lm_eval/tasks/mmlu/default/*.yaml)
MMLU_STEM_SUBJECTS = [
    "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
    "college_computer_science", "college_mathematics", "college_physics", "computer_security",
    "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
    "high_school_chemistry", "high_school_computer_science", "high_school_mathematics",
    "high_school_physics", "high_school_statistics", "machine_learning",
]
# lm-eval task file -> our local file under D/aime/ and the fields its doc_to_text/doc_to_target use
AIME_FILES = {"aime": ("aime/aime.yaml", "Question", "Answer"),
              "aime24": ("aime/aime24.yaml", "Problem", "Answer"),
              "aime25": ("aime/aime25.yaml", "problem", "answer")}


# ---------------------------------------------------------------------------------------------- data

def _jsonl(data_dir: str, rel: str, what: str, fields: str) -> tuple[str, list[dict]]:
    path = os.path.join(data_dir, rel)
    if not os.path.isfile(path):
        raise DataError(f"{what} test set not found: {path} (--data-dir layout: D/{rel} with fields {fields})")
    return path, read_jsonl(path)


def ocw_rows(data_dir: str) -> list[dict]:
    path, rows = _jsonl(data_dir, "ocw/test.jsonl", "OCW Courses", "problem, answer, solution (optional)")
    return [{"problem": r["problem"], "answer": str(r["answer"]), "solution": r.get("solution") or ""}
            for r in (_require(r, ("problem", "answer"), path) for r in rows)]


def ocw_test(data_dir: str | None = None, **_: Any) -> Any:
    if data_dir:
        return _dataset(ocw_rows(data_dir), os.path.join(data_dir, "ocw", "test.jsonl"))
    import datasets

    ds = from_hub("ocw/test.jsonl (fields problem, answer, solution)", OCW_HUB, split="test")
    return datasets.DatasetDict({"test": ds})


def _letter(value, path: str) -> str:
    s = str(value).strip().strip("()").strip().upper()
    if s.isdigit() and 0 <= int(s) < 4:
        return LETTERS[int(s)]
    if s not in LETTERS or len(s) != 1:
        raise DataError(f"{path}: answer {value!r} is not one of A, B, C, D")
    return s


def mmlu_stem_rows(data_dir: str) -> list[dict]:
    rows = []
    for subject in MMLU_STEM_SUBJECTS:
        path = os.path.join(data_dir, "mmlu", "test", f"{subject}_test.csv")
        if not os.path.isfile(path):
            raise DataError(f"MMLU-STEM: {path} not found (--data-dir layout: D/mmlu/test/<subject>_test.csv, "
                            f"MMLU's release, for the {len(MMLU_STEM_SUBJECTS)} STEM subjects)")
        with open(path, newline="", encoding="utf-8") as f:
            for n, rec in enumerate(csv.reader(f), 1):
                if len(rec) != 6:
                    raise DataError(f"{path}:{n}: expected 6 columns (question,A,B,C,D,answer), got {len(rec)}")
                rows.append({"question": rec[0], "choices": rec[1:5], "answer": _letter(rec[5], f"{path}:{n}"),
                             "subject": subject})
    return rows


def mmlu_stem_test(data_dir: str | None = None, **_: Any) -> Any:
    if data_dir:
        return _dataset(mmlu_stem_rows(data_dir), os.path.join(data_dir, "mmlu", "test"))

    parts = [from_hub("mmlu/test/<subject>_test.csv", MMLU_HUB, s, split="test") for s in MMLU_STEM_SUBJECTS]
    rows = [{"question": d["question"], "choices": list(d["choices"]), "answer": LETTERS[int(d["answer"])],
             "subject": d["subject"]} for part in parts for d in part]
    return _dataset(rows, MMLU_HUB)


def sat_rows(data_dir: str) -> list[dict]:
    path, rows = _jsonl(data_dir, "sat/test.jsonl", "SAT", "question, options, answer")
    out = []
    for i, r in enumerate(rows):
        _require(r, ("question", "options", "answer"), path)
        opts = r["options"]
        if isinstance(opts, dict):
            if sorted(opts) != list(LETTERS):
                raise DataError(f"{path}: record {i}: options must have keys A, B, C, D, got {sorted(opts)}")
            opts = [opts[k] for k in LETTERS]
        if not isinstance(opts, list) or len(opts) != 4:
            raise DataError(f"{path}: record {i}: options must be 4 strings (list or dict A-D)")
        out.append({"question": r["question"], "choices": [str(o) for o in opts],
                    "answer": _letter(r["answer"], f"{path}: record {i}"), "subject": "sat"})
    return out


def sat_test(data_dir: str | None = None, **_: Any) -> Any:
    if not data_dir:
        raise DataError("SAT: no hub dataset is known; pass --data-dir D with D/sat/test.jsonl "
                        "(fields question, options, answer)")
    return _dataset(sat_rows(data_dir), os.path.join(data_dir, "sat", "test.jsonl"))


def math500_test(data_dir: str | None = None, **_: Any) -> Any:
    if data_dir:
        path, rows = _jsonl(data_dir, "MATH-500/test.jsonl", "MATH-500", "problem, solution, answer")
        return _dataset([_require(r, ("problem", "solution", "answer"), path) for r in rows], path)
    import datasets

    cfg = upstream_yaml("minerva_math/minerva_math500.yaml")
    ds = from_hub("MATH-500/test.jsonl (fields problem, solution, answer)", cfg["dataset_path"], split=cfg["test_split"])
    return datasets.DatasetDict({"test": ds})


def _aime_doc(row: dict, problem_key: str, answer_key: str, where: str) -> dict:
    """The upstream task's fields, plus "problem" and "solution" = \\boxed{answer} for the "math" kind."""
    lower = {k.lower(): k for k in row}
    src_p = problem_key if problem_key in row else lower.get("problem") or lower.get("question")
    src_a = answer_key if answer_key in row else lower.get("answer")
    if src_p is None or src_a is None:
        raise DataError(f"{where}: record lacks field(s) {[problem_key] if src_p is None else []}"
                        f"{[answer_key] if src_a is None else []}")
    answer = str(row[src_a]).strip()
    return {problem_key: row[src_p], answer_key: answer, "problem": row[src_p], "solution": f"\\boxed{{{answer}}}"}


def _aime(name: str, data_dir: str | None):
    upstream, pkey, akey = AIME_FILES[name]
    if data_dir:
        path, rows = _jsonl(data_dir, f"aime/{name}.jsonl", "AIME", f"{pkey}, {akey}")
        return _dataset([_aime_doc(r, pkey, akey, path) for r in rows], path)
    cfg = upstream_yaml(upstream)
    ds = from_hub(f"aime/{name}.jsonl (fields {pkey}, {akey})", cfg["dataset_path"], split=cfg["test_split"])
    return _dataset([_aime_doc(r, pkey, akey, cfg["dataset_path"]) for r in ds], cfg["dataset_path"])


def aime_test(data_dir: str | None = None, **_: Any) -> Any:
    return _aime("aime", data_dir)


def aime24_test(data_dir: str | None = None, **_: Any) -> Any:
    return _aime("aime24", data_dir)


def aime25_test(data_dir: str | None = None, **_: Any) -> Any:
    return _aime("aime25", data_dir)


_LAYOUT = {"ocw": ("ocw/test.jsonl",), "mc_mmlu": tuple(f"mmlu/test/{s}_test.csv" for s in MMLU_STEM_SUBJECTS),
           "mc_sat": ("sat/test.jsonl",), "math500": ("MATH-500/test.jsonl",),
           **{n: (f"aime/{n}.jsonl",) for n in AIME_FILES}}
TASK_LAYOUT = {"llemma_ocw": "ocw", "llemma_mmlu_stem": "mc_mmlu", "llemma_sat": "mc_sat",
               "llemma_math500": "math500", "llemma_aime": "aime", "llemma_aime24": "aime24", "llemma_aime25": "aime25"}


def missing_task_data(task: str, data_dir: str) -> str | None:
    """What --data-dir lacks for one of this module's tasks (with or without _majk), or None."""
    layout = _LAYOUT[TASK_LAYOUT[task.removesuffix("_majk")]]
    missing = [rel for rel in layout if not os.path.isfile(os.path.join(data_dir, rel))]
    if not missing:
        return None
    if len(layout) > 1:
        return f"{data_dir}/mmlu/test/<subject>_test.csv for {', '.join(os.path.basename(m) for m in missing)}"
    return f"{data_dir}/{missing[0]}"


# ------------------------------------------------------------------------------------------- prompts
# Our own exemplars (invented for this package), in Minerva's "Problem:/Solution:" format.

OCW_FEWSHOT = [
    {"problem": "A photon has a wavelength of $500 \\mathrm{~nm}$. Using $h = 6.63\\times10^{-34}\\mathrm{~J\\,s}$ "
                "and $c = 3.00\\times10^{8}\\mathrm{~m/s}$, what is its energy in joules?",
     "solution": "The energy of a photon is $E = hc/\\lambda = \\frac{(6.63\\times10^{-34})(3.00\\times10^{8})}"
                 "{5.00\\times10^{-7}} = \\boxed{3.98\\times10^{-19}}$ J.\n"
                 "Final Answer: The final answer is $3.98\\times10^{-19}$. I hope it is correct."},
    {"problem": "How many liters does $2.00$ mol of an ideal gas occupy at $300 \\mathrm{~K}$ and "
                "$1.00 \\mathrm{~atm}$? Take $R = 0.0821 \\mathrm{~L\\,atm/(mol\\,K)}$.",
     "solution": "From the ideal gas law, $V = nRT/P = (2.00)(0.0821)(300)/(1.00) = 49.26$, so the gas occupies "
                 "$\\boxed{49.3}$ L.\nFinal Answer: The final answer is $49.3$. I hope it is correct."},
    {"problem": "Resistors of $6 \\Omega$ and $3 \\Omega$ are connected in parallel across an ideal $12$ V source. "
                "What current, in amperes, does the source deliver?",
     "solution": "The parallel combination is $\\frac{6 \\cdot 3}{6+3} = 2 \\Omega$, so by Ohm's law the current "
                 "is $12/2 = \\boxed{6}$ A.\nFinal Answer: The final answer is $6$. I hope it is correct."},
    {"problem": "Solve $\\dot{x} + 3x = 0$ with the initial condition $x(0) = 2$. Give $x(t)$.",
     "solution": "The equation is first order and linear with characteristic root $-3$, so $x(t) = Ae^{-3t}$; "
                 "the initial condition gives $A = 2$, hence $x(t) = \\boxed{2e^{-3t}}$.\n"
                 "Final Answer: The final answer is $2e^{-3t}$. I hope it is correct."},
]

MC_FEWSHOT = [
    {"question": "What is the slope of the tangent line to $y = x^3$ at $x = 2$?",
     "choices": ["6", "8", "12", "24"], "answer": "C",
     "solution": "The derivative is $3x^2$, which equals $3 \\cdot 4 = 12$ at $x = 2$.\n"
                 "Final Answer: The final answer is (C). I hope it is correct."},
    {"question": "A cart starts from rest and reaches $20$ m/s after $5$ s of uniform acceleration. "
                 "What is its acceleration?",
     "choices": ["2 m/s^2", "4 m/s^2", "5 m/s^2", "100 m/s^2"], "answer": "B",
     "solution": "Acceleration is the change in velocity over time: $20/5 = 4$ m/s$^2$.\n"
                 "Final Answer: The final answer is (B). I hope it is correct."},
    {"question": "What is the pH of a $0.001$ M solution of a strong monoprotic acid?",
     "choices": ["3", "2", "1", "11"], "answer": "A",
     "solution": "A strong acid dissociates fully, so $[H^+] = 10^{-3}$ M and pH $= -\\log_{10} 10^{-3} = 3$.\n"
                 "Final Answer: The final answer is (A). I hope it is correct."},
    {"question": "How many edges does a tree with $10$ vertices have?",
     "choices": ["8", "10", "11", "9"], "answer": "D",
     "solution": "A tree on $n$ vertices has exactly $n - 1$ edges, here $9$.\n"
                 "Final Answer: The final answer is (D). I hope it is correct."},
]


def ocw_fewshot() -> list[dict]:
    return [dict(d) for d in OCW_FEWSHOT]


def ocw_doc_to_text(doc: dict) -> str:
    return _minerva().doc_to_text(doc)


def mc_fewshot() -> list[dict]:
    return [dict(d, subject="fewshot") for d in MC_FEWSHOT]


def mc_problem(doc: dict) -> str:
    choices = " ".join(f"({letter}) {c}" for letter, c in zip(LETTERS, doc["choices"]))
    return f"{doc['question'].strip()}\nAnswer Choices: {choices}"


def mc_doc_to_text(doc: dict) -> str:
    return f"Problem:\n{mc_problem(doc)}\nSolution:"


def mc_doc_to_target(doc: dict) -> str:
    return doc.get("solution") or f"Final Answer: The final answer is ({doc['answer']}). I hope it is correct."


# --------------------------------------------------------------------------------------------- kinds


def _top_level_rhs(s: str) -> tuple[str, bool]:
    """(right-hand side of the last "=" outside braces, whether there was one)."""
    depth, cut = 0, None
    for i, ch in enumerate(s):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "=" and depth == 0:
            cut = i
    return (s, False) if cut is None else (s[cut + 1:], True)


_MANTISSA = r"[+-]?(?:\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d+(?:\.\d*)?|\.\d+)"
_EXP10 = r"(?:\\times|\\cdot|\*|×|x)\s*10\s*\^\s*(?:\{\s*([+-]?\d+)\s*\}|([+-]?\d))"
_NUMBER = re.compile(r"(?:(?P<p>10)\s*\^\s*(?:\{\s*(?P<pe>[+-]?\d+)\s*\}|(?P<pe1>[+-]?\d))"
                     rf"|(?P<m>{_MANTISSA})(?:\s*[eE]\s*(?P<e>[+-]?\d+)|\s*{_EXP10})?"
                     r"|(?P<fs>-?)\\frac\s*\{\s*(?P<fn>[+-]?\d+(?:\.\d+)?)\s*\}\s*\{\s*(?P<fd>[+-]?\d+(?:\.\d+)?)\s*\})")
_UNIT_TOKEN = re.compile(r"\s+|\\(?:mathrm|text|mbox|rm|operatorname|textrm)\s*\{[^{}]*\}|\\(?:mu|Omega|AA|circ|rm)"
                         r"(?![A-Za-z])|[A-Za-z]+|\^\s*(?:\{\s*-?\d+\s*\}|-?\d)|\^\s*\{?\\circ\}?|[/*·().%]|\\%|\\cdot")
_KNOWN_UNIT = re.compile(r"(?:[kMGTmunpcdμ]?(?:m|g|s|A|K|mol|N|J|W|Pa|C|V|F|T|Hz|eV|L|l|atm|bar|erg|yr|pc|AU|ly|dyn"
                         r"|cal|Bq|rad|sr|Wb|H|S|G|ohm|Ohm|b)|years?|days?|hours?|h|min|sec|seconds?|minutes?|meters?"
                         r"|grams?|moles?|kelvin|joules?|watts?|volts?|amps?|degrees?|percent|eV)")
_UNIT_START = re.compile(r"\s|\\(?:mathrm|text|mbox|rm|operatorname|textrm|mu|Omega|AA|%)|%|\^\s*\{?\\circ")


def _clean(s: str) -> str:
    inner = last_boxed(s)
    s = inner if inner is not None else s
    s = s.replace("$", "").replace("−", "-").replace("{,}", "")
    s = re.sub(r"\\(?:left|right|displaystyle)(?![A-Za-z])|\\!", "", s)
    s = re.sub(r"\\[,;: ]|~", " ", s)
    s = s.replace("\\approx", "=").replace("\\simeq", "=")
    return s.strip().rstrip(".").strip()


def ocw_number(text: str | None, strict: bool = True) -> float | None:
    """The value of an answer that is a number, with optional scientific notation and units; else None.

    strict (deciding a gold answer's type): units must be set off ("5 m", "5\\,\\mathrm{m}") and bare words
    must be known units (so "2 x" is an expression); not strict
    (a prediction, possibly Minerva-normalised with spaces removed): "5m" counts as 5.
    """
    if text is None:
        return None
    s, _ = _top_level_rhs(_clean(text))
    s = s.strip()
    m = _NUMBER.match(s)
    if not m:
        return None
    try:
        if m.group("m") is not None:
            value = float(m.group("m").replace(",", ""))
            exp = m.group("e") or m.group(5) or m.group(6)
            value = value * 10.0 ** int(exp) if exp else value
        elif m.group("p") is not None:
            value = 10.0 ** int(m.group("pe") or m.group("pe1"))
        else:
            value = float(m.group("fn")) / float(m.group("fd"))
            value = -value if m.group("fs") else value
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    rest = s[m.end():]
    if not rest.strip():
        return value
    if strict and not _UNIT_START.match(rest):
        return None
    pos = 0
    while pos < len(rest):
        t = _UNIT_TOKEN.match(rest, pos)
        if not t or t.end() == pos:
            return None
        if strict and t.group().isalpha() and not _KNOWN_UNIT.fullmatch(t.group()):
            return None  # a bare word that is no unit ("2 x", "\\frac{1}{2} m v^2"): not a number
        pos = t.end()
    return value


def numeric_close(pred: float, gold: float, rel: float = 0.01) -> bool:
    """Minerva's OCW rule: within 1% of the reference (relative to the reference)."""
    return abs(pred - gold) <= rel * abs(gold) * (1 + 1e-9)


def ocw_answer_type(gold: str) -> str:
    if ocw_number(gold, strict=True) is not None:
        return "numeric"
    return "equation" if _top_level_rhs(_clean(gold))[1] else "expression"


class OcwKind:
    """Minerva's OCW Courses: numeric answers within 1% relative, equations by their right-hand sides,
    other expressions symbolically (checker.equal, or checker.llemma_equal under protocol llemma)."""

    name = "ocw"

    def problem_reference(self, doc: dict) -> tuple[str, str]:
        return doc["problem"], str(doc["answer"])

    def gold(self, reference: str, protocol: str) -> str | None:
        return reference.strip() or None

    def extract(self, generation: str, protocol: str) -> str | None:
        if protocol == "llemma":
            utils = _minerva()
            raw = utils.get_unnormalized_answer(generation)
            return None if raw == "[invalidanswer]" else utils.normalize_final_answer(raw)
        return extract_math_answer(generation)

    def equal(self, pred: str, gold: str, protocol: str, checker: Checker) -> bool:
        if pred is None or gold is None:
            return False
        kind = ocw_answer_type(gold)
        if kind == "numeric":
            p = ocw_number(pred, strict=False)
            if p is None:
                return False
            g = ocw_number(gold)
            assert g is not None, "a numeric gold is a number"
            return numeric_close(p, g)
        if kind == "equation":
            pred, gold = _top_level_rhs(_clean(pred))[0], _top_level_rhs(_clean(gold))[0]
        compare = checker.llemma_equal if protocol == "llemma" else checker.equal
        return bool(compare(pred, gold))

    def key(self, answer: str, protocol: str) -> str:
        """Identical keys are one vote: the answer without $, spacing and \\boxed (llemma: as extracted)."""
        return answer if protocol == "llemma" else re.sub(r"\s+", "", _clean(answer))

    def missing_data(self, data_dir: str) -> str | None:
        return missing_task_data("llemma_ocw", data_dir)


_MC_FINAL = re.compile(r"final answer is\s*\$?\s*\(?\s*([A-D])\s*\)?(?![A-Za-z])", re.I)
_MC_FINAL_STRICT = re.compile(r"final answer is \(([A-D])\)", re.I)
_MC_FALLBACK = re.compile(r"\(([A-D])\)|answer is\s*:?\s*\(?([A-D])(?![A-Za-z])", re.I)


def extract_choice(text: str, protocol: str = "default") -> str | None:
    """llemma: the first "final answer is (X)", else None. default: the last "final answer is X" (brackets
    optional), else the last "(X)" or "answer is X" anywhere."""
    if protocol == "llemma":
        m = _MC_FINAL_STRICT.search(text)
        return m.group(1).upper() if m else None
    finals = _MC_FINAL.findall(text)
    if finals:
        return finals[-1].upper()
    others = _MC_FALLBACK.findall(text)
    if others:
        a, b = others[-1]
        return (a or b).upper()
    return None


class McKind:
    """Multiple choice (A-D) answered by a chain of thought: MMLU-STEM and SAT."""

    name = "mc"

    def problem_reference(self, doc: dict) -> tuple[str, str]:
        return mc_problem(doc), doc["answer"]

    def gold(self, reference: str, protocol: str) -> str | None:
        s = reference.strip().strip("()").upper()
        return s if len(s) == 1 and s in LETTERS else None

    def extract(self, generation: str, protocol: str) -> str | None:
        return extract_choice(generation, protocol)

    def equal(self, pred: str, gold: str, protocol: str, checker: Checker | None) -> bool:
        return pred is not None and gold is not None and pred.upper() == gold.upper()

    def key(self, answer: str, protocol: str) -> str:
        return answer.upper()

    def missing_data(self, data_dir: str) -> str | None:
        # one kind serves two tasks: report whichever of the two layouts is incomplete
        return missing_task_data("llemma_mmlu_stem", data_dir) and missing_task_data("llemma_sat", data_dir)


OCW = OcwKind()
MC = McKind()
