"""The MATH answer checker, majority voting and rescoring (no model)."""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO

from llemma_eval import answers
from llemma_eval.checker import Checker
from llemma_eval.scoring import score_records, summarize
from llemma_eval.voting import majority_vote

EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"), ("\\frac12", "\\frac{1}{2}"), ("\\dfrac{1}{2}", "\\frac{1}{2}"),
    ("\\tfrac{3}{4}", "0.75"), ("-\\frac{2}{3}", "\\frac{-2}{3}"), ("\\frac{4}{6}", "\\frac{2}{3}"),
    ("0.50", "0.5"), ("3.0", "3"), ("1,000", "1000"), ("10^{3}", "1000"),
    ("\\left( 1, 2 \\right)", "(1,2)"), ("\\left[2,5\\right)", "[2, 5)"), ("(-\\infty, 3]", "(-\\infty,3]"),
    ("5 \\text{ cm}", "5"), ("12\\text{ inches}", "12"), ("7 units", "7"), ("\\$25", "25"),
    ("30^\\circ", "30"), ("30^{\\circ}", "30"), ("45°", "45"), ("50\\%", "50"), ("12.5%", "12.5"),
    ("x = 3", "3"), ("y=\\frac{1}{2}", "0.5"), ("\\{1, 2, 3\\}", "\\{3, 2, 1\\}"), ("\\{1,2\\}", "\\{1,2\\}"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("\\sqrt2", "\\sqrt{2}"), ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
    ("x^2+2x+1", "(x+1)^2"), ("\\pi", "\\pi"), ("2\\pi", "\\pi \\cdot 2"),
    ("\\text{(C)}", "\\text{(C)}"), ("\\text{Monday}", "Monday"),
    ("\\mathbb{Z}\\!\\!\\!\\!\\star", "\\mathbb{Z}\\!\\!\\!\\!\\star"),  # unparseable but identical
    ("\\text{no solution}", "\\text{no solution}"), ("\\sum_{n=1}^{4} n", "10"), ("\\displaystyle 7", "7"), ("3\\,000", "3000"),
]
NOT_EQUIVALENT = [
    ("\\frac{1}{2}", "0.51"), ("\\frac{1}{3}", "0.33"), ("2", "3"), ("-5", "5"),
    ("[2,5)", "(2,5]"), ("(1,2)", "(2,1)"), ("\\{1,2\\}", "\\{1,2,3\\}"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}"),
    ("\\sqrt{2}", "2"), ("x^2", "2x"), ("30^\\circ", "60"), ("50\\%", "5"),
    ("x = 3", "4"), ("\\text{(C)}", "\\text{(D)}"), ("\\mathbb{Z}\\!\\!\\star", "\\mathbb{Q}\\!\\!\\star"),
    ("1000", "100"), ("\\pi", "3.14"), ("\\text{no solution}", "\\text{all reals}"), ("\\sum_{n=1}^{5} n", "\\sum_{n=1}^{5} n^2"),
]


@pytest.fixture(scope="module")
def checker():
    with Checker(timeout=20) as c:  # generous: the machine running the tests may be loaded
        yield c


@pytest.mark.processes
def test_battery_of_equivalent_and_different_answers(checker):
    assert len(EQUIVALENT) + len(NOT_EQUIVALENT) >= 40
    wrong = [(a, b, "should be equal") for a, b in EQUIVALENT if not checker.equal(a, b)]
    wrong += [(a, b, "should differ") for a, b in NOT_EQUIVALENT if checker.equal(a, b)]
    assert not wrong, wrong
    assert checker.timeouts == 0


@pytest.mark.processes
def test_identical_strings_and_plain_numbers_need_no_sympy():
    with Checker() as c:
        assert c.equal("\\weird{{", "\\weird{{")
        assert c.equal("\\frac{4}{6}", "\\dfrac{2}{3}") and c.equal("-\\frac{1}{4}", "-0.25")
        assert not c.equal("\\frac{2}{3}", "0.6667") and not c.equal("3", "\\frac{3}{0}x")
        assert c._proc is not None  # the last one needed SymPy
    with Checker() as c:
        assert c.equal("1,000", "1000.0") and not c.equal("2", "3")
        assert c._proc is None  # rational answers are compared exactly, without a child


def test_extraction_of_final_answers():
    minerva = "So the sum is $7$.\nFinal Answer: The final answer is $\\frac{3}{4}$. I hope it is correct."
    assert answers.extract_math_answer(minerva) == "$\\frac{3}{4}$"
    text = "Thus $x = \\boxed{\\frac{1}{\\sqrt{2}}}$, and \\boxed{5} is wrong... no: \\boxed{\\{1,2\\}}"
    assert answers.extract_math_answer(text) == "\\{1,2\\}"
    assert answers.extract_math_answer("no answer here") is None
    assert answers.extract_math_answer("\\boxed 5.") == "5"
    assert answers.extract_gsm8k_answer("5 + 3 = 8. The answer is 1,234.") == "1,234"
    assert answers.extract_gsm8k_answer("First 3, then 4, so 7") == "7"
    assert answers.gsm8k_gold("2 + 2 = 4\n#### 4") == "4"


