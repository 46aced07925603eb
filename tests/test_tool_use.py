"""llemma_eval.tool_use: GSM8k+Python and MATH+Python kinds (program extraction, sandboxed run, gold,
equality under both protocols), their prompts and task YAMLs. No model; data written here."""

import json
import os
import threading

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llemma_eval import TASKS_DIR, task_fns, tool_use  # noqa: E402
from llemma_eval.checker import Checker  # noqa: E402
from llemma_eval.tool_use import GSM8K_PYTHON, MATH_PYTHON  # noqa: E402

GSM8K_DOC = {"question": "Tom has 3 boxes of 14 pencils and gives away 5 pencils. How many are left?",
             "answer": "3 * 14 = 42 pencils.\n42 - 5 = 37.\n#### 37"}
MATH_DOC = {"problem": "What is $\\frac{3}{8} + \\frac{3}{8}$?", "level": "Level 1", "type": "Prealgebra",
            "solution": "Adding, $\\frac{6}{8} = \\boxed{\\frac{3}{4}}$."}


@pytest.fixture(scope="module")
def checker():
    with Checker(timeout=60) as c:
        yield c


def test_problem_reference_and_gold():
    assert GSM8K_PYTHON.problem_reference(GSM8K_DOC) == (GSM8K_DOC["question"], GSM8K_DOC["answer"])
    assert MATH_PYTHON.problem_reference(MATH_DOC) == (MATH_DOC["problem"], MATH_DOC["solution"])
    for protocol in ("default", "llemma"):
        assert GSM8K_PYTHON.gold(GSM8K_DOC["answer"], protocol) == "37"
        assert MATH_PYTHON.gold(MATH_DOC["solution"], protocol) == "\\frac{3}{4}"
    assert MATH_PYTHON.gold("no boxed answer here", "llemma") is None
    # the llemma gold is the last \boxed{}; the default one prefers Minerva's final-answer phrase
    both = "So $\\boxed{2}$ first, then $\\boxed{5}$.\nFinal Answer: The final answer is $7$. I hope it is correct."
    assert (MATH_PYTHON.gold(both, "llemma"), MATH_PYTHON.gold(both, "default")) == ("5", "$7$")


@pytest.mark.processes
def test_gsm8k_correct_wrong_and_crashing_programs():
    gold = GSM8K_PYTHON.gold(GSM8K_DOC["answer"], "default")
    correct = "def solution():\n    pencils = 3 * 14\n    return pencils - 5\n```"
    wrong = "def solution():\n    pencils = 3 * 14\n    return pencils + 5\n```"
    crashing = "def solution():\n    pencils = 3 * 14\n    return pencils / 0\n```"
    for protocol in ("default", "llemma"):
        assert GSM8K_PYTHON.extract(correct, protocol) == "37"
        assert GSM8K_PYTHON.equal(GSM8K_PYTHON.extract(correct, protocol), gold, protocol, None)
        assert GSM8K_PYTHON.extract(wrong, protocol) == "47"
        assert not GSM8K_PYTHON.equal("47", gold, protocol, None)
        assert GSM8K_PYTHON.extract(crashing, protocol) is None
        assert GSM8K_PYTHON.extract("", protocol) is None


@pytest.mark.processes
def test_gsm8k_numbers():
    assert GSM8K_PYTHON.extract("def solution():\n    return 37.0\n", "default") == "37"
    assert GSM8K_PYTHON.extract("def solution():\n    return 7 / 2\n", "default") == "3.5"
    assert GSM8K_PYTHON.extract("from fractions import Fraction\ndef solution():\n    return Fraction(7, 2)\n",
                                "default") == "3.5"
    assert GSM8K_PYTHON.extract("def solution():\n    return None\n", "default") is None
    eq = lambda a, b: GSM8K_PYTHON.equal(a, b, "default", None)  # noqa: E731
    assert eq("1,234", "1234") and eq("37.00001", "37") and eq("$37", "37")
    assert not eq("37.01", "37") and not eq("0.0001", "0") and not eq("x", "37")
    assert GSM8K_PYTHON.key("1,234.0", "default") == GSM8K_PYTHON.key("1234", "llemma") == "1234"


