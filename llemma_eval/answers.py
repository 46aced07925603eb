"""Final answers: extraction from a generation or reference solution, and normalisation.

MATH answers follow Minerva's conventions (a solution ends with "Final Answer: The final answer is
$X$. I hope it is correct." or puts the answer in \\boxed{X}); GSM8k answers are numbers ("The answer
is N." in a chain of thought, "#### N" in the reference).
"""

import re

_FINAL = re.compile(r"final answer is\s*(.*?)\s*(?:\.\s*I hope it is correct|$)", re.I | re.S | re.M)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}, or "\\boxed X") in text, braces matched."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:]
    brace = rest.find("{")
    head = rest[:brace] if brace >= 0 else rest
    if brace < 0 or head.strip() not in ("\\boxed", "\\fbox"):
        m = re.match(r"\\boxed ([^\s$]+)", rest)  # "\boxed 5": no braces
        return m.group(1).rstrip(".") if m else None
    depth = 0
    for i in range(brace, len(rest)):
        depth += {"{": 1, "}": -1}.get(rest[i], 0)
        if depth == 0:
            return rest[brace + 1:i]
    return None


def extract_math_answer(text: str) -> str | None:
    """Minerva's "The final answer is X" if present, else the last \\boxed{}; None if neither."""
    matches = _FINAL.findall(text)
    if matches and matches[-1].strip():
        return matches[-1].strip()
    return last_boxed(text)


_UNIT_WORDS = ("square units", "square feet", "square inches", "square meters", "square cm", "sq units",
               "units", "unit", "cm", "mm", "km", "meters", "meter", "m", "inches", "inch", "feet", "foot",
               "ft", "miles", "mile", "mph", "hours", "hour", "minutes", "minute", "seconds", "second",
               "degrees", "degree", "dollars", "dollar", "cents", "cent", "pounds", "pound", "ways", "days",
               "day", "years", "year", "people", "students", "points", "sq")
_BARE_UNIT = re.compile(r"(?<=[\d}])\s*(?:" + "|".join(_UNIT_WORDS) + r")(?:\^\{?\d\}?)?\s*$")
_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


_UNIT_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|operatorname)\s*\{([A-Za-z\s.]*)\}"
                        r"(?:\s*\^\s*(?:\{\s*\d\s*\}|\d))?")
_AND = re.compile(r"\s*(?:,\s*)?(?:\\(?:text|textrm|mbox)\s*\{\s*,?\s*and\s*\}|\band\b)\s*,?\s*")


def _drop_unit_text(s: str) -> str:
    """\\text{...} holding only words is a unit, removed with its exponent ("48\\text{ cm}^2" -> "48"),
    unless it is the whole answer; "2 \\text{ and } 3" is the list "2,3", not the number 23."""
    s = _AND.sub(",", s) if re.search(r"\S", _AND.sub("", s)) else s
    without = _UNIT_TEXT.sub("", s)
    s = without if without.strip() else s
    return _TEXT.sub(lambda m: m.group(1), s)


def _right_of_equals(s: str) -> str:
    """"x = 3" -> "3"; an "=" inside braces (\\sum_{n=1}) or an inequality is kept."""
    if re.search(r"[<>]|\\[lg]e|\\neq", s):
        return s
    depth, cut = 0, None
    for i, ch in enumerate(s):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "=" and depth == 0:
            cut = i
    return s if cut is None else s[cut + 1:]


def _fix_shorthand(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{x} -> \\frac{1}{x}, \\sqrt2 -> \\sqrt{2}, \\sqrt23 -> \\sqrt{2}3."""
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*\{([^{}]*)\}\s*(\d)", r"\\frac{\1}{\2}", s)
    return re.sub(r"\\sqrt\s*(\d|[a-z])", r"\\sqrt{\1}", s)  # one token, as TeX reads it: \\sqrt23 = \\sqrt{2}3


def normalize_math(answer: str | None) -> str | None:
    """A canonical string for a MATH answer: equal strings are equal answers."""
    if answer is None:
        return None
    s = answer.strip()
    inner = last_boxed(s)
    if inner is not None:
        s = inner
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\(?:displaystyle|left|right|big|Big|bigg|Bigg)(?![a-zA-Z])", "", s)
    s = re.sub(r"(?<!\\)\\[,;:! ]", "", s).replace("~", "")  # not the "\\" of a matrix row
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\$", "").replace("$", "")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = _right_of_equals(s)
    s = _drop_unit_text(s)
    s = _BARE_UNIT.sub("", s.strip())
    s = _fix_shorthand(s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.\d*?0+", s):  # 2.50 -> 2.5, 3.0 -> 3
        s = s.rstrip("0").rstrip(".")
    return s


_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def extract_gsm8k_answer(text: str) -> str | None:
    """The number after "The answer is" (the 8-shot chain-of-thought format), else the last number."""
    m = re.search(r"answer is\s*\$?\s*(-?[\d,]*\.?\d+)", text, re.I)
    if m:
        return m.group(1)
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def gsm8k_gold(answer_field: str) -> str:
    """GSM8k's reference answer is the text after '#### '."""
    return answer_field.split("####")[-1].strip()


def normalize_number(answer: str | None) -> str | None:
    if answer is None:
        return None
    s = answer.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(s)
    except ValueError:
        return s
    return str(int(value)) if value == int(value) else repr(value)
