"""Task kinds: how a kind of task takes its answers, its reference answer and compares them,
under each scoring protocol.

Two protocols score every generation task, side by side in results.json:
    default  our checker: the final-answer phrase (last match) or else the last \\boxed{} (MATH),
             "The answer is N" or else the last number (GSM8k); normalisation that keeps lists as
             lists and removes units whole; math-verify, then SymPy, for equivalence
    llemma   the Llemma paper's scorer (lm-eval's port of Minerva's): the first "Final Answer: The
             final answer is X. I hope it is correct." (MATH) or "The answer is N." (GSM8k), no
             fallback (otherwise the sample is invalid); Minerva's normalize_final_answer; SymPy's
             simplify(a - b) == 0 with a timeout (lm-eval's minerva_math is_equiv)
A kind is duck-typed: problem_reference(doc), gold(reference, protocol), extract(generation,
protocol), equal(pred, gold, protocol, checker), key(answer, protocol) (identical keys are one vote)
and missing_data(data_dir). Every kind by name: llemma_eval.registry.
"""

import functools
import re

from llemma_eval import answers as ans
from llemma_eval import data
from llemma_eval.checker import Checker
from llemma_eval.upstream import minerva, upstream_yaml

PROTOCOLS = ("default", "llemma")


@functools.lru_cache(maxsize=None)
def gsm8k_strict() -> tuple[re.Pattern[str], list[re.Pattern[str]]]:
    """lm-eval's gsm8k-cot "strict-match": its answer regex and the strings its exact match ignores."""
    cot = upstream_yaml("gsm8k/gsm8k-cot.yaml")
    strict = next(f for f in cot["filter_list"] if f["name"] == "strict-match")
    pattern = next(step["regex_pattern"] for step in strict["filter"] if step["function"] == "regex")
    ignore = next(m for m in cot["metric_list"] if m["metric"] == "exact_match").get("regexes_to_ignore", [])
    return re.compile(pattern), [re.compile(r) for r in ignore]


class MathKind:
    name = "math"

    def problem_reference(self, doc: dict) -> tuple[str, str]:
        return doc["problem"], doc["solution"]

    def gold(self, reference: str, protocol: str) -> str | None:
        if protocol == "llemma":
            m = minerva()
            boxed = m.last_boxed_only_string(reference)
            return None if boxed is None else m.normalize_final_answer(m.remove_boxed(boxed))
        return ans.extract_math_answer(reference)

    def extract(self, generation: str, protocol: str) -> str | None:
        if protocol == "llemma":
            m = minerva()
            raw = m.get_unnormalized_answer(generation)
            return None if raw == "[invalidanswer]" else m.normalize_final_answer(raw)
        return ans.extract_math_answer(generation)

    def equal(self, pred: str, gold: str, protocol: str, checker: Checker) -> bool:
        return checker.llemma_equal(pred, gold) if protocol == "llemma" else checker.equal(pred, gold)

    def key(self, answer: str, protocol: str) -> str | None:
        return answer if protocol == "llemma" else ans.normalize_math(answer)

    def missing_data(self, data_dir: str) -> str | None:
        return data.missing_data("math", data_dir)


class Gsm8kKind:
    name = "gsm8k"

    def problem_reference(self, doc: dict) -> tuple[str, str]:
        return doc["question"], doc["answer"]

    def gold(self, reference: str, protocol: str) -> str | None:
        return ans.gsm8k_gold(reference)

    def extract(self, generation: str, protocol: str) -> str | None:
        if protocol == "llemma":
            pattern, _ = gsm8k_strict()
            m = pattern.search(generation)
            return m.group(1) if m else None
        return ans.extract_gsm8k_answer(generation)

    def equal(self, pred: str, gold: str, protocol: str, checker: Checker | None) -> bool:
        return self.key(pred, protocol) == self.key(gold, protocol)

    def key(self, answer: str, protocol: str) -> str | None:
        if protocol == "llemma":  # lm-eval's exact match: strip what it ignores, then compare strings
            for r in gsm8k_strict()[1]:
                answer = r.sub("", answer)
            return answer.strip()
        return ans.normalize_number(answer)

    def missing_data(self, data_dir: str) -> str | None:
        return data.missing_data("gsm8k", data_dir)