@pytest.mark.processes
def test_timeout_kills_a_hanging_comparison_and_the_checker_recovers():
    """A comparison SymPy would take minutes over (expanding a degree-80 polynomial in 3 variables)
    costs only its timeout, and the next comparison gets a fresh child."""
    with Checker(timeout=2) as c:
        assert c.equal("1", "1.0")  # starts the child
        start = time.time()
        assert not c.equal("(x+y+z+1)^{80}", "(x+y+z+2)^{80}")
        assert time.time() - start < 10
        assert c.timeouts == 1
        assert c.equal("\\frac{1}{2}", "0.5")  # a fresh child answers the next comparison


def test_checker_works_outside_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    def compare(pair):
        with Checker(timeout=20) as c:
            return c.equal(*pair)

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(compare, [("\\frac{1}{2}", "0.5"), ("2", "3")])) == [True, False]


def test_equivalence_voting_beats_raw_string_voting(checker):
    # raw strings: "3" has 2 votes, every spelling of one half has 1; as numbers one half has 3
    samples = ["3", "\\frac12", "0.5", "3", "\\dfrac{1}{2}"]
    raw_winner = max(dict.fromkeys(samples), key=samples.count)
    assert raw_winner == "3"
    winner = majority_vote(samples, checker.equal)
    assert samples[winner] == "\\frac12"
    # ties: the class whose first member came first
    tie = ["0.5", "7", "\\frac{1}{2}", "7"]
    assert tie[majority_vote(tie, checker.equal)] == "0.5"
    assert majority_vote([None, None], checker.equal) is None


def _math_records():
    problems = [("What is half of one?", "One half is $\\boxed{\\frac{1}{2}}$."),
                ("Solve $x+1=4$.", "Subtract: $x = \\boxed{3}$."),
                ("Interval?", "It is $\\boxed{[2,5)}$."),
                ("Angle?", "The angle is $\\boxed{30^\\circ}$.")]
    return [{"doc_id": i, "kind": "math", "problem": p, "reference": s, "generations": []}
            for i, (p, s) in enumerate(problems)]


@pytest.mark.processes
def test_maj_at_k_picks_the_equivalence_winner_and_maj_at_1_is_greedy():
    recs = _math_records()[:1]
    recs[0]["generations"] = ["The final answer is 2. I hope it is correct.", "\\boxed{0.5}",
                              "\\boxed{2}", "Final Answer: The final answer is $\\dfrac{1}{2}$. I hope it is correct.",
                              "\\boxed{\\frac12}"]
    scored = score_records(recs, workers=1, timeout=20)
    assert scored[0]["answers"] == ["2", "0.5", "2", "$\\dfrac{1}{2}$", "\\frac12"]
    assert scored[0]["correct"] == [False, True, False, True, True]
    assert scored[0]["maj_answer"] == "0.5" and scored[0]["maj_correct"]
    s = summarize(scored)
    assert s["metric"] == "maj@5" and s["value"] == 1.0 and s["metrics"]["sample_accuracy"] == 0.6
    # maj@1 is the greedy score: with one generation per problem the two are the same number
    greedy = [dict(r, generations=[g]) for r, g in zip(_math_records(), ["\\boxed{0.5}", "\\boxed{4}", "\\boxed{[2, 5)}", "30"])]
    g = summarize(score_records(greedy, workers=2, timeout=20))
    assert g["metric"] == "exact_or_equiv" and g["k"] == 1
    assert g["value"] == g["metrics"]["maj@1"] == 0.5


def _write(path, recs):
    with open(path, "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


@pytest.mark.processes
def test_rescore_reference_solutions_100_percent_and_swapped_0_percent(tmp_path):
    math = _math_records()
    for r in math:
        r["generations"] = [r["reference"]]
    gsm = [{"doc_id": i, "kind": "gsm8k", "problem": f"q{i}", "reference": f"{i} * 3 = {3 * i}\n#### {3 * i}",
            "generations": [f"So the answer is {3 * i}."]} for i in range(1, 4)]
    good, swapped = tmp_path / "good", tmp_path / "swapped"
    good.mkdir(), swapped.mkdir()
    _write(good / "llemma_math.jsonl", math)
    _write(good / "llemma_gsm8k.jsonl", gsm)
    shift = lambda rs: [dict(r, generations=rs[(i + 1) % len(rs)]["generations"]) for i, r in enumerate(rs)]  # noqa: E731
    _write(swapped / "llemma_math.jsonl", shift(math))
    _write(swapped / "llemma_gsm8k.jsonl", shift(gsm))
    for d, expected in ((good, 1.0), (swapped, 0.0)):
        r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "run_eval.py"), "rescore", "--samples", str(d),
                            "--workers", "2", "--timeout", "20"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        results = json.load(open(d / "results.json"))
        assert results["llemma_math"]["value"] == expected and results["llemma_math"]["n"] == 4
        assert results["llemma_math"]["metrics"]["math_verify"] == expected
        assert results["llemma_gsm8k"]["value"] == expected and results["llemma_gsm8k"]["n"] == 3
        rescored = [json.loads(line) for line in open(d / "llemma_math.jsonl")]
        assert [x["correct"] for x in rescored] == [[expected == 1.0]] * 4


@pytest.mark.processes
def test_equiv_command_exit_status():
    tool = os.path.join(REPO, "tools", "run_eval.py")
    same = subprocess.run([sys.executable, tool, "equiv", "\\dfrac{1}{2}", "0.5"], capture_output=True, text=True)
    differ = subprocess.run([sys.executable, tool, "equiv", "x = 3", "4"], capture_output=True, text=True)
    assert (same.returncode, same.stdout.strip()) == (0, "true")
    assert (differ.returncode, differ.stdout.strip()) == (1, "false")
