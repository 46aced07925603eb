"""The Llemma paper's tool-use evaluations: the model writes a Python program, the sandbox runs it.

Kinds (llemma_eval.kinds describes what a kind is):
    gsm8k_python  GSM8k; the program defines solution() returning the number asked for (PAL-style);
                  the answer is compared numerically (relative tolerance 1e-4) under both protocols
    math_python   MATH; the program defines solution() that computes the answer with SymPy and
                  returns it; compared as a MATH answer (default: our checker; llemma: Minerva's
                  normalize_final_answer and lm-eval's is_equiv)

Program format. The prompt (a fixed prefix of few-shot examples written for this package, then the
problem) ends in the opener "```python\\n"; the generation is the program, ended by "```" (the stop
sequence; a generation that repeats the opener has it dropped). To run it, a harness is appended that
calls solution() and prints a marker line and the result:
    gsm8k_python  a number: int as is, float as int when integral (else repr), other types via float()
    math_python   LaTeX, made in the sandboxed child: a SymPy object -> sympy.latex; an int, float or
                  Fraction -> SymPy first; a string without a backslash that SymPy can parse ("sqrt(2)/2")
                  -> sympy.latex(sympify(s)); a tuple -> "(a, b)" (a point); a list or set -> "a, b"
                  (several solutions); other strings as they are.
Reading the answer: the text after the marker (stripped); "None" or nothing is no answer. A program
that defines no solution() but prints its answer: default protocol takes the last non-empty line it
printed, llemma protocol has no answer (strict). A program that fails (exception, timeout, refused
operation, limits) has no answer under both. Each program runs once per thread: both protocols read
the same run.
"""

import threading
from collections import OrderedDict

from llemma_eval import answers as ans
from llemma_eval.checker import Checker
from llemma_eval.kinds import Gsm8kKind, MathKind
from llemma_eval.sandbox import SandboxUnavailable, run_program  # noqa: F401  (SandboxUnavailable: re-exported)
from llemma_eval.upstream import minerva

OPENER = "```python\n"
CLOSER = "```"
MARKER = "<<<solution() returned>>>"
GSM8K_TIMEOUT_S = 5.0   # a PAL program is arithmetic: well under a second
MATH_TIMEOUT_S = 20.0   # importing SymPy alone takes a second or more on a loaded node
CACHE_SIZE = 4096

# --------------------------------------------------------------------------------------- prompts
# Invented problems and programs, written for this package (not from GSM8k, MATH, PAL or the paper).

GSM8K_INSTRUCTION = "Each question is answered by a Python function solution() that returns the number asked for.\n\n"
GSM8K_EXAMPLES = [
    ("A bakery sold 14 muffins at $3 each and 9 scones at $2 each on Monday. How many dollars did the "
     "bakery take in on Monday?",
     "def solution():\n"
     "    muffin_sales = 14 * 3\n"
     "    scone_sales = 9 * 2\n"
     "    return muffin_sales + scone_sales\n"),
    ("Priya reads 12 pages of her book on every weekday and 20 pages on each day of the weekend. How many "
     "pages does she read in 3 weeks?",
     "def solution():\n"
     "    pages_per_week = 5 * 12 + 2 * 20\n"
     "    return 3 * pages_per_week\n"),
    ("A water tank holds 480 liters when full. It is three quarters full, and a pipe drains it at 15 liters "
     "per minute. How many minutes does it take to empty the tank?",
     "def solution():\n"
     "    water = 480 * 3 / 4\n"
     "    minutes = water / 15\n"
     "    return minutes\n"),
    ("Marco bought 5 notebooks at $4 each and a backpack that cost three times as much as all the notebooks "
     "together. He paid with two $50 bills. How much change did he get?",
     "def solution():\n"
     "    notebooks = 5 * 4\n"
     "    backpack = 3 * notebooks\n"
     "    paid = 2 * 50\n"
     "    return paid - (notebooks + backpack)\n"),
    ("A school trip has 148 students and 12 teachers. Each bus seats 45 people. How many buses are needed?",
     "import math\n\n\n"
     "def solution():\n"
     "    people = 148 + 12\n"
     "    return math.ceil(people / 45)\n"),
    ("Lena has 6 rows of tomato plants with 8 plants in each row, and each plant gives 2.5 kilograms of "
     "tomatoes. She keeps 20 kilograms and sells the rest at $3 per kilogram. How many dollars does she make?",
     "def solution():\n"
     "    harvest = 6 * 8 * 2.5\n"
     "    sold = harvest - 20\n"
     "    return sold * 3\n"),
]

MATH_INSTRUCTION = ("Each problem is solved by a Python function solution() that computes the exact answer "
                    "with SymPy and returns it.\n\n")
MATH_EXAMPLES = [
    ("What is the sum of the solutions of $2x^2 - 9x + 4 = 0$?",
     "from sympy import symbols, solve\n\n\n"
     "def solution():\n"
     "    x = symbols('x')\n"
     "    roots = solve(2*x**2 - 9*x + 4, x)\n"
     "    return sum(roots)\n"),
    ("What is the remainder when $3^{100} + 5^{20}$ is divided by $7$?",
     "def solution():\n"
     "    return (pow(3, 100, 7) + pow(5, 20, 7)) % 7\n"),
    ("Two fair six-sided dice are rolled. What is the probability that the product of the two numbers "
     "rolled is a multiple of $4$? Express your answer as a common fraction.",
     "from sympy import Rational\n\n\n"
     "def solution():\n"
     "    good = sum(1 for a in range(1, 7) for b in range(1, 7) if (a * b) % 4 == 0)\n"
     "    return Rational(good, 36)\n"),
    ("Find the distance between the points $(1, -2)$ and $(4, 4)$. Express your answer in simplest radical form.",
     "from sympy import sqrt\n\n\n"
     "def solution():\n"
     "    dx, dy = 4 - 1, 4 - (-2)\n"
     "    return sqrt(dx**2 + dy**2)\n"),
]