@pytest.mark.processes
def test_program_format():
    body = "def solution():\n    return 5\n"
    assert tool_use.program_of(body + "```\nQuestion: more text") == body
    assert tool_use.program_of("```python\n" + body + "```") == body  # a repeated opener is dropped
    assert tool_use.program_of(body) == body  # the stop sequence already removed the closer
    # the program's own prints do not hide solution()'s result; without solution(): default only
    noisy = "print('debug', 99)\ndef solution():\n    return 5\n"
    assert GSM8K_PYTHON.extract(noisy, "default") == "5"
    prints = "x = 3 * 14\nprint('result:')\nprint(x - 5)\n"
    assert (GSM8K_PYTHON.extract(prints, "default"), GSM8K_PYTHON.extract(prints, "llemma")) == ("37", None)


@pytest.mark.processes
def test_a_program_runs_once_for_both_protocols(monkeypatch):
    runs = []
    real = tool_use.run_program

    def counting(source, **kw):
        runs.append(source)
        return real(source, **kw)

    monkeypatch.setattr(tool_use, "run_program", counting)
    gen = "def solution():\n    return 1234 + 1\n"
    assert [GSM8K_PYTHON.extract(gen, p) for p in ("default", "llemma", "default")] == ["1235"] * 3
    assert len(runs) == 1
    other = []  # another thread has its own cache
    t = threading.Thread(target=lambda: other.append(GSM8K_PYTHON.extract(gen, "llemma")))
    t.start()
    t.join()
    assert other == ["1235"] and len(runs) == 2


@pytest.mark.processes
def test_math_program_with_sympy_rational_scores_right_under_both_protocols(checker):
    gen = ("from sympy import Rational\n\n\ndef solution():\n    return Rational(3, 8) + Rational(3, 8)\n```")
    for protocol in ("default", "llemma"):
        gold = MATH_PYTHON.gold(MATH_DOC["solution"], protocol)
        pred = MATH_PYTHON.extract(gen, protocol)
        assert pred == "\\frac{3}{4}"
        assert MATH_PYTHON.equal(pred, gold, protocol, checker)
        wrong = MATH_PYTHON.extract(gen.replace("+", "-"), protocol)
        assert wrong == "0" and not MATH_PYTHON.equal(wrong, gold, protocol, checker)


@pytest.mark.processes
def test_math_answers_as_latex(checker):
    def run(expr, imports="import sympy\nfrom sympy import *\n"):
        return MATH_PYTHON.extract(f"{imports}\ndef solution():\n    return {expr}\n", "default")

    assert run("sqrt(8)") == "2 \\sqrt{2}"
    assert run("'sqrt(2)/2'") == "\\frac{\\sqrt{2}}{2}"  # a SymPy string is converted in the child
    assert run("'\\\\frac{1}{2}'") == "\\frac{1}{2}"  # LaTeX returned as it is
    assert run("(1, Rational(-1, 2))") == "(1, - \\frac{1}{2})"
    assert run("[3, -1]") == "3, -1"
    assert run("Fraction(6, 4)", imports="from fractions import Fraction\n") == "\\frac{3}{2}"
    assert run("2.0", imports="") == "2"
    # equal through the checker: SymPy's LaTeX against a differently written gold
    gold = MATH_PYTHON.gold("$\\boxed{\\dfrac{\\sqrt2}{2}}$", "default")
    assert MATH_PYTHON.equal(run("1/sqrt(2)"), gold, "default", checker)
    llemma_gold = MATH_PYTHON.gold("$\\boxed{\\dfrac{\\sqrt{2}}{2}}$", "llemma")
    llemma_pred = MATH_PYTHON.extract("from sympy import sqrt\ndef solution():\n    return sqrt(2)/2\n", "llemma")
    assert MATH_PYTHON.equal(llemma_pred, llemma_gold, "llemma", checker)
    assert not MATH_PYTHON.equal(llemma_pred, MATH_PYTHON.gold("$\\boxed{\\sqrt{3}}$", "llemma"), "llemma", checker)
    assert MATH_PYTHON.key("\\dfrac{1}{2}", "default") == MATH_PYTHON.key("\\frac12", "default")


@pytest.mark.processes
def test_fewshot_programs_run_and_give_their_answers():
    gsm8k = [GSM8K_PYTHON.extract(p, "default") for _, p in tool_use.GSM8K_EXAMPLES]
    assert gsm8k == ["60", "300", "24", "20", "4", "300"]
    math = [MATH_PYTHON.extract(p, "default") for _, p in tool_use.MATH_EXAMPLES]
    assert math == ["\\frac{9}{2}", "1", "\\frac{5}{12}", "3 \\sqrt{5}"]


