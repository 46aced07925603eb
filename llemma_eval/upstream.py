"""What the evaluation reads from the installed lm-eval rather than copying: its task YAMLs and
Minerva's MATH utilities (answer extraction, normalisation, prompt format; lm-eval[math])."""

import functools
import os
from types import ModuleType


@functools.lru_cache(maxsize=None)
def upstream_yaml(relpath: str) -> dict:
    """One of lm-eval's task YAMLs, as a dict (its !function tags left unresolved)."""
    import lm_eval.tasks  # the eval extra: imported when a task needs it
    from lm_eval.tasks._yaml_loader import load_yaml

    path = os.path.join(os.path.dirname(lm_eval.tasks.__file__), relpath)
    return load_yaml(path, resolve_func=False)


@functools.lru_cache(maxsize=None)
def minerva() -> ModuleType:
    """lm-eval's minerva_math utils module."""
    from lm_eval.tasks.minerva_math import utils  # lm-eval[math]

    return utils
