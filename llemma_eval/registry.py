"""Every task kind by name: the base kinds (llemma_eval.kinds) and those of the task-family modules
(STEM, tool use), which build on them."""

import functools

from llemma_eval import stem, tool_use
from llemma_eval.kinds import Gsm8kKind, MathKind


@functools.lru_cache(maxsize=None)
def kinds() -> dict:
    """Every kind by name."""
    return {k.name: k for k in (MathKind(), Gsm8kKind(), stem.OCW, stem.MC, tool_use.GSM8K_PYTHON,
                                tool_use.MATH_PYTHON)}


def kind(name: str) -> MathKind | Gsm8kKind | stem.OcwKind | stem.McKind:
    if name not in kinds():
        raise ValueError(f"unknown task kind {name!r}; known: {sorted(kinds())}")
    return kinds()[name]
