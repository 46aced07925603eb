"""Is a MATH answer equal to the reference? Normalised strings match, or SymPy/math-verify say so.

Symbolic comparison can take unbounded time (SymPy simplification, huge integer powers in C code
that no signal interrupts), and math-verify's own timeout uses signal.alarm, which fails outside
the main thread. So every symbolic comparison runs in a child process that is killed and replaced
when it overruns its timeout; the comparison then counts as "not equal". One Checker is one child:
use one per thread.
"""

import json
import os
import re
import select
import subprocess
import sys
import threading
from collections.abc import Iterable
from fractions import Fraction
from typing import TextIO

from llemma_eval.answers import normalize_math

DEFAULT_TIMEOUT = 5.0
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STARTUP_TIMEOUT = 300.0  # importing SymPy and math-verify on a loaded machine


def _symbolic_equal(a: str, b: str) -> bool:
    """Runs in the child. a and b are normalised MATH answers (LaTeX without $)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    pa = parse(f"${a}$", extraction_config=configs, parsing_timeout=None)
    pb = parse(f"${b}$", extraction_config=configs, parsing_timeout=None)
    if pa and pb and verify(pb, pa, timeout_seconds=None):
        return True
    return _sympy_difference_is_zero(a, b)


def _sympy_difference_is_zero(a: str, b: str) -> bool:
    """Minerva's check: parse both with SymPy's LaTeX parser, simplify(a - b) == 0."""
    import sympy
    from sympy.parsing.latex import parse_latex

    try:
        return sympy.simplify(parse_latex(a) - parse_latex(b)) == 0
    except Exception:
        return False


def _llemma_equal(a: str, b: str) -> bool:
    """The Llemma paper's check (Minerva's): lm-eval's minerva_math is_equiv on answers already
    normalised by its normalize_final_answer (SymPy's LaTeX parser, simplify(a - b) == 0)."""
    from lm_eval.tasks.minerva_math.utils import is_equiv

    return bool(is_equiv(a, b))


def _math_verify_score(generation: str, solution: str) -> bool:
    """math-verify's own verdict on the whole generation against the reference solution."""
    from math_verify import parse, verify

    gold = parse(solution, parsing_timeout=None)
    pred = parse(generation, parsing_timeout=None)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=None))


_RATIONAL = re.compile(r"(-?\d+(?:\.\d+)?)|(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")


def rational(s: str) -> Fraction | None:
    """The value of a normalised answer that is a plain integer, decimal or \\frac{integer}{integer}."""
    m = _RATIONAL.fullmatch(s)
    if not m:
        return None
    if m.group(1) is not None:
        return Fraction(m.group(1))
    if int(m.group(4)) == 0:
        return None
    value = Fraction(int(m.group(3)), int(m.group(4)))
    return -value if m.group(2) else value


_JOBS = {"equal": _symbolic_equal, "math_verify": _math_verify_score, "llemma": _llemma_equal}


def top_level_items(s: str) -> list[str]:
    """A normalised answer split at the commas outside any bracket: "1,2" -> ["1", "2"], while
    "(1,2)", "\\{1,2\\}" and "f(x,y)" stay one item. A bare list answers "enter all solutions"."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0 and not s[:i].endswith("\\"):  # "\\," is a space, removed earlier
            items.append(s[start:i])
            start = i + 1
    return items + [s[start:]]


def serve(stdin: Iterable[str], stdout: TextIO) -> None:
    """The child's loop: one JSON request [job, a, b] per line in, one JSON bool per line out."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # math-verify logs every failed parse
    import math_verify  # noqa: F401  (imported before "ready": not counted against a timeout)
    import sympy.parsing.latex  # noqa: F401
    from lm_eval.tasks.minerva_math import utils  # noqa: F401

    stdout.write('"ready"\n')
    stdout.flush()
    for line in stdin:
        job, a, b = json.loads(line)
        try:
            result = bool(_JOBS[job](a, b))
        except Exception:
            result = False
        stdout.write(json.dumps(result) + "\n")
        stdout.flush()