def _block(label: str, text: str, program: str) -> str:
    return f"{label}{text}\n\n{OPENER}{program}{CLOSER}\n\n"


GSM8K_PREFIX = GSM8K_INSTRUCTION + "".join(_block("Question: ", q, p) for q, p in GSM8K_EXAMPLES)
MATH_PREFIX = MATH_INSTRUCTION + "".join(_block("Problem:\n", q, p) for q, p in MATH_EXAMPLES)


def gsm8k_python_doc_to_text(doc: dict) -> str:
    return f"{GSM8K_PREFIX}Question: {doc['question']}\n\n{OPENER}"


def math_python_doc_to_text(doc: dict) -> str:
    return f"{MATH_PREFIX}Problem:\n{doc['problem']}\n\n{OPENER}"


# --------------------------------------------------------------------------------------- running

# Appended to the program; prints the marker and solution()'s result in the kind's format.
_HARNESS = '''

def _llemma_format(r, _fmt={fmt!r}):
    import fractions
    import sys
    if _fmt == "number":
        if isinstance(r, int) and not isinstance(r, bool):
            return str(r)
        try:
            v = float(r)
        except Exception:
            return str(r)
        return str(int(v)) if v == v and abs(v) != float("inf") and v == int(v) else repr(v)
    sp = sys.modules.get("sympy")
    if isinstance(r, tuple):
        return "(" + ", ".join(_llemma_format(x) for x in r) + ")"
    if isinstance(r, (list, set, frozenset)):
        return ", ".join(_llemma_format(x) for x in (sorted(r, key=str) if isinstance(r, (set, frozenset)) else r))
    if sp is None:
        if isinstance(r, fractions.Fraction):
            return str(r.numerator) if r.denominator == 1 else "\\\\frac{{%d}}{{%d}}" % (r.numerator, r.denominator)
        if isinstance(r, float) and r == int(r):
            return str(int(r))
        return str(r)
    if isinstance(r, str):
        if "\\\\" in r:
            return r
        try:
            return sp.latex(sp.sympify(r))
        except Exception:
            return r
    if isinstance(r, (int, float, fractions.Fraction)) and not isinstance(r, bool):
        r = sp.sympify(r)
    if isinstance(r, sp.Basic):
        return sp.latex(r)
    return str(r)


if callable(globals().get("solution")):
    _llemma_text = _llemma_format(solution())
    print()
    print({marker!r})
    print(_llemma_text)
'''


def program_of(generation: str) -> str:
    """The program in a generation: after a repeated opener (if any), up to the closing fence."""
    text = generation
    stripped = text.lstrip()
    if stripped.startswith("```"):  # the model repeated the opener ("```python" or "```py")
        text = stripped.split("\n", 1)[1] if "\n" in stripped else ""
    return text.split(CLOSER, 1)[0]


_local = threading.local()


def _run(program: str, fmt: str, timeout_s: float) -> tuple[bool, str]:
    """(ran to completion, stdout) of the program with the harness, once per thread and program."""
    cache = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = OrderedDict()
    key = (fmt, program)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    result = run_program(program + _HARNESS.format(fmt=fmt, marker=MARKER), timeout_s=timeout_s)
    cache[key] = (result.ok, result.stdout)
    if len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return cache[key]


def _answer(generation: str, protocol: str, fmt: str, timeout_s: float) -> str | None:
    program = program_of(generation)
    if not program.strip():
        return None
    ok, stdout = _run(program, fmt, timeout_s)
    if not ok:
        return None
    printed, marker, returned = stdout.rpartition("\n" + MARKER + "\n")
    if marker:
        answer = returned.strip()
        return None if answer in ("", "None") else answer
    if protocol == "llemma":  # strict: the answer is what solution() returns
        return None
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    return lines[-1] if lines else None


def _numeric_equal(a: str, b: str) -> bool:
    x, y = ans.normalize_number(a), ans.normalize_number(b)
    if x is None or y is None:
        return x == y
    try:
        fx, fy = float(x), float(y)
    except (TypeError, ValueError):
        return x == y
    return fx == fy or abs(fx - fy) <= 1e-4 * max(abs(fx), abs(fy))


# --------------------------------------------------------------------------------------- kinds

class Gsm8kPythonKind(Gsm8kKind):
    """GSM8k's problem, reference and data; the answer is what the program returns, compared
    numerically under both protocols."""
    name = "gsm8k_python"
    timeout_s = GSM8K_TIMEOUT_S

    def extract(self, generation: str, protocol: str) -> str | None:
        return _answer(generation, protocol, "number", self.timeout_s)

    def equal(self, pred: str, gold: str, protocol: str, checker: Checker | None) -> bool:
        return _numeric_equal(pred, gold)

    def key(self, answer: str, protocol: str) -> str | None:
        return ans.normalize_number(answer)


class MathPythonKind(MathKind):
    """MATH's problem, reference, data and answer equality; the answer is the program's LaTeX,
    Minerva-normalised under the llemma protocol."""
    name = "math_python"
    timeout_s = MATH_TIMEOUT_S

    def extract(self, generation: str, protocol: str) -> str | None:
        answer = _answer(generation, protocol, "latex", self.timeout_s)
        if answer is None or protocol != "llemma":
            return answer
        return minerva().normalize_final_answer(answer)


GSM8K_PYTHON = Gsm8kPythonKind()
MATH_PYTHON = MathPythonKind()


# --------------------------------------------------------------------------------------- lm-eval