def write_data(root):
    os.makedirs(os.path.join(root, "gsm8k"))
    with open(os.path.join(root, "gsm8k", "test.jsonl"), "w") as f:
        f.write(json.dumps(GSM8K_DOC) + "\n")
    os.makedirs(os.path.join(root, "MATH", "test", "prealgebra"))
    with open(os.path.join(root, "MATH", "test", "prealgebra", "1.json"), "w") as f:
        json.dump(MATH_DOC, f)
    return str(root)


def test_missing_data(tmp_path):
    empty = str(tmp_path / "empty")
    assert GSM8K_PYTHON.missing_data(empty) == f"{empty}/gsm8k/test.jsonl"
    assert MATH_PYTHON.missing_data(empty).startswith(f"{empty}/MATH/test/<subject>/*.json")
    full = write_data(tmp_path / "full")
    assert GSM8K_PYTHON.missing_data(full) is None and MATH_PYTHON.missing_data(full) is None


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    from lm_eval.tasks import TaskManager

    data = write_data(tmp_path_factory.mktemp("data"))
    return TaskManager(include_path=TASKS_DIR, include_defaults=False, metadata={"data_dir": data})


def _prompt(manager, name):
    task = manager.load([name])["tasks"][name]
    task.build_all_requests(limit=1, rank=0, world_size=1)
    inst = task.instances[0]
    return task, inst.args, inst.doc


def test_gsm8k_python_yaml_renders(manager):
    task, (prompt, gen_kwargs), doc = _prompt(manager, "llemma_gsm8k_python")
    assert doc["question"] == GSM8K_DOC["question"]
    assert prompt.startswith(tool_use.GSM8K_INSTRUCTION + "Question: A bakery sold 14 muffins")
    assert prompt.endswith(f"\n\nQuestion: {GSM8K_DOC['question']}\n\n```python\n")
    assert prompt.count("```python\n") == 7 and prompt.count("def solution():") == 6
    assert gen_kwargs["until"] == ["```", "Question:"] and gen_kwargs["max_gen_toks"] == 256
    assert gen_kwargs["do_sample"] is False
    assert task.config.metadata["kind"] == "gsm8k_python"


def test_math_python_yaml_renders(manager):
    task, (prompt, gen_kwargs), doc = _prompt(manager, "llemma_math_python")
    assert doc["solution"] == MATH_DOC["solution"]
    assert prompt.startswith(tool_use.MATH_INSTRUCTION + "Problem:\nWhat is the sum of the solutions")
    assert prompt.endswith(f"```\n\nProblem:\n{MATH_DOC['problem']}\n\n```python\n")
    assert prompt.count("def solution():") == 4
    assert gen_kwargs["until"] == ["```", "Problem:"] and gen_kwargs["max_gen_toks"] == 512
    assert task.config.metadata["kind"] == "math_python"


@pytest.mark.processes
def test_process_results(monkeypatch):
    monkeypatch.setenv("LLEMMA_EVAL_DEFER_SCORING", "1")
    assert task_fns.gsm8k_python_results(GSM8K_DOC, ["def solution():\n    return 37\n"]) == \
        {"exact_or_equiv": 0, "maj_at_k": 0}
    from llemma_eval import checker, registry

    assert registry.kind("gsm8k_python") is GSM8K_PYTHON and registry.kind("math_python") is MATH_PYTHON
    monkeypatch.setenv("LLEMMA_EVAL_DEFER_SCORING", "0")
    try:
        assert task_fns.gsm8k_python_results(GSM8K_DOC, ["def solution():\n    return 37\n"]) == \
            {"exact_or_equiv": 1, "maj_at_k": 1}
        assert task_fns.gsm8k_python_results(GSM8K_DOC, ["def solution():\n    return 36\n"]) == \
            {"exact_or_equiv": 0, "maj_at_k": 0}
        right = "from sympy import Rational\ndef solution():\n    return Rational(6, 8)\n"
        assert task_fns.math_python_results(MATH_DOC, [right]) == {"exact_or_equiv": 1, "maj_at_k": 1}
        assert task_fns.math_python_results(MATH_DOC, ["def solution():\n    return 1\n"]) == \
            {"exact_or_equiv": 0, "maj_at_k": 0}
    finally:
        checker.close_thread_checkers()