class Checker:
    """Equality of MATH answers with a per-comparison timeout (seconds) enforced by a child process."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT):
        self.timeout = timeout
        self.timeouts = 0  # comparisons that overran and were counted unequal
        self._proc: subprocess.Popen[str] | None = None
        self._cache: dict = {}

    def _start(self):
        # a fresh interpreter (not a fork of a process holding torch threads, not a re-import of __main__)
        self._proc = subprocess.Popen([sys.executable, "-m", "llemma_eval.checker"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, bufsize=1,
                                      env={**os.environ, "PYTHONPATH": _PACKAGE_ROOT + os.pathsep +
                                           os.environ.get("PYTHONPATH", "")})
        if self._readline(STARTUP_TIMEOUT) != "ready":
            self.close()
            raise RuntimeError(f"answer checker process did not start within {STARTUP_TIMEOUT:g} s")

    def _readline(self, timeout: float):
        assert self._proc is not None and self._proc.stdout is not None, "called with the child running"
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self._proc.stdout.readline()
        return json.loads(line) if line else None

    def _ask(self, job: str, a: str, b: str, timeout: float) -> bool:
        key = (job, a, b)
        if key in self._cache:
            return self._cache[key]
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        assert self._proc is not None and self._proc.stdin is not None, "_start leaves the child running"
        self._proc.stdin.write(json.dumps([job, a, b]) + "\n")
        self._proc.stdin.flush()
        result = self._readline(timeout)
        if result is None:
            self.timeouts += 1
            print(f"warning: {job} comparison of {a[:60]!r} and {b[:60]!r} took over {timeout:g} s; "
                  "counted as not equal", file=sys.stderr)
            self.close()
            result = False
        self._cache[key] = result
        return result

    def equal(self, pred: str | None, gold: str | None) -> bool:
        """Both are raw answers (as extracted); normalised here."""
        return self._equal_normalised(normalize_math(pred), normalize_math(gold))

    def _equal_normalised(self, a: str | None, b: str | None) -> bool:
        if not a or not b:
            return False
        if a == b:
            return True
        xs, ys = top_level_items(a), top_level_items(b)
        if len(xs) > 1 or len(ys) > 1:  # lists: a list before SymPy, which would read "1,2" as 1
            return len(xs) == len(ys) and self._same_items(xs, ys)
        x, y = rational(a), rational(b)
        if x is not None and y is not None:  # most MATH answers: no SymPy needed
            return x == y
        return self._ask("equal", a, b, self.timeout)

    def _same_items(self, xs: list[str], ys: list[str]) -> bool:
        """Equal as multisets (a solution list in any order): each x matched to a distinct y."""
        unmatched = list(ys)
        for x in xs:
            match = next((i for i, y in enumerate(unmatched) if self._equal_normalised(x, y)), None)
            if match is None:
                return False
            unmatched.pop(match)
        return True

    def llemma_equal(self, pred: str | None, gold: str | None) -> bool:
        """The Llemma protocol's equality: both already normalised by lm-eval's minerva_math
        normalize_final_answer; identical strings, else its SymPy is_equiv (in the child)."""
        if pred is None or gold is None:
            return False
        if pred == gold:
            return True
        return self._ask("llemma", pred, gold, self.timeout)

    def math_verify(self, generation: str, solution: str) -> bool:
        return self._ask("math_verify", generation, solution, self.timeout)

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                assert stream is not None, "both are pipes"
                stream.close()
        self._proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_local = threading.local()
_started: list[Checker] = []
_started_lock = threading.Lock()


def thread_checker(timeout: float = DEFAULT_TIMEOUT) -> Checker:
    """This thread's Checker (its own child process), created on first use."""
    if getattr(_local, "checker", None) is None:
        _local.checker = Checker(timeout)
        with _started_lock:
            _started.append(_local.checker)
    return _local.checker


def close_thread_checkers() -> None:
    """Ends the children of every thread's Checker (a pool's threads are gone after it)."""
    with _started_lock:
        for checker in _started:
            checker.close()
        _started.clear()
    _local.checker = None


def is_equiv(pred: str | None, gold: str | None, timeout: float = DEFAULT_TIMEOUT) -> bool:
    return thread_checker(timeout).equal(pred, gold)


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
